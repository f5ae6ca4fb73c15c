"""Warnings for what may surprise, one quiet note for what is expected (issue 20, item 8), and error
lines wrapped at word boundaries only on a terminal (issue 20, also)."""
import io
import json
from pathlib import Path

from click.testing import CliRunner

import deltaspec as ds
from deltaspec.omissions import split, summary, without_source
from deltaspec_cli.main import cli

S = Path(__file__).resolve().parents[1] / "sample_checkpoints"
LORA, FULL, BASE = str(S / "lora"), str(S / "full"), str(S / "base")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_full_finetune_omissions_are_notes_not_warnings():
    u = ds.load(FULL, base=BASE)
    assert u.warnings == []  # norms and embeddings are expected: no warning on every command
    assert len(u.notes) == 2 and "1-D (norm scales, biases)" in u.notes[0] and "embedding" in u.notes[1]
    line = summary(u.notes)
    assert line.startswith("not analysed, as expected: 9 1-D tensor(s) (norm scales, biases), 3 embedding update(s)")
    res = ds.analyze(u, progress=False, modules=["q_proj"])
    assert res.notes == u.notes and res.warnings == []
    back = ds.AnalysisResult.from_dict(json.loads(res.to_json()))
    assert back.notes == res.notes and back.warnings == []


def test_old_saved_analyses_move_their_expected_omissions_to_notes():
    d = json.loads(ds.analyze(ds.load(FULL, base=BASE), progress=False, layers=[0]).to_json())
    d["warnings"], _ = d.pop("notes"), None  # as written before notes existed
    d["warnings"].append("x: 2 tensor(s) not understood, skipped: a, b")
    back = ds.AnalysisResult.from_dict(d)
    assert back.warnings == ["x: 2 tensor(s) not understood, skipped: a, b"] and len(back.notes) == 2
    assert split(d["warnings"]) == (back.warnings, back.notes)


def test_cli_prints_one_note_line_per_input_and_no_warning():
    r = run("compare", LORA, FULL, "--base", BASE, "-q")
    assert r.exit_code == 0, r.output
    assert "warning" not in r.output
    notes = [ln for ln in r.stdout.splitlines() if ln.startswith("note: full: not analysed")]
    assert len(notes) == 1 and "--include-embeddings" in notes[0]  # in the CLI's words
    r = run("analyze", FULL, "--base", BASE, "-q", "--format", "json", "--layers", "0")
    assert r.exit_code == 0
    err = r.stderr.splitlines()
    assert len(err) == 1 and err[0].startswith("note: not analysed, as expected: 9 1-D tensor(s)")
    r = run("info", FULL)  # info names every omission
    assert "model.layers.*.input_layernorm.weight" in r.stderr and "lm_head" in r.stderr and "warning" not in r.stderr


def test_a_label_and_the_path_are_never_printed_twice(tmp_path, monkeypatch):
    assert without_source("ft: 2 tensors", "sample/ft", "ft") == "2 tensors"
    assert without_source("sample/ft: 2 tensors", "sample/ft", "ft") == "2 tensors"
    assert without_source("base: 2 base tensors", "sample/ft", "ft") == "base: 2 base tensors"
    monkeypatch.chdir(S.parent)
    res = ds.analyze(LORA, progress=False, layers=[0])
    res.warnings = [f"{res.source['path']}: 1 tensor(s) not understood, skipped: junk"]
    saved = tmp_path / "lora.json"
    saved.write_text(res.to_json())
    r = run("compare", saved, LORA, "--labels", "a,b", "--format", "json", "-q", "--layers", "0")
    assert r.exit_code == 0, r.output
    assert "warning: a: 1 tensor(s) not understood, skipped: junk" in r.stderr
    assert res.source["path"] + ":" not in r.stderr


def test_report_keeps_expected_omissions_out_of_the_yellow_box(tmp_path):
    out = tmp_path / "r.html"
    r = run("report", LORA, FULL, "--base", BASE, "-q", "--no-hash", "-o", out)
    assert r.exit_code == 0, r.output
    html = out.read_text()
    box = html.split('<ul class="warn">')[1].split("</ul>")[0] if '<ul class="warn">' in html else ""
    assert "norm scales" not in box and "embedding" not in box
    assert "not analysed, as expected: 9 1-D tensor(s)" in html


def test_error_lines_wrap_only_on_a_terminal(monkeypatch):
    from deltaspec_cli import output

    class Tty(io.StringIO):
        def isatty(self):
            return True

    msg = "error: " + " ".join(["sample_checkpoints/lroa:"] + ["word"] * 30)
    monkeypatch.setenv("COLUMNS", "40")
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    output.echo_err(msg)
    assert pipe.getvalue() == msg + "\n"  # piped: one line per message, whatever $COLUMNS says
    tty = Tty()
    monkeypatch.setattr("sys.stderr", tty)
    output.echo_err(msg)
    lines = tty.getvalue().splitlines()
    assert len(lines) > 1 and all(len(ln) <= 40 for ln in lines)
    assert " ".join(ln.strip() for ln in lines) == msg  # broken at spaces only, nothing lost
