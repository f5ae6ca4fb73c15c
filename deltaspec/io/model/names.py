"""Names: which modules are embeddings, model order of layers, short lists for messages."""
from __future__ import annotations

import re

from ...layernames import layer_index, summarize  # noqa: F401 (summarize re-exported)

_EMBED_PARTS = {"wte", "wpe", "lm_head", "embed_out", "shared", "relative_attention_bias"}  # T5: shared, rel. bias
_EMBED_END = re.compile(r"(embed_tokens|embed_positions|embed_in|embed_out|embeddings?|embed|wte|wpe|lm_head)$")


def is_embedding(name: str) -> bool:
    """Embedding-like module, decided by name only, from its last component: one that contains `embed`
    (embed_tokens, word_embeddings, …; not a Linear `…_embedder` as Flux's x_embedder) or is `wte`,
    `wpe`, `lm_head`, `embed_out`, or T5's `shared` / `relative_attention_bias`. The Linear layers inside an embedding block (diffusers'
    `time_embedding.linear_1`) are weights like any other. kohya names (dots turned into underscores)
    count when they end in such a word (`…_embeddings_token_embedding`)."""
    if "." not in name and "_" in name:
        return bool(_EMBED_END.search(name))
    last = name.rsplit(".", 1)[-1]
    return ("embed" in last.lower() and not last.lower().endswith("embedder")) or last in _EMBED_PARTS


_KNOWN_ORDER = {m: i for i, m in enumerate(
    ["q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "query", "key", "value", "dense",
     "gate_proj", "up_proj", "gate_up_proj", "down_proj", "fc1", "fc2", "w1", "w3", "w2"])}


def _natural(s: str) -> tuple:
    return tuple(int(t) if i % 2 else t for i, t in enumerate(re.split(r"(\d+)", s)))


def order_key(name: str) -> tuple:
    """Sort key for model order: input embeddings, then per layer index (attention projections
    before MLP for known module names, else natural order), then the rest (lm_head, …)."""
    idx = layer_index(name)
    if idx is None:
        group = 0 if is_embedding(name) and "lm_head" not in name and "embed_out" not in name else 2
        return (group, (), 0, 0, _natural(name))
    m = re.search(r"\.(\d+)(?:\.|$)", name) or re.search(r"_(\d+)(?:_|$)", name)  # dotted, or kohya's
    prefix = name[:m.start()]
    return (1, _natural(prefix), idx, _KNOWN_ORDER.get(name.rsplit(".", 1)[-1], len(_KNOWN_ORDER)),
            _natural(name))


def sorted_layers(layers: list) -> list:
    return sorted(layers, key=lambda u: order_key(u.name))


def resized_vocab(where, name: str, n_base: int, n_ft: int, added_rows) -> tuple[dict, str]:
    """(layer meta, warning) for an embedding/lm_head whose row count changed from the base's
    (added tokens): ΔW covers the shared rows; the added rows' count and norms go into the meta.
    `added_rows()` returns the added rows (float, checked finite) when there are any."""
    meta = {"vocab_rows": f"{n_base}->{n_ft}"}
    if n_ft <= n_base:
        meta["removed_rows"] = n_base - n_ft
        return meta, (f"{where}: '{name}' has {n_base - n_ft} row(s) fewer than the base (vocabulary {n_base} → "
                      f"{n_ft}): ΔW covers the {n_ft} shared rows")
    norms = added_rows().double().norm(dim=1)
    meta.update(added_rows=n_ft - n_base, added_row_norm_mean=float(norms.mean()), added_row_norm_max=float(norms.max()))
    return meta, (f"{where}: '{name}' has {n_ft - n_base} added row(s) (vocabulary {n_base} → {n_ft}; row norms "
                  f"mean {norms.mean():.4g}, max {norms.max():.4g}): ΔW covers the {n_base} shared rows, the added "
                  "ones are in the layer's meta (added_rows, added_row_norm_mean/max)")


class Skipped:
    """Tensors a reader does not analyse, grouped by reason, so every skip reaches `Updates.warnings`."""

    def __init__(self) -> None:
        self.by_reason: dict[str, list[str]] = {}

    def add(self, reason: str, name: str) -> None:
        self.by_reason.setdefault(reason, []).append(name)

    def __bool__(self) -> bool:
        return bool(self.by_reason)

    def messages(self, where) -> list[str]:
        return [f"{where}: {len(names)} tensor(s) not analysed, {reason}: {summarize(names, None, every_index=True)}"
                for reason, names in self.by_reason.items()]


_WRAPPERS = ("module.", "_orig_mod.")


def strip_wrappers(key: str) -> str:
    """A state-dict key without the prefixes that wrappers add: `module.` (DistributedDataParallel, leading)
    and `_orig_mod.` (torch.compile, at any depth: a compiled submodule)."""
    while key.startswith(_WRAPPERS):
        key = key.partition(".")[2]
    return key.replace("._orig_mod.", ".")
