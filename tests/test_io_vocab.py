"""Added tokens and new heads: a resized vocabulary never blocks the other layers, its shared rows are
analysed (with --include-embeddings) and the added rows reported; a head the base does not have is
skipped with a warning. Real transformers `resize_token_embeddings` and PEFT merges as ground truth."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
pytest.importorskip("peft")
pytest.importorskip("transformers")

from peft import LoraConfig, get_peft_model  # noqa: E402

from deltaspec.io import load  # noqa: E402
from io_fixtures import close, llama_config, randomize_adapter, snapshot, tiny_model  # noqa: E402

V0, V1 = 100, 108  # vocabulary before and after adding tokens


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("base") / "llama"
    m = tiny_model("llama", 0)
    m.save_pretrained(d)
    return d, {k: v.detach().clone() for k, v in m.state_dict().items()}


def resized(seed=0):
    m = tiny_model("llama", seed)
    m.resize_token_embeddings(V1, mean_resizing=False)
    return m


def added_norms(w: torch.Tensor):
    n = w[V0:].double().norm(dim=1)
    return float(n.mean()), float(n.max())


def test_full_finetune_with_added_tokens(base, tmp_path):
    base_dir, b = base
    m = resized()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    m.save_pretrained(tmp_path / "ft")
    ft = m.state_dict()
    u = load(tmp_path / "ft", base=base_dir)  # no --include-embeddings: the other layers, no error
    assert len(u) == 14 and not any(x.name in ("lm_head", "model.embed_tokens") for x in u)
    assert any(f"vocabulary {V0} → {V1}" in w and "include_embeddings=True" in w for w in u.notes)
    assert len(load(tmp_path / "ft", base=base_dir).select(["q_proj"])) == 2
    u = {x.name: x for x in load(tmp_path / "ft", base=base_dir, include_embeddings=True)}
    for name in ("model.embed_tokens", "lm_head"):
        x, key = u[name], name + ".weight"
        assert x.shape == (V0, 32) and x.meta["added_rows"] == V1 - V0
        mean, mx = added_norms(ft[key])
        assert x.meta["added_row_norm_mean"] == pytest.approx(mean, rel=1e-6)
        assert x.meta["added_row_norm_max"] == pytest.approx(mx, rel=1e-6)
        close(x.load().materialize(), ft[key][:V0].double() - b[key].double())


@pytest.mark.parametrize("dora", [False, True])
def test_peft_adapter_on_resized_model(base, tmp_path, dora):
    """save_embedding_layers=True (what PEFT does when the vocabulary was resized) and DoRA with --base."""
    base_dir, b = base
    m = resized()
    pm = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=dora))
    randomize_adapter(pm, 2)
    pm.save_pretrained(tmp_path / "a", save_embedding_layers=True)
    merged = pm.merge_and_unload().state_dict()
    before = snapshot(tmp_path)
    u = load(tmp_path / "a", base=base_dir)
    assert len(u) == 4 and {x.meta["variant"] for x in u} == {"dora" if dora else "lora"}
    for x in u:
        close(x.load().materialize(), merged[x.name + ".weight"].double() - b[x.name + ".weight"].double())
    u = {x.name: x for x in load(tmp_path / "a", base=base_dir, include_embeddings=True)}
    for name in ("model.embed_tokens", "lm_head"):
        x, key = u[name], name + ".weight"
        assert x.shape == (V0, 32) and x.meta["added_rows"] == V1 - V0
        assert x.meta["added_row_norm_max"] == pytest.approx(added_norms(merged[key])[1], rel=1e-6)
        close(x.load().materialize(), merged[key][:V0].double() - b[key].double())
    assert snapshot(tmp_path) == before


def test_new_classification_head_is_skipped(base, tmp_path):
    """A DoRA sequence-classification adapter (modules_to_save = the new `score` head) on a causal-LM
    base: score is named in a warning, the rest is analysed exactly."""
    from transformers import LlamaForSequenceClassification

    base_dir, b = base
    torch.manual_seed(0)
    cfg = llama_config()
    cfg.num_labels = 3
    m = LlamaForSequenceClassification(cfg)
    m.load_state_dict({k: v for k, v in b.items() if k.startswith("model.")}, strict=False)
    pm = get_peft_model(m, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj"],
                                      use_dora=True))
    randomize_adapter(pm, 3)
    pm.save_pretrained(tmp_path / "a")
    merged = pm.merge_and_unload().state_dict()
    u = load(tmp_path / "a", base=base_dir)
    assert [x.name for x in u] == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    assert any("score" in w and "new head" in w for w in u.warnings)
    for x in u:
        close(x.load().materialize(), merged[x.name + ".weight"].double() - b[x.name + ".weight"].double())
    # the same as a full fine-tune: score is not in the base, skipped with a warning
    m.save_pretrained(tmp_path / "ft")
    v = load(tmp_path / "ft", base=base_dir)
    assert len(v) == 14 and any("not in the base" in w and "score.weight" in w for w in v.warnings)
    # a classifier whose number of labels changed: a replaced head, skipped and named
    cfg.num_labels = 5
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path / "ft5")
    v = load(tmp_path / "ft5", base=tmp_path / "ft")
    assert len(v) == 14 and any("shape differs" in w and "score.weight [5, 32] vs [3, 32]" in w for w in v.warnings)


def _rows_delta(merged, b, key, rows):
    """The nonzero block of merged − base: PEFT's index_copy changes only `rows`."""
    full = merged[key].double()[: b[key].shape[0]] - b[key].double()
    assert torch.count_nonzero(full.abs().sum(dim=1)) == len(rows)  # nothing else moved
    return full[rows]


