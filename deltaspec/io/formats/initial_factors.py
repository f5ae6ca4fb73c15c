"""`initial=` for plain LoRA and MultiLoRA: pair each trained layer with its initial factors.

ΔW stays the trained update (the base was not modified); every layer gets `LayerUpdate.initial`, the
loader of the same layer in the adapter saved before training (`deltaspec train` writes it as
`RUN/checkpoint-0/`), from which `analyze` reports the init share, the learned part ΔW − ΔW_0 and
the factor movement (deltaspec/init_split.py). PiSSA/OLoRA-style adapters, whose base WAS modified,
are io/initial.py's case instead.

The two adapters must come from one run: the same layers, shapes and ranks (checked from the headers
here, factor by factor when loaded), and, where both folders have a deltaspec `train_info.json`, the
same seed, method and base checksum, with the initial one at step 0.
"""
from __future__ import annotations

import json
from pathlib import Path

from ...errors import FormatError
from ...updates import LayerUpdate, Updates
from .initial import matched_layers

_SAME_RUN = (("method", "method"), ("seed", "seed"), ("base_sha256", "base checksum (base_sha256)"),
             ("rank", "rank"), ("heads", "heads"), ("lora_alpha", "lora_alpha"))


def train_info(d) -> dict | None:
    p = Path(d) / "train_info.json"
    try:
        return json.loads(p.read_text()) if p.is_file() else None
    except (OSError, ValueError):
        return None


def check_same_run(trained_dir, initial_dir, initial_label) -> None:
    """FormatError when the two folders' train_info.json say they are not one run, or the initial one is
    not step 0."""
    a, b = train_info(trained_dir), train_info(initial_dir)
    if b is not None and b.get("step") not in (0, None):
        raise FormatError(f"{initial_label}: is step {b['step']} of its run; initial= takes the adapter saved "
                          "before training (step 0: RUN/checkpoint-0/)")
    if a is None or b is None:
        return
    for key, what in _SAME_RUN:
        if key in a and key in b and a[key] != b[key]:
            raise FormatError(f"{initial_label}: from another run: its {what} is {b[key]!r}, the trained "
                              f"checkpoint's is {a[key]!r}")


def attach_initial(trained: Updates, initial: Updates, initial_label) -> Updates:
    """`trained` with every layer's `initial` set to the matching layer of `initial`."""
    init = matched_layers(trained, initial, initial_label)
    layers = []
    for u in trained:
        u0 = init[u.name]
        if u.kind != "lowrank" or u0.kind != "lowrank" or u.meta.get("variant") != u0.meta.get("variant") \
                or u.meta.get("fan_in_fan_out") or u0.meta.get("fan_in_fan_out"):
            raise FormatError(f"{initial_label}: '{u.name}': initial= needs plain LoRA or MultiLoRA factors on both "
                              f"sides (found {u.meta.get('variant', u.kind)} / {u0.meta.get('variant', u0.kind)})")
        if tuple(u.shape) != tuple(u0.shape) or u.rank_bound != u0.rank_bound \
                or u.meta.get("heads") != u0.meta.get("heads"):
            raise FormatError(f"{initial_label}: '{u.name}': initial adapter {list(u0.shape)} rank {u0.rank_bound} "
                              f"differs from the trained one {list(u.shape)} rank {u.rank_bound}: another run?")
        layers.append(LayerUpdate(u.name, u.shape, u.kind, u.rank_bound, u.loader, u.source, u.dtype,
                                  {**u.meta, "initial": str(initial_label)}, initial=u0.load))
    return Updates(layers, trained.path, trained.format, trained.base, list(trained.warnings) + list(initial.warnings))

