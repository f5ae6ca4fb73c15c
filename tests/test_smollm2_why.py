"""examples/smollm2/why.py (heads, learned vs initial, ablation of a run folder) end to end, on the shipped
samples laid out as the SmolLM2 recipe lays out its runs (WORK/<method>_s<seed>): what it writes must be
what the commands it wraps compute, with no machine paths; and the SmolLM2 heads and init-split JSON
shipped in figures/smollm2_data must agree with themselves (a float64 recomputation of their summaries)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import deltaspec as ds

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_checkpoints"
DATA = ROOT / "figures" / "smollm2_data"


def test_why_on_sample_runs(tmp_path):
    work = tmp_path / "runs"
    work.mkdir()
    for m in ("lora", "multilora", "full"):
        (work / f"{m}_s0").symlink_to(SAMPLES / m, target_is_directory=True)
    out = tmp_path / "data"
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "smollm2" / "why.py"), str(work), "--k", "1",
                        "--per-task", "2", "--jobs", "2", "-o", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    heads = ds.HeadsResult.from_dict(json.loads((out / "heads_s0.json").read_text()))
    want = ds.heads(str(SAMPLES / "multilora"), device="cpu", progress=False)
    assert [h.name for h in heads] == [h.name for h in want]
    np.testing.assert_allclose([h.shares for h in heads], [h.shares for h in want], rtol=1e-6)
    rows = json.loads((out / "init_split.json").read_text())
    assert [(x["method"], x["run"], x["initial"]) for x in rows] == [
        ("lora", "lora_s0", "lora_s0/checkpoint-0"), ("multilora", "multilora_s0", "multilora_s0/checkpoint-0")]
    res = ds.analyze(ds.load(SAMPLES / "multilora", initial=SAMPLES / "multilora" / "checkpoint-0"),
                     modules=["k_proj", "v_proj"], device="cpu", progress=False)
    assert rows[1]["init_share"] == pytest.approx(np.mean([x.metrics["init_share"] for x in res.layers]), rel=1e-6)
    abl = json.loads((out / "ablation.json").read_text())
    assert [x["label"] for x in abl["runs"]] == ["LoRA", "MultiLoRA", "FT"] and abl["k"] == [1]
    assert all(str(tmp_path) not in x["path"] for x in abl["runs"])
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "smollm2" / "why.py"), str(tmp_path / "nothing")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("error: not trained yet") and "Traceback" not in r.stderr


@pytest.mark.skipif(not (DATA / "heads_s0.json").is_file(), reason="SmolLM2 heads not shipped")
def test_shipped_smollm2_heads_and_init_split_are_consistent():
    """Each layer's effective number of heads is exp(entropy) of its shares, the shares are ‖ΔW_i‖² over
    their sum (from the per-head Frobenius norms, float64), and the k/v init shares lie in [0, 1]."""
    d = json.loads((DATA / "heads_s0.json").read_text())
    assert not d["source"]["path"].startswith("/")
    for layer in d["layers"]:
        e = np.array([h["frobenius_norm"] for h in layer["per_head"]], dtype=np.float64) ** 2
        p = e / e.sum()
        np.testing.assert_allclose([h["share"] for h in layer["per_head"]], p, rtol=1e-5)
        assert layer["metrics"]["effective_heads"] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-5)
    rows = json.loads((DATA / "init_split.json").read_text())
    assert {x["method"] for x in rows} == {"lora", "multilora"}
    assert all(0 <= x["init_share"] <= 1 for x in rows) and all(x["init_share"] == 0 for x in rows
                                                               if x["method"] == "lora")
