"""compare.py: common layers, one n_ref per layer, per-module means and differences, table/JSON/CSV.

`synth` (also used by the plot and CLI tests) builds tiny LoRA / MultiLoRA / full-FT updates in memory.
"""
import json
import math

import numpy as np
import pytest
import torch

import deltaspec as ds
from deltaspec import metrics as M
from deltaspec.compare import align, compare, default_label
from deltaspec.errors import DeltaspecError, ShapeMismatchError
from deltaspec.updates import Dense, LayerUpdate, LowRank, SumOfLowRank, Updates

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


def synth(kind, n_layers=2, modules=MODULES, d=32, seed=0, extra=()):
    """Updates of a tiny model: kind "lora" (rank 8, decaying), "multilora" (4 heads × 2), "full" (dense)."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for name in [f"model.layers.{i}.self_attn.{m}" for i in range(n_layers) for m in modules] + list(extra):
        if kind == "full":
            u = Dense(torch.randn(d, d, generator=g) / d + torch.randn(d, 1, generator=g) @ torch.randn(1, d, generator=g) / 4)
        elif kind == "lora":
            u = LowRank(torch.randn(d, 8, generator=g) * torch.logspace(0, -2, 8), torch.randn(8, d, generator=g), 0.5)
        else:
            u = SumOfLowRank([(0.5, torch.randn(d, 2, generator=g), torch.randn(2, d, generator=g)) for _ in range(4)])
        layers.append(LayerUpdate(name, u.shape, "dense" if kind == "full" else "lowrank", u.rank_bound, lambda u=u: u))
    return Updates(layers, f"ckpts/{kind}", {"full": "full", "lora": "peft", "multilora": "multilora"}[kind])


def run(kind, **kw):
    extra = kw.pop("extra", ())
    return ds.analyze(synth(kind, extra=extra), device="cpu", progress=False, **kw)


@pytest.fixture(scope="module")
def three():
    return [run("lora"), run("multilora"), run("full", extra=("model.layers.0.mlp.up_proj",))]


def test_common_layers_only_and_dropped_ones_reported(three):
    a = align(three, ["LoRA", "MultiLoRA", "FT"])
    assert len(a.names) == 8 and "model.layers.0.mlp.up_proj" not in a.names
    assert a.dropped == {"FT": ["model.layers.0.mlp.up_proj"]}
    assert "FT: 1 layer not in every input left out (up_proj)" in a.notes
    assert [r.name for r in a.results[2].layers] == [r.name for r in a.results[0].layers]


def test_means_and_differences(three):
    c = compare(three, ["LoRA", "MultiLoRA", "FT"])
    assert list(c.values) == list(MODULES) and c.n_layers["k_proj"] == 2
    ft_k = [r.metrics["top1_energy"] for r in three[2].layers if r.module == "k_proj"]
    lora_k = [r.metrics["top1_energy"] for r in three[0].layers if r.module == "k_proj"]
    assert c.values["k_proj"]["top1_energy"]["FT"] == pytest.approx(np.mean(ft_k))
    assert c.differences("k_proj", "top1_energy")["FT"] == pytest.approx(np.mean(ft_k) - np.mean(lora_k))
    assert c.values["k_proj"]["numerical_rank"] == {"LoRA": 8, "MultiLoRA": 8, "FT": 32}


def test_per_layer_mode(three):
    c = compare(three, ["LoRA", "MultiLoRA", "FT"], per_layer=True, metrics=["effective_rank"])
    assert len(c.values) == 8 and set(c.n_layers.values()) == {1}
    name = "model.layers.1.self_attn.v_proj"
    assert c.values[name]["effective_rank"]["MultiLoRA"] == pytest.approx(three[1][name].metrics["effective_rank"])


def test_normalized_entropy_recomputed_with_a_common_n_ref():
    lora_rank = run("lora", n_ref="rank")  # n_ref = 8
    ft = run("full")  # n_ref = 32
    c = compare([lora_rank, ft], ["LoRA", "FT"], per_layer=True, metrics=["normalized_entropy"])
    name = "model.layers.0.self_attn.q_proj"
    want = M.normalized_entropy(lora_rank[name].singular_values, 32)
    assert c.values[name]["normalized_entropy"]["LoRA"] == pytest.approx(want)
    assert lora_rank[name].n_ref == 8, "inputs must not be mutated"
    assert "recomputed" in c.format_table() and "one n_ref per layer" in c.format_table()
    with pytest.raises(DeltaspecError, match="different n_ref"):
        compare([lora_rank, ft], ["LoRA", "FT"], on_n_ref_mismatch="error")


def test_outputs(three, tmp_path):
    c = compare(three, ["LoRA", "MultiLoRA", "FT"])
    d = json.loads(c.to_json())
    assert d["labels"] == ["LoRA", "MultiLoRA", "FT"] and d["reference"] == "LoRA" and d["group_by"] == "module"
    assert d["groups"]["v_proj"]["differences"]["top1_energy"]["FT"] == pytest.approx(
        c.differences("v_proj", "top1_energy")["FT"])
    assert any("same 8 layers in every column" in n for n in d["notes"]) and d["dropped"]
    csv = c.to_csv().splitlines()
    assert csv[0].startswith("module,n_layers,metric,LoRA,MultiLoRA,FT,MultiLoRA-LoRA,FT-LoRA")
    assert len(csv) == 1 + 4 * len(c.metrics)
    text = c.format_table(["top1_energy", "effective_rank"])
    assert "k_proj (2 layers)" in text and "Δ FT" in text and "Δ = method − LoRA" in text
    assert len(c.rows()) == 4 * len(c.metrics)


def test_saved_analyses_compare_like_fresh_ones(three, tmp_path):
    paths = []
    for i, r in enumerate(three):
        p = tmp_path / f"r{i}.json"
        p.write_text(r.to_json())
        paths.append(p)
    back = [ds.AnalysisResult.from_json(p) for p in paths]
    a, b = compare(three, ["a", "b", "c"]), compare(back, ["a", "b", "c"])
    for m in ("effective_rank", "normalized_entropy", "numerical_rank"):
        assert b.values["o_proj"][m]["c"] == pytest.approx(a.values["o_proj"][m]["c"])


def test_refusals(three):
    with pytest.raises(DeltaspecError, match="labels"):
        compare(three, ["a", "b"])
    with pytest.raises(DeltaspecError, match="distinct"):
        compare(three, ["a", "a", "b"])
    with pytest.raises(DeltaspecError, match="not shared"):
        compare(three, ["a", "b", "c"], metrics=["no_such_metric"])
    other = ds.analyze(synth("lora", d=16), device="cpu", progress=False)
    with pytest.raises(ShapeMismatchError, match="different shapes"):
        compare([three[0], other], ["a", "b"])
    assert math.isfinite(compare([three[0]], ["only"]).values["q_proj"]["top1_energy"]["only"])


def test_default_label():
    assert default_label("sample_checkpoints/lora/") == "lora"
    assert default_label("out/spectra.json") == "spectra"
