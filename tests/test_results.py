"""Result objects: JSON schema, round trip, CSV, aggregates, tables."""
import csv
import io
import json
import math

import numpy as np
import pytest
import torch

import deltaspec as ds
from deltaspec.results import AnalysisResult
from deltaspec.updates import Dense, LayerUpdate, LowRank, Updates


def make_updates():
    g = torch.Generator().manual_seed(0)
    lr = lambda: LowRank(torch.randn(24, 4, generator=g), torch.randn(4, 16, generator=g), 2.0)
    layers = []
    for i in range(3):
        for m in ("k_proj", "v_proj"):
            layers.append(LayerUpdate(f"model.layers.{i}.self_attn.{m}", (24, 16), "lowrank", 4, lr))
    layers.append(LayerUpdate("model.layers.0.mlp.down_proj", (16, 24), "dense", 16, lambda: Dense(torch.zeros(16, 24))))
    return Updates(layers, "ckpt", "peft")


def test_json_schema_and_roundtrip(tmp_path):
    res = ds.analyze(make_updates(), device="cpu")
    d = json.loads(res.to_json())
    assert set(d) >= {"deltaspec_version", "source", "layers", "aggregates", "settings"}
    assert d["source"] == {"path": "ckpt", "format": "peft", "base": None}
    L = d["layers"][0]
    assert set(L) >= {"name", "module", "layer", "shape", "kind", "rank", "singular_values", "metrics", "n_ref"}
    assert L["module"] == "k_proj" and L["layer"] == 0 and L["shape"] == [24, 16] and L["rank"] == 4
    assert len(L["singular_values"]) == 4
    assert d["layers"][-1]["metrics"]["effective_rank"] is None  # zero update: NaN → null
    p = tmp_path / "s.json"
    p.write_text(res.to_json())
    back = AnalysisResult.from_json(p)
    assert [r.name for r in back.layers] == [r.name for r in res.layers]
    np.testing.assert_array_equal(back.layers[0].singular_values, res.layers[0].singular_values)
    assert math.isnan(back.layers[-1].metrics["effective_rank"])


def test_aggregates_are_means_per_module():
    res = ds.analyze(make_updates(), device="cpu")
    agg = res.aggregates()
    assert list(agg) == ["k_proj", "v_proj", "down_proj"]
    ks = [r.metrics["stable_rank"] for r in res.layers if r.module == "k_proj"]
    assert agg["k_proj"]["n_layers"] == 3
    assert agg["k_proj"]["mean"]["stable_rank"] == pytest.approx(np.mean(ks))


def test_csv_and_table():
    res = ds.analyze(make_updates(), device="cpu")
    rows = list(csv.DictReader(io.StringIO(res.to_csv())))
    assert len(rows) == 7 and rows[0]["module"] == "k_proj"
    assert float(rows[0]["top1_energy"]) == pytest.approx(res.layers[0].metrics["top1_energy"])
    assert rows[-1]["effective_rank"] == ""
    text = res.format_table()
    assert "L2.v_proj" in text and "n_ref" in text
    assert len(res.table()) == 7


def test_select_and_n_ref_options():
    res = ds.analyze(make_updates(), modules=["v_proj"], layers=[0, 2], n_ref="rank")
    assert [r.name for r in res.layers] == ["model.layers.0.self_attn.v_proj", "model.layers.2.self_attn.v_proj"]
    assert all(r.n_ref == 4 for r in res.layers)
    assert res["model.layers.0.self_attn.v_proj"].n_ref == 4


def test_bad_json_is_a_clear_error(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(ds.DeltaspecError, match="x.json"):
        AnalysisResult.from_json(p)
