"""compare as paper tables: mean ± std over the layers of each module type (population std) in the
terminal table, JSON, CSV, booktabs LaTeX and GitHub Markdown; numbers checked against numpy."""
import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from deltaspec.compare import compare
from deltaspec_cli.main import cli
from test_compare import run

LABELS = ["LoRA", "Multi_LoRA", "FT"]  # an underscore, to see LaTeX escaping


@pytest.fixture(scope="module")
def cmp():
    return compare([run("lora"), run("multilora"), run("full")], LABELS)


def layer_values(cmp, module, metric, label):
    res = cmp.aligned.results[LABELS.index(label)]
    return np.array([r.metrics[metric] for r in res.layers if r.module == module], dtype=float)


def test_spread_is_the_population_std_over_layers(cmp):
    for m in ("top1_energy", "effective_rank"):
        for lab in LABELS:
            v = layer_values(cmp, "k_proj", m, lab)
            assert cmp.values["k_proj"][m][lab] == pytest.approx(v.mean())
            assert cmp.spread["k_proj"][m][lab] == pytest.approx(v.std(ddof=0))
    d = json.loads(cmp.to_json())
    assert d["spread"].startswith("std: population standard deviation")
    assert d["groups"]["k_proj"]["std"]["top1_energy"]["FT"] == pytest.approx(cmp.spread["k_proj"]["top1_energy"]["FT"])
    rows = list(csv.DictReader(io.StringIO(cmp.to_csv())))
    row = next(r for r in rows if r["module"] == "v_proj" and r["metric"] == "stable_rank")
    assert float(row["LoRA_std"]) == pytest.approx(layer_values(cmp, "v_proj", "stable_rank", "LoRA").std())


def parse_pm(cell: str):
    m = re.fullmatch(r"\$?(-?[\d.]+)(?: \\pm | ± |±)(-?[\d.]+)\$?", cell.strip())
    return float(m.group(1)), float(m.group(2)), len(m.group(2).split(".")[1]) if "." in m.group(2) else 0


def test_latex_booktabs(cmp):
    tex = cmp.to_latex(["top1_energy", "effective_rank"])
    lines = tex.splitlines()
    assert lines[1] == r"\begin{tabular}{llrrr}" and lines[2] == r"\toprule" and lines[-2] == r"\bottomrule"
    assert lines[3] == r"Module & Metric & LoRA & Multi\_LoRA & FT \\"
    body = [l for l in lines if l.endswith(r"\\") and not l.startswith("Module")]
    assert len(body) == 4 * 2 and tex.count(r"\midrule") == 4  # header rule + between the 4 modules
    first = body[0].rstrip("\\ ").split(" & ")
    assert first[0] == r"q\_proj (2 layers)" and first[1] == r"top1\_energy"
    for lab, cell in zip(LABELS, first[2:]):
        mean, std, dec = parse_pm(cell)
        assert mean == pytest.approx(cmp.values["q_proj"]["top1_energy"][lab], abs=0.6 * 10 ** -dec)
        assert std == pytest.approx(cmp.spread["q_proj"]["top1_energy"][lab], abs=0.6 * 10 ** -dec)
    assert "_" not in re.sub(r"\\_", "", tex.split("\n", 1)[1])  # every underscore escaped


def test_markdown_github_table(cmp):
    md = cmp.to_markdown(["top1_energy"])
    lines = md.splitlines()
    assert lines[0] == "| module | metric | LoRA | Multi_LoRA | FT |" and lines[1] == "|---|---|---:|---:|---:|"
    rows = lines[2:6]
    assert all(r.count("|") == 6 for r in rows) and rows[1].startswith("| k_proj (2 layers) | `top1_energy` |")
    mean, std, dec = parse_pm(rows[1].split("|")[5])
    assert mean == pytest.approx(cmp.values["k_proj"]["top1_energy"]["FT"], abs=0.6 * 10 ** -dec)
    assert "mean ± std" in lines[-1]


def test_terminal_table_shows_the_spread(cmp):
    text = cmp.format_table(["top1_energy"])
    row = next(l for l in text.splitlines() if l.startswith("top1_energy"))
    mean, std, dec = parse_pm(row.split()[1])
    assert mean == pytest.approx(cmp.values["q_proj"]["top1_energy"]["LoRA"], abs=0.6 * 10 ** -dec)
    assert "mean ± std over the layers of each module type" in text


def test_per_layer_has_no_spread():
    c = compare([run("lora"), run("full")], ["a", "b"], per_layer=True)
    assert "±" not in c.format_table() and "pm" not in c.to_latex() and "std" not in json.loads(c.to_json())["groups"][
        c.aligned.names[0]]


def test_cli_formats_from_flag_and_extension(tmp_path):
    S = Path(__file__).resolve().parent.parent / "sample_checkpoints"
    args = [str(S / "lora"), str(S / "multilora"), "--labels", "LoRA,MultiLoRA", "-q"]
    r = CliRunner().invoke(cli, ["compare", *args, "--format", "latex", "--metrics", "top1_energy"])
    assert r.exit_code == 0 and r.stdout.count(r"\toprule") == 1 and r.stdout.count(" \\pm ") == 8
    for ext, marker in ((".tex", r"\begin{tabular}"), (".md", "|---|---|")):
        out = tmp_path / f"t{ext}"
        assert CliRunner().invoke(cli, ["compare", *args, "-o", str(out)]).exit_code == 0
        assert marker in out.read_text()
