"""Rank suggestions: the rank policies of `ranks.py` applied to every layer of an analysis.

    s = result.suggest_ranks()                   # energy=0.9 chosen; every policy side by side
    print(s.format_table())                      # per layer, then "rank needed" per module type
    s.peft_config()                              # {"r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern"}
    print(s.lora_config_snippet())               # LoraConfig(...) to paste

For full fine-tuning this answers "what rank would a LoRA need to capture x % of this layer's update"
(`rank_needed`, per module type in `module_table`). Pure: works on an AnalysisResult's singular values.
"""
from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from . import __version__
from . import ranks as R
from .formatting import short_names, wrap
from .errors import DeltaspecError
from .io.write.peft import exact_key, lora_config_fields  # noqa: F401  (re-exported)

DEFAULT_LEVELS = (0.5, 0.8, 0.9, 0.99)
SHORT = {"energy": "e", "fro_error": "fro", "sv_ratio": "ratio", "rank": "r", "knee": "knee",
         "effective_rank": "erank"}


def default_policies(energy=None, fro_error=None, sv_ratio=None) -> list[R.Policy]:
    """energy, fro_error, sv_ratio (with their defaults), knee, effective_rank."""
    return [R.policy("energy", energy), R.policy("fro_error", fro_error), R.policy("sv_ratio", sv_ratio),
            R.policy("knee"), R.policy("effective_rank")]


def _short_label(p: R.Policy) -> str:
    s = SHORT.get(p.name, p.name)
    return s if p.value is None else f"{s}{(int(p.value) if p.name == 'rank' else p.value):g}"


def source_scales(updates) -> dict:
    """{layer name: (α, scale)} from a loaded checkpoint's reader facts (None where it has none)."""
    return {u.name: (u.meta.get("alpha"), u.meta.get("scale")) for u in updates}


@dataclass
class LayerRanks:
    """One layer: its current rank bound, the rank each policy picks, and the chosen truncation."""

    name: str
    module: str
    layer: Optional[int]
    shape: tuple
    kind: str
    rank: int
    ranks: dict  # policy label -> k
    chosen: int
    kept_energy: float
    rel_error: float
    alpha: float  # LoRA α for the chosen rank (see ranks.new_alpha)
    needed: dict  # energy level -> k

    def to_dict(self) -> dict:
        nan = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v
        return {"name": self.name, "module": self.module, "layer": self.layer, "shape": list(self.shape),
                "kind": self.kind, "rank": self.rank, "ranks": dict(self.ranks), "chosen": self.chosen,
                "kept_energy": nan(self.kept_energy), "relative_error": nan(self.rel_error), "alpha": self.alpha,
                "rank_needed": {f"{lv:g}": k for lv, k in self.needed.items()}}


