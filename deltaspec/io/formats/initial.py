"""PiSSA / OLoRA (and other base-modifying inits) adapters saved without conversion, made exact.

PEFT's `init_lora_weights="pissa"` / `"olora"` (also CorDA, LoRA-GA) initialise A0, B0 from W and
replace the base weight by W_res = W − s·B0A0, so the model is unchanged at step 0. An adapter saved
after training without `path_initial_model_for_weight_conversion` is relative to W_res: merged =
W_res + s·BA. Relative to the ORIGINAL base W, the update is therefore

    ΔW = s·(BA − B0A0) = [s·B, −s·B0] @ [A; A0]          (one factored update, rank ≤ 2r)

with B0, A0 from the initial adapter (saved before training). This module pairs the layers of the
trained and the initial adapter by name and builds that product (LowRank; factors of any factored
form, so rsLoRA scales and fan_in_fan_out orientation carry over).
"""
from __future__ import annotations

from ...errors import FormatError
from ...updates import LayerUpdate, LowRank, Updates
from ..model.names import summarize


def matched_layers(trained: Updates, initial: Updates, initial_label) -> dict:
    """{name: initial layer} for every layer of `trained`; FormatError when the two adapters do not have
    the same layers (an initial adapter from another run)."""
    init = {u.name: u for u in initial}
    names = {u.name for u in trained}
    missing, extra = sorted(names - set(init)), sorted(set(init) - names)
    if missing or extra:
        raise FormatError(f"{initial_label}: the initial adapter does not match the trained one ("
                          + (f"missing {summarize(missing, 3)}" if missing else f"extra {summarize(extra, 3)}")
                          + "); pass the adapter saved before training from the same run")
    return init


def with_initial(trained: Updates, initial: Updates, initial_path, cfg: dict) -> Updates:
    """`trained` with every layer replaced by s(BA − B0A0); the base-modifying-init warning is dropped."""
    if cfg.get("loftq_config") or str(cfg.get("init_lora_weights", "")).lower().startswith("loftq"):
        raise FormatError(f"{initial_path}: LoftQ adapters are relative to a quantized base; an initial adapter "
                          "cannot make ΔW exact relative to the full-precision model")
    init = matched_layers(trained, initial, initial_path)
    layers = [_pair(u, init[u.name], initial_path) for u in trained]
    warnings = [w for w in trained.warnings + initial.warnings if "init_lora_weights=" not in w]
    return Updates(layers, trained.path, trained.format, trained.base, warnings, list(trained.notes))


def _pair(u: LayerUpdate, u0: LayerUpdate, initial_path) -> LayerUpdate:
    if u.kind != "lowrank" or u0.kind != "lowrank":
        raise FormatError(f"{initial_path}: '{u.name}': initial= needs plain LoRA factors on both sides "
                          f"(found {u.meta.get('variant', u.kind)} / {u0.meta.get('variant', u0.kind)})")
    if tuple(u.shape) != tuple(u0.shape):
        raise FormatError(f"{initial_path}: '{u.name}': initial adapter shape {list(u0.shape)} differs from the "
                          f"trained one {list(u.shape)}")

    def load() -> LowRank:
        import torch

        L, R = u.load().factors()  # s·B, A
        L0, R0 = u0.load().factors()  # s·B0, A0
        return LowRank(torch.cat([L, -L0], dim=1), torch.cat([R, R0], dim=0))

    meta = {**u.meta, "initial": True}
    return LayerUpdate(u.name, u.shape, "lowrank", min(u.rank_bound + u0.rank_bound, *u.shape), load, u.source, u.dtype,
                       meta)