@pytest.mark.parametrize("indices", [[3, 5, 7], {"embed_tokens": [1, 2], "lm_head": [5, 6, 7]}])
def test_trainable_tokens_match_peft_merge(base, tmp_path, indices):
    """LoRA with trainable_token_indices (list: the input embedding; dict: per module): the changed rows'
    ΔW against PEFT's merge, skipped with a warning without base= or without include_embeddings."""
    base_dir, b = base
    pm = get_peft_model(tiny_model("llama", 0), LoraConfig(r=4, target_modules=["q_proj"],
                                                           trainable_token_indices=indices))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "trainable_tokens_delta" in n:
                p.add_(0.1 * torch.randn_like(p))
    randomize_adapter(pm, 4)
    pm.save_pretrained(tmp_path / "a")
    merged = pm.merge_and_unload().state_dict()
    rows = {"model.embed_tokens": indices} if isinstance(indices, list) else \
        {"model.embed_tokens": indices["embed_tokens"], "lm_head": indices["lm_head"]}
    u = load(tmp_path / "a", base=base_dir, include_embeddings=True)
    got = {x.name: x for x in u}
    assert set(got) == set(rows) | {"model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"}
    for name, idx in rows.items():
        x = got[name]
        assert x.shape == (len(idx), 32) and x.meta["variant"] == "trainable_tokens"
        close(x.load().materialize(), _rows_delta(merged, b, name + ".weight", idx))
    no_base = load(tmp_path / "a", include_embeddings=True)
    assert len(no_base) == 2 and all(any(f"'{n}' holds trainable tokens" in w and "base=PATH" in w
                                         for w in no_base.warnings) for n in rows)
    no_emb = load(tmp_path / "a", base=base_dir)
    assert len(no_emb) == 2 and any("include_embeddings=True" in w for w in no_emb.notes)


def test_trainable_tokens_adapter_with_added_tokens(base, tmp_path):
    """peft_type TRAINABLE_TOKENS on a resized model: rows past the base's vocabulary are added tokens
    (counted, norms in meta), the existing rows are analysed against the merge."""
    from peft import TrainableTokensConfig

    base_dir, b = base
    idx = [4, 101, 9, 105]
    pm = get_peft_model(resized(), TrainableTokensConfig(target_modules=["embed_tokens"], token_indices=idx))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "trainable_tokens_delta" in n:
                p.add_(0.1 * torch.randn_like(p))
    pm.save_pretrained(tmp_path / "a")
    merged = pm.merge_and_unload().state_dict()
    before = snapshot(tmp_path)
    u = load(tmp_path / "a", base=base_dir, include_embeddings=True)
    assert [x.name for x in u] == ["model.embed_tokens"]
    x = u[0]
    key = "model.embed_tokens.weight"
    assert x.shape == (2, 32) and x.meta["added_rows"] == 2
    added = merged[key][[101, 105]].double().norm(dim=1)
    assert x.meta["added_row_norm_max"] == pytest.approx(float(added.max()), rel=1e-6)
    assert any("2 token(s) past the base's 100 rows" in w for w in u.warnings)
    close(x.load().materialize(), merged[key][[4, 9]].double() - b[key][[4, 9]].double())
    assert snapshot(tmp_path) == before