@dataclass
class RankSuggestions:
    """Per-layer ranks by several policies, one chosen for the PEFT rank_pattern/alpha_pattern."""

    layers: list[LayerRanks]
    policies: list[R.Policy]
    chosen: R.Policy
    keep_scale: str
    max_rank: Optional[int]
    levels: tuple
    source: dict = field(default_factory=dict)
    exact_targets: bool = False  # target_modules = the exact layer names (the analysis covers part of the model)

    @property
    def model_names(self) -> bool:
        """Whether the layer names are a model's module names (not kohya's `lora_unet_…` or diffusers'
        `unet.…`, which no PEFT config on a model matches)."""
        return self.source.get("format") not in ("kohya", "lycoris", "diffusers")

    def ranks(self) -> dict:
        """{layer name: chosen rank} (zero updates, rank 0, left out: a LoRA layer needs r ≥ 1)."""
        return {x.name: x.chosen for x in self.layers if x.chosen > 0}

    def peft_config(self, target_modules: Optional[Sequence[str]] = None) -> dict:
        """LoraConfig fields; target_modules default: the module types (q_proj, …) of these layers."""
        rk = self.ranks()
        if target_modules is None and self.exact_targets:  # a module type would also adapt unselected layers
            target_modules = [x.name for x in self.layers if x.name in rk]
        mods = target_modules or list(dict.fromkeys(x.module for x in self.layers if x.name in rk))
        return lora_config_fields(rk, {x.name: x.alpha for x in self.layers}, mods)

    def lora_config_snippet(self) -> str:
        """Python source of a `LoraConfig(...)` with these ranks (lines ≤ 80 columns but for long keys)."""
        c = self.peft_config()
        dump = lambda d: json.dumps(d, indent=4).replace("\n", "\n    ") if d else "{}"
        mods = textwrap.fill(", ".join(json.dumps(m) for m in c["target_modules"]), 72,
                             initial_indent=" " * 8, subsequent_indent=" " * 8, break_on_hyphens=False)
        return (f"from peft import LoraConfig\n\nconfig = LoraConfig(\n    r={c['r']},\n"
                f"    lora_alpha={c['lora_alpha']!r},\n    target_modules=[\n{mods}\n    ],\n"
                f"    rank_pattern={dump(c['rank_pattern'])},\n    alpha_pattern={dump(c['alpha_pattern'])},\n)")

    def module_table(self) -> list[dict]:
        """Per module type: layers, min(d_out, d_in), and per energy level the median and max rank needed."""
        out = []
        for m in dict.fromkeys(x.module for x in self.layers):
            rows = [x for x in self.layers if x.module == m]
            cell = {lv: (float(np.median([x.needed[lv] for x in rows])), max(x.needed[lv] for x in rows))
                    for lv in self.levels}
            out.append({"module": m, "layers": len(rows), "dim": min(rows[0].shape), "needed": cell})
        return out

    def to_dict(self) -> dict:
        return {"deltaspec_version": __version__, "source": dict(self.source),
                "policies": [p.label for p in self.policies], "chosen": self.chosen.label,
                "keep_scale": self.keep_scale, "max_rank": self.max_rank, "levels": list(self.levels),
                "layers": [x.to_dict() for x in self.layers],
                "rank_needed": [{"module": r["module"], "layers": r["layers"], "dim": r["dim"],
                                 "median": {f"{lv:g}": r["needed"][lv][0] for lv in self.levels},
                                 "max": {f"{lv:g}": r["needed"][lv][1] for lv in self.levels}}
                                for r in self.module_table()],
                "peft": self.peft_config() if self.ranks() and self.model_names else None,
                "lora_config": self.lora_config_snippet() if self.ranks() and self.model_names else None}

    def to_json(self, indent: Optional[int] = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    # ---- terminal text (≤ 80 columns) ---------------------------------------------------------
    def layer_grid(self) -> tuple[list[str], list[list[str]]]:
        """(head, body) of the per-layer table; the chosen policy's column is marked with '*'."""
        head = ["layer", "r"] + [("*" if p == self.chosen else "") + _short_label(p) for p in self.policies]
        head += ["kept", "err"]
        short = short_names([x.name for x in self.layers])
        names = [short[x.name] for x in self.layers]
        body = [[n, str(x.rank)] + [str(x.ranks[p.label]) for p in self.policies] + [_pct(x.kept_energy),
                                                                                     _pct(x.rel_error)]
                for n, x in zip(names, self.layers)]
        return head, body

    def module_grid(self) -> tuple[list[str], list[list[str]]]:
        head = ["module", "layers", "dim"] + [f"{100 * lv:g}%" for lv in self.levels]
        body = [[r["module"], str(r["layers"]), str(r["dim"])]
                + [f"{r['needed'][lv][0]:g} ({r['needed'][lv][1]})" for lv in self.levels]
                for r in self.module_table()]
        return head, body

    def format_table(self, pattern: bool = True, width: Optional[int] = None) -> str:
        """The terminal report; `width` limits the tables (None: as wide as their content)."""
        from .formatting import text_grid

        s = self.source
        scale = "keep α/r per layer" if self.keep_scale == "ratio" else "keep α"
        cap = f", at most {self.max_rank}" if self.max_rank is not None else ""
        lines = wrap(f"{s.get('path')} [{s.get('format')}]: {len(self.layers)} layers", width)
        lines += wrap(f"rank per layer by policy (* = chosen: {self.chosen.label}{cap}); kept = energy kept, "
                      "err = relative Frobenius error of the chosen truncation, r = current rank", width) + [""]
        lines += text_grid(*self.layer_grid(), width)
        lines += [""] + wrap("rank needed to capture x % of ΔW's energy, per module type: median (max)", width) + [""]
        lines += text_grid(*self.module_grid(), width)
        if pattern and self.ranks() and self.model_names:
            lines += [""] + wrap(f"PEFT config for {self.chosen.label} ({scale}; keys match one module exactly):",
                                 width) + ["", self.lora_config_snippet()]
        elif pattern and self.ranks():
            lines += ["", "\n".join(wrap(f"no PEFT config: {s.get('format')} layer names are not the module names of a "
                                    "model, so no LoraConfig could target them", width))]
        return "\n".join(lines)


def _pct(v: float) -> str:
    from .formatting import fmt_pct

    return fmt_pct(v)


def rank_needed(sigma, levels: Sequence[float] = DEFAULT_LEVELS) -> dict:
    """{level: smallest k with energy share ≥ level} for one spectrum."""
    return {lv: R.energy_rank(sigma, lv) for lv in levels}


def suggest_ranks(result, policy: str | R.Policy = "energy", value: Optional[float] = None, *,
                  policies: Optional[Sequence[R.Policy]] = None, max_rank: Optional[int] = None,
                  keep_scale: str = "ratio", scales: Optional[dict] = None,
                  levels: Sequence[float] = DEFAULT_LEVELS, exact_targets: bool = False) -> RankSuggestions:
    """Ranks of every layer of `result` (an AnalysisResult) by several policies; `policy` is chosen.

    policy/value: the chosen policy (`energy`, `fro_error`, `sv_ratio`, `knee`, `effective_rank`,
    `rank`) and its parameter (default per ranks.DEFAULTS). policies: the ones shown side by side
    (default: energy, fro_error, sv_ratio, knee, effective_rank, the chosen one with its value).
    max_rank caps the chosen rank. keep_scale "ratio" keeps each layer's α/r, "alpha" keeps α
    (ranks.new_alpha); scales: {layer: (α, scale)} of the source (`source_scales(updates)`).
    exact_targets: the LoraConfig targets the exact layer names, not module types: pass it when the
    analysis covers only some layers of a type (--modules/--layers), or PEFT adapts the others too.
    """
    chosen = policy if isinstance(policy, R.Policy) else R.policy(policy, value)
    if max_rank is not None and max_rank < 1:
        raise DeltaspecError(f"max_rank must be ≥ 1, got {max_rank}")
    if keep_scale not in ("ratio", "alpha"):
        raise DeltaspecError(f"keep_scale must be 'ratio' or 'alpha', got {keep_scale!r}")
    if policies is None:
        policies = [chosen if p.name == chosen.name else p for p in default_policies()]
    policies = list(policies) + ([chosen] if chosen not in policies else [])
    if any(r.upper is not None for r in result.layers):
        raise DeltaspecError("rank suggestions need every singular value; this analysis is truncated (--top-k): "
                             "run it without --top-k")
    chosen_k = {r.name: chosen.rank(r.singular_values, max_rank, size=min(r.shape)) for r in result.layers}
    alphas = R.layer_alphas(chosen_k, keep_scale, scales)
    out = []
    for r in result.layers:
        s, k = r.singular_values, chosen_k[r.name]
        ks = {p.label: p.rank(s, size=min(r.shape)) for p in policies}
        ks[chosen.label] = k  # the chosen column shows what is used (capped by max_rank)
        out.append(LayerRanks(r.name, r.module, r.layer, tuple(r.shape), r.kind, r.rank, ks, k, R.kept_energy(s, k),
                              R.relative_error(s, k), alphas[r.name], rank_needed(s, levels)))
    return RankSuggestions(out, policies, chosen, keep_scale, max_rank, tuple(levels), dict(result.source),
                           exact_targets)
