"""A verdict first (analyze, compare): computed from the metrics, every number in it shown in the table
below; numbers people can scan (decimal points aligned, differences to the precision of their spread,
one percent style); wide output says how to see what it leaves out; subspace has a legend."""
import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

import deltaspec as ds
from deltaspec.findings import DOMINATED, beyond_spread
from deltaspec.formatting import align_decimals, fmt_diff, fmt_pct, fmt_spread, text_grid
from deltaspec_cli.main import cli

S = Path(__file__).resolve().parent.parent / "sample_checkpoints"
THREE = [S / "lora", S / "multilora", S / "full", "--base", S / "base", "--labels", "LoRA,MultiLoRA,FT"]


def run(*args, columns="80"):
    r = CliRunner().invoke(cli, [str(a) for a in args] + ["-q"], env={"COLUMNS": columns}, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.stdout


def test_analyze_opens_with_a_verdict_from_the_metrics():
    out = run("analyze", S / "lora").splitlines()
    res = ds.analyze(S / "lora", progress=False)
    top1 = np.array([r.metrics["top1_energy"] for r in res.layers])
    verdict = " ".join(x.strip() for x in out[:2] if not x.startswith(str(S)))
    assert out[0].startswith("verdict: ") and max(map(len, out[:2])) <= 80
    assert f"top1_energy ≥ {DOMINATED:g} in {int((top1 >= DOMINATED).sum())} of {top1.size} layers" in verdict
    means = {m: a["mean"]["top1_energy"] for m, a in res.aggregates().items()}
    hi = max(means, key=means.get)
    assert f"most top-heavy {hi} (mean {means[hi]:.2f})" in verdict


def test_compare_verdict_fits_quotes_the_table_and_stays_out_of_json():
    out = run("compare", *THREE)
    lines = out.splitlines()
    verdict = " ".join(x.strip() for x in lines[:lines.index("")])
    assert lines[0].startswith("verdict: ") and lines.index("") <= 2 and max(map(len, out.splitlines())) <= 80
    res = [ds.AnalysisResult.from_json(run("analyze", p, "--format", "json")) if p != S / "full" else
           ds.analyze(S / "full", base=S / "base", progress=False) for p in (S / "lora", S / "multilora", S / "full")]
    cmp = ds.compare(res, ["LoRA", "MultiLoRA", "FT"])
    lora = [cmp.values[g]["top1_energy"]["LoRA"] for g in cmp.values]
    assert f"LoRA's update is the most top-heavy (top1_energy {min(lora):.2f}–{max(lora):.2f}" in verdict
    for g in cmp.values:  # each number of the verdict is a mean the table shows (to its precision)
        assert fmt_spread(cmp.values[g]["top1_energy"]["LoRA"], cmp.spread[g]["top1_energy"]["LoRA"], "±") in out
    wide = run("compare", *THREE, columns="200").splitlines()[0]
    n = sum(beyond_spread(cmp.differences(g, "top1_energy")["MultiLoRA"], cmp.spread[g]["top1_energy"]["LoRA"],
                          cmp.spread[g]["top1_energy"]["MultiLoRA"]) for g in cmp.values)
    assert f"MultiLoRA lower on {n}/4" in wide
    assert "verdict" not in run("compare", *THREE, "--format", "json") and "verdict" not in json.dumps(cmp.to_dict())


def test_differences_to_the_precision_of_their_spread():
    assert fmt_diff(0.08368, 0.031) == "+0.084" and fmt_diff(-4.412, 0.5) == "-4.41" and fmt_diff(33.4, 5.6) == "+33.4" and fmt_diff(33.4, 56) == "+33"
    assert fmt_diff(0.1, None) == "+0.1" and fmt_diff(-0.0001, 0.5) == "0"


def test_one_percent_style_for_shares_and_relative_errors():
    assert [fmt_pct(x) for x in (0.312, 0.30303, 1.0, 2e-7, 0.0, float("nan"))] == \
        ["31.20%", "30.30%", "100.00%", "2.0e-05%", "0.00%", "-"]


def test_decimal_points_line_up():
    assert align_decimals(["0.53", "0.3283", "12.1", "-"]) == ["0.53  ", "0.3283", "12.1   ", "-     "]
    assert align_decimals(["5.8±0.2", "14.3±1.31"]) == [" 5.8±0.2 ", "14.3±1.31"]
    assert align_decimals(["q_proj", "0.5"]) == ["q_proj", "0.5"]  # not a numeric column: unchanged
    grid = text_grid(["layer", "x"], [["a", "0.53"], ["b", "0.3283"]])
    assert grid[2].index(".") == grid[3].index(".")


def test_left_out_columns_say_how_to_see_them():
    out = run("analyze", S / "lora", "--metrics", "all")
    note = " ".join(x.strip() for x in out[out.index("left out to fit"):].splitlines())
    assert "--format csv" in note and "-o FILE.csv" in note and "COLUMNS" in note


def test_subspace_has_a_legend_line():
    out = run("subspace", S / "lora", S / "multilora", "--base", S / "base", "--modules", "v_proj", "--layers", "0")
    legend = " ".join(x.strip() for x in out[out.index("legend: "):].splitlines())
    assert "phi@k = overlap of the top-k" in legend and "amplification = " in legend and "intruders = " in legend
    assert max(map(len, out.splitlines())) <= 80
