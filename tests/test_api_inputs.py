"""The Python API takes what it gives: from_json of to_json()/to_dict()/a path, compare of paths and saved
JSON next to results, short layer names as keys, pandas frames (and a clear error without pandas)."""
import json
import os
import sys

import numpy as np
import pytest

import deltaspec as ds
from deltaspec.errors import DeltaspecError, FormatError

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "sample_checkpoints")
LORA, MULTI = os.path.join(SAMPLES, "lora"), os.path.join(SAMPLES, "multilora")


@pytest.fixture(scope="module")
def lora():
    return ds.analyze(LORA, progress=False, modules=["q_proj", "v_proj"])


def _same(a, b):
    assert [r.name for r in a.layers] == [r.name for r in b.layers]
    for x, y in zip(a.layers, b.layers):
        np.testing.assert_allclose(x.singular_values, y.singular_values, rtol=1e-12)


def test_from_json_takes_what_to_json_and_to_dict_return_and_a_path(lora, tmp_path):
    _same(ds.AnalysisResult.from_json(lora.to_json()), lora)
    _same(ds.AnalysisResult.from_json(lora.to_dict()), lora)
    p = tmp_path / "lora.json"
    p.write_text(lora.to_json())
    _same(ds.AnalysisResult.from_json(p), lora)
    _same(ds.AnalysisResult.from_json(str(p)), lora)
    with pytest.raises(FormatError, match="JSON text: not a deltaspec analysis"):
        ds.AnalysisResult.from_json('{"layers": 3}')


def test_results_indexable_by_the_short_names_the_tables_print(lora):
    assert lora["L0.q_proj"] is lora["model.layers.0.self_attn.q_proj"]
    assert "L0.q_proj" in lora.format_table()
    with pytest.raises(KeyError, match="L0.q_proj"):
        lora["L9.q_proj"]


def test_compare_takes_paths_saved_json_and_results(lora, tmp_path):
    p = tmp_path / "lora.json"
    p.write_text(lora.to_json())
    ref = ds.compare([lora, ds.analyze(MULTI, progress=False, modules=["q_proj", "v_proj"])], ["a", "b"])
    for first, second in ((str(p), MULTI), (lora.to_json(), MULTI), (lora.to_dict(), MULTI), (p, MULTI)):
        cmp = ds.compare([first, second], ["a", "b"])
        assert cmp.values == ref.values
    with pytest.raises(DeltaspecError, match="list of inputs"):
        ds.compare(str(p))
    with pytest.raises(DeltaspecError, match="got int"):
        ds.compare([lora, 5])


def test_to_pandas_on_results_and_comparisons(lora):
    pd = pytest.importorskip("pandas")
    df = lora.to_pandas()
    assert isinstance(df, pd.DataFrame) and lora.to_frame().equals(df)
    assert df.loc["model.layers.0.self_attn.q_proj", "top1_energy"] == lora.layers[0].metrics["top1_energy"]
    cmp = ds.compare([lora, lora.to_json()], ["a", "b"])
    cf = cmp.to_pandas()
    assert cf.loc[("q_proj", "top1_energy"), "a"] == cmp.values["q_proj"]["top1_energy"]["a"]
    assert (cf["b-a"] == 0).all()


def test_without_pandas_a_clear_error_and_a_printable_table(lora, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(DeltaspecError, match="needs pandas: pip install pandas"):
        lora.to_pandas()
    with pytest.raises(DeltaspecError, match="needs pandas"):
        ds.compare([lora, lora], ["a", "b"]).to_frame()
    t = lora.table()
    assert isinstance(t, list) and "top1_energy" in str(t) and "<table>" in t._repr_html_()
