"""-o and warnings: an -o that cannot be written fails at once (before any work) with one line, an -o
inside an input is refused, unknown extensions need --format, and an ignored --lora-alpha says so."""
import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import deltaspec as ds
from deltaspec.errors import DeltaspecError, DeltaspecWarning
from deltaspec_cli.main import cli
from deltaspec_cli.output import output_format

sys.path.insert(0, os.path.dirname(__file__))
from io_fixtures import snapshot  # noqa: E402

S = Path(__file__).resolve().parent.parent / "sample_checkpoints"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args] + ["-q"])


def one_line_error(r, *words):
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and r.output.count("\n") == 1 and "Traceback" not in r.output, r.output
    for w in words:
        assert w in r.output, (w, r.output)


def test_unknown_extension_needs_format(tmp_path):
    with pytest.raises(DeltaspecError, match=r"x.xlsx: unknown report extension '.xlsx'; use .json, .csv, .txt"):
        output_format(None, "x.xlsx")
    assert output_format("csv", "x.xlsx") == "csv" and output_format(None, "report") == "table"
    assert output_format(None, "t.tex", allowed=("table", "latex")) == "latex"
    with pytest.raises(DeltaspecError, match="'.tex'"):
        output_format(None, "t.tex")  # analyze has no LaTeX output
    out = tmp_path / "x.xlsx"
    one_line_error(invoke("analyze", S / "lora", "-o", out), "unknown report extension", "--format")
    assert not out.exists()
    assert invoke("analyze", S / "lora", "-o", out, "--format", "csv").exit_code == 0
    assert out.read_text().startswith("name,module,layer")
    one_line_error(invoke("plot", "energy", S / "lora", "-o", tmp_path / "e.jpg"), "unsupported figure format 'jpg'")


@pytest.mark.parametrize("cmd", [["analyze"], ["compare"], ["subspace", "--base", S / "base"], ["plot", "spectrum"]])
def test_unwritable_output_fails_before_any_work(tmp_path, cmd):
    (tmp_path / "file").write_text("x")
    needs_base = S / "full"  # would fail later, when read (no --base): the -o error must come first
    one_line_error(invoke(*cmd, needs_base if cmd == ["analyze"] else S / "lora", "-o", tmp_path / "file" / "x.json"
                          if cmd[0] != "plot" else tmp_path / "file" / "x.png"), "is a file, not a folder")
    r = invoke("analyze", needs_base, "-o", tmp_path)  # click's own check (a usage error)
    assert r.exit_code == 2 and "is a directory" in r.output
    # a missing input is as immediate (checked while the command line is parsed, issue 20)
    one_line_error(invoke("analyze", tmp_path / "does-not-exist", "-o", tmp_path / "file" / "x.json"),
                   "does-not-exist: no such file or directory")


def test_read_only_place(tmp_path):
    if os.geteuid() == 0:  # root writes anywhere chmod says; /sys refuses even root
        if not sys.platform.startswith("linux"):
            pytest.skip("needs a read-only place")
        target = "/sys/deltaspec-test/report.json"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        target = ro / "report.json"
    one_line_error(invoke("analyze", S / "full", "-o", target), "cannot write in")  # before --base is missed


def test_new_output_inside_an_input_directory_is_refused(tmp_path):
    before = sorted(p.name for p in (S / "lora").iterdir())
    one_line_error(invoke("analyze", S / "lora", "-o", S / "lora" / "spectra.json"), "never writes into its input paths")
    one_line_error(invoke("compare", S / "lora", S / "full", "--base", S / "base", "-o", S / "base" / "sub" / "c.csv"),
                   "inside the input checkpoint")
    assert sorted(p.name for p in (S / "lora").iterdir()) == before and not (S / "base" / "sub").exists()
    saved = tmp_path / "lora.json"
    assert invoke("analyze", S / "lora", "-o", saved).exit_code == 0
    one_line_error(invoke("compare", saved, saved, "--labels", "a,b", "-o", saved), "refusing to overwrite the input")


def test_output_next_to_an_input_file_of_a_checkpoint_is_refused(tmp_path):
    """An input given as a file of a checkpoint folder protects the folder: `-o run/adapter_config.json`
    once replaced the adapter's config with the analysis (and later analyses read it as α = 8)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(S / "lora", run)
    before = snapshot(run)
    for cmd in (["analyze", run / "adapter_model.safetensors", "-o", run / "adapter_config.json"],
                ["analyze", run / "adapter_model.safetensors", "-o", run / "new.json"],
                ["report", run / "adapter_model.safetensors", "-o", run / "r.html"],
                ["resize", run / "adapter_model.safetensors", "--rank", "2", "-o", run / "small"]):
        one_line_error(invoke(*cmd), "refusing to write inside the input checkpoint")
    one_line_error(invoke("analyze", S / "lora", "-o", ""), "an empty path")
    assert snapshot(run) == before


def test_lora_alpha_that_the_checkpoint_overrides_is_not_silent(tmp_path):
    with pytest.warns(DeltaspecWarning, match="lora_alpha=8.0 ignored: peft checkpoints store their own scale"):
        u = ds.load(str(S / "lora"), lora_alpha=8.0)
    assert any("lora_alpha=8.0 ignored" in w for w in u.warnings)
    plain = ds.analyze(str(S / "lora"), modules=["q_proj"], layers=[0])
    assert ds.analyze(u, modules=["q_proj"], layers=[0])[0].singular_values.tolist() == plain[0].singular_values.tolist()
    r = CliRunner().invoke(cli, ["analyze", str(S / "lora"), "-q", "--lora-alpha", "8", "--format", "json"])
    assert r.exit_code == 0
    assert "warning: --lora-alpha 8.0 ignored: peft checkpoints store their own scale (α), which is used" in r.stderr
    assert "UserWarning" not in r.stderr and "DeltaspecWarning" not in r.stderr  # one clean line, not Python's
    assert json.loads(r.stdout)["warnings"] == ["--lora-alpha 8.0 ignored: peft checkpoints store their own scale (α), "
                                                "which is used"]  # the CLI's JSON speaks in flags too (issue 23)
    r = CliRunner().invoke(cli, ["plot", "spectrum", str(S / "lora"), "-q", "--lora-alpha", "8", "-o",
                                 str(tmp_path / "s.png")])
    assert r.exit_code == 0 and "warning: lora: --lora-alpha 8.0 ignored" in r.stderr


def test_small_refusals(tmp_path):
    """The same input twice, a reversed --layers range and a suggest-rank report in an unknown format are
    refused up front, each in one line."""
    one_line_error(invoke("report", S / "lora", S / "lora", "-o", tmp_path / "r.html"), "named twice")
    one_line_error(invoke("compare", S / "lora", S / "multilora", "--labels", "a,a"), "a named twice")
    r = invoke("analyze", S / "lora", "--layers", "3-1")
    assert r.exit_code == 2 and "empty range (did you mean 1-3?)" in r.output
    one_line_error(invoke("suggest-rank", S / "lora", "-o", tmp_path / "r.yaml"), "unknown report extension '.yaml'")
