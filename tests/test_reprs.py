"""Every public object prints as one informative line (not a dump of arrays) and as an HTML table in
notebooks where it holds a table."""
import html
from pathlib import Path

import numpy as np
import pytest
import torch

import deltaspec as ds
from deltaspec.results import Table
from deltaspec.spectra import spectrum
from deltaspec.subspace import intruder_dimensions, layer_subspace

S = Path(__file__).resolve().parent.parent / "sample_checkpoints"


@pytest.fixture(scope="module")
def objs():
    lora = ds.load(str(S / "lora"))
    full = ds.load(str(S / "full"), base=str(S / "base"))
    multi = ds.load(str(S / "multilora"))
    rl, rf = ds.analyze(lora, vectors=True, device="cpu"), ds.analyze(full, vectors=True, device="cpu")
    cmp = ds.compare([rl, rf], ["LoRA", "FT"])
    import deltaspec.plots as dp

    W0 = torch.randn(128, 128, generator=torch.Generator().manual_seed(0))
    return {
        "Updates": lora, "LayerUpdate": lora[0], "LowRank": lora[0].load(), "SumOfLowRank": multi[0].load(),
        "Dense": full[0].load(), "AnalysisResult": rf, "LayerResult": rl[0], "Comparison": cmp,
        "Aligned": cmp.aligned, "Spectrum": spectrum(lora[0].load(), vectors=True),
        "Intruders": intruder_dimensions(W0, W0 + full[0].load().delta),
        "LayerSubspace": layer_subspace(rl[0].name, ["LoRA", "FT"], [rl[0], rf[0]], W0),
        "HistData": dp.histogram_data({"LoRA": rl, "FT": rf}, "k_proj"),
        # our own Table (what table() returns without pandas), whether or not pandas is installed
        "Table": Table(ds.AnalysisResult(rl.layers[:2], rl.source).rows()),
    }


@pytest.mark.parametrize("name,words", [
    ("Updates", ["peft", "16 layers", "q_proj, k_proj, v_proj, o_proj", "lowrank ×16"]),
    ("LayerUpdate", ["model.layers.0.self_attn.q_proj", "128x128", "lowrank", "rank <= 16"]),
    ("LowRank", ["128x128", "r=16", "scale=2"]),
    ("SumOfLowRank", ["128x128", "4 terms", "rank <= 16"]),
    ("Dense", ["Dense(128x128, float32)"]),
    ("AnalysisResult", ["full", "28 layers", "gate_proj", "dense ×28", "float32 on cpu"]),
    ("LayerResult", ["model.layers.0.self_attn.q_proj", "σ_1 ", "effective_rank"]),
    ("Comparison", ["LoRA, FT", "4 module types", "16 common layers"]),
    ("Aligned", ["16 common layers", "left out: FT 12"]),
    ("Spectrum", ["16 values", "vectors"]),
    ("Intruders", ["of the top 10", "eps=0.5"]),
    ("LayerSubspace", ["model.layers.0.self_attn.q_proj", "LoRA, FT", "amplification"]),
    ("HistData", ["k_proj", "LoRA, FT", "20 bins", "top 16 of 4 layers"]),
])
def test_one_line_reprs(objs, name, words):
    r = repr(objs[name])
    assert "\n" not in r and len(r) < 200, r
    assert "tensor(" not in r and "array(" not in r, r
    for w in words:
        assert w in r, (w, r)


def test_layer_result_repr_states_sigma_1(objs):
    """The σ_1 in the one-line repr is the update's largest singular value (numpy float64 reference)."""
    lora = ds.load(str(S / "lora"))
    want = np.linalg.svd(lora[0].load().materialize().double().numpy(), compute_uv=False)[0]
    assert f"σ_1 {want:.4g}," in repr(objs["LayerResult"])


@pytest.mark.parametrize("name", ["Updates", "AnalysisResult", "LayerResult", "Comparison", "Table"])
def test_html_tables_for_notebooks(objs, name):
    h = objs[name]._repr_html_()
    assert h.startswith("<table>") and "</table>" in h and "<td" in h
    if name != "Table":
        assert html.escape(repr(objs[name])) in h  # the one-line summary is the caption
    if name == "AnalysisResult":
        assert h.count("<tr>") == 1 + 28 + 0 or "more rows" in h  # header + rows (long tables cut)
        assert "model.layers.3.mlp.down_proj" in h  # notebooks have the room for full names


def test_long_html_tables_are_cut_in_the_middle(objs):
    from deltaspec.formatting import html_table

    h = html_table(["a"], [[i] for i in range(100)], max_rows=10)
    assert "… 90 more rows …" in h and ">0<" in h and ">99<" in h and ">50<" not in h
    assert np.isfinite(objs["Comparison"].spread["k_proj"]["top1_energy"]["FT"])
