"""Terminal tables fit the terminal: every default report of analyze/compare/subspace at COLUMNS=80,
short layer names in tables and full ones in JSON/CSV, the width-aware grid and number formats."""
import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from deltaspec.formatting import fmt_spread, hoist_constant, short_names, text_grid, wrap
from deltaspec_cli.main import cli

S = Path(__file__).resolve().parent.parent / "sample_checkpoints"


def run(*args, columns="80"):
    env = {"COLUMNS": columns} if columns else {"COLUMNS": ""}
    r = CliRunner().invoke(cli, [str(a) for a in args] + ["-q"], env=env, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.stdout


def widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


@pytest.mark.parametrize("args", [
    ("analyze", S / "lora"),
    ("analyze", S / "full", "--base", S / "base"),
    ("compare", S / "lora", S / "multilora", S / "full", "--base", S / "base", "--labels", "LoRA,MultiLoRA,FT"),
    ("compare", S / "lora", S / "full", "--base", S / "base", "--per-layer", "--layers", "0"),
    ("subspace", S / "lora", S / "multilora", S / "full", "--base", S / "base", "--modules", "k_proj"),
], ids=["analyze-lora", "analyze-full", "compare", "compare-per-layer", "subspace"])
def test_default_reports_fit_80_columns(args):
    out = run(*args)
    assert widest(out) <= 80, "\n".join(line for line in out.splitlines() if len(line) > 80)
    assert "model.layers.0" not in out.replace("= model.layers.0", "")  # short names in the table body
    assert "L0." in out or "q_proj (4 layers)" in out


def test_analyze_full_fine_tune_keeps_every_default_column_at_80():
    out = run("analyze", S / "full", "--base", S / "base")
    assert "left out" not in out  # the six default metrics fit: nothing silently missing
    assert "L0.gate_proj" in out and "every layer" not in out.split("\n\n")[1]  # shapes differ: a column


def test_wide_output_when_not_a_terminal_and_no_columns():
    out = run("analyze", S / "lora", "--metrics", "all", columns=None)
    assert widest(out) > 80 and "participation_ratio" in out and "left out" not in out


def test_metrics_option_and_all_columns_at_80_say_what_is_left_out():
    out = run("analyze", S / "lora", "--metrics", "all")
    assert widest(out) <= 80 and "left out to fit 80 characters" in out
    out = run("analyze", S / "lora", "--metrics", "stable_rank,top1_energy", columns="200")
    head = next(line for line in out.splitlines() if line.startswith("layer"))
    assert head.split() == ["layer", "stable_rank", "top1_energy"]
    r = CliRunner().invoke(cli, ["analyze", str(S / "lora"), "-q", "--metrics", "top1_energi"])
    assert r.exit_code == 2 and "unknown metric 'top1_energi'" in r.output and "top1_energy" in r.output


def test_full_names_in_json_and_csv(tmp_path):
    d = json.loads(run("analyze", S / "lora", "--format", "json"))
    assert d["layers"][0]["name"] == "model.layers.0.self_attn.q_proj"
    rows = list(csv.DictReader(io.StringIO(run("analyze", S / "lora", "--format", "csv", "--metrics", "top1_energy"))))
    assert rows[0]["name"] == "model.layers.0.self_attn.q_proj" and list(rows[0])[-1] == "top1_energy"


def test_compare_dropped_note_summarises_by_module():
    out = run("compare", S / "lora", S / "full", "--base", S / "base")
    note = out[out.index("note: full"):]
    assert "12 layers not in every input left out (gate_proj ×4, up_proj ×4, down_proj ×4)" in note.replace("\n  ", " ")


def test_short_names_stay_unique():
    llama = [f"model.layers.{i}.{p}" for i in (0, 11) for p in ("self_attn.q_proj", "mlp.down_proj")] + ["lm_head"]
    assert list(short_names(llama).values()) == ["L0.q_proj", "L0.down_proj", "L11.q_proj", "L11.down_proj", "lm_head"]
    moe = [f"model.layers.0.mlp.experts.{e}.w1" for e in range(2)]
    assert list(short_names(moe).values()) == ["L0.mlp.experts.0.w1", "L0.mlp.experts.1.w1"]
    t5 = [f"{s}.block.0.layer.0.SelfAttention.q" for s in ("encoder", "decoder")]
    assert list(short_names(t5).values()) == ["encoder.L0.q", "decoder.L0.q"]


def test_text_grid_wraps_headers_then_leaves_out_columns():
    head = ["layer", "frobenius_norm", "normalized_entropy", "stable_rank"]
    body = [["L0.q_proj", "6.105", "0.4973", "2.973"], "a heading", ["L10.q_proj", "5.1", "0.5", "3"]]
    wide = text_grid(head, body)
    assert len(wide) == 5 and wide[0].split() == head and wide[3] == "a heading"
    assert wide[2].index("0.4973") == wide[4].index("0.5 ")  # decimal points aligned
    assert wide[2].index("6.105") == wide[4].index("5.1 ") and wide[2].index("2.973") == wide[4].index("3")
    narrow = text_grid(head, body, width=45)
    assert narrow[0].split() == ["frobenius", "normalized", "stable"] and max(map(len, narrow)) <= 45
    tiny = text_grid(head, body, width=30)
    note = " ".join(x.strip() for x in tiny[6:])
    assert max(map(len, tiny)) <= 30 and tiny[0].split() == ["frobenius"]
    assert note.startswith("(2 columns left out to fit 30 characters: normalized_entropy, stable_rank; to see them:")
    assert "--format csv" in note and "COLUMNS" in note
    assert text_grid(head, body, width=5)[0].startswith("layer")  # the first column always stays


def test_long_first_cells_go_on_their_own_line():
    """kohya names (no dots to shorten at) would push every metric out of 80 columns: each goes on a line
    of its own above its values instead, and all columns stay."""
    head = ["layer", "frobenius_norm", "top1_energy", "effective_rank", "normalized_entropy", "stable_rank"]
    names = [f"lora_unet_down_blocks_{i}_attentions_0_transformer_blocks_0_attn1_to_out_0" for i in range(2)]
    lines = text_grid(head, [[n, "6.105", "0.4973", "3.1", "0.5", "2.973"] for n in names], width=80)
    assert max(map(len, lines)) <= 80 and "left out" not in " ".join(lines)
    assert lines[3] == names[0] and lines[4].split() == ["6.105", "0.4973", "3.1", "0.5", "2.973"]
    short = text_grid(head, [["L0.q_proj", "1", "1", "1", "1", "1"]], width=80)
    assert short[-1].split() == ["L0.q_proj", "1", "1", "1", "1", "1"]  # short names stay in their column


def test_hoist_constant_columns():
    head, body, same = hoist_constant(["layer", "kind", "rank"], [["a", "lowrank", "16"], ["b", "lowrank", "8"]],
                                      ["kind", "rank"])
    assert head == ["layer", "rank"] and body == [["a", "16"], ["b", "8"]] and same == "kind\xa0lowrank"
    assert wrap(same, 80) == ["kind lowrank"]  # no-break space: wrapped lines keep "r 16" together


@pytest.mark.parametrize("mean,std,want", [(6.0143, 0.3137, "6.01 ± 0.31"), (0.47331, 0.0891, "0.473 ± 0.089"),
                                           (127.5, 0.5, "127.50 ± 0.50"), (16, 0.0, "16"), (43.14, 5.5, "43.1 ± 5.5"),
                                           (1234.0, 160.0, "1234 ± 160"), (0.5, float("nan"), "0.5")])
def test_mean_and_spread_share_their_precision(mean, std, want):
    assert fmt_spread(mean, std) == want
