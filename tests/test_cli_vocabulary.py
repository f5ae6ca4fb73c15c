"""One name, one meaning (issue 12 item 8): every option of every command has help text, the renamed
options work (and their old spellings still do), and options appear only where they are used."""
import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from deltaspec_cli.main import COMMANDS, cli

S = Path(__file__).resolve().parent.parent / "sample_checkpoints"


def all_commands():
    """(path, command) for every command, plot's subcommands included."""
    ctx = click.Context(cli)
    out = []
    for name in COMMANDS:
        cmd = cli.get_command(ctx, name)
        out.append((name, cmd))
        if isinstance(cmd, click.Group):
            out += [(f"{name} {sub}", c) for sub, c in cmd.commands.items()]
    return out


def options(cmd) -> dict:
    return {o: p for p in cmd.params if isinstance(p, click.Option) and not p.hidden for o in p.opts}


@pytest.mark.parametrize("path,cmd", all_commands(), ids=[p for p, _ in all_commands()])
def test_every_option_has_help_text(path, cmd):
    missing = sorted({p.opts[-1] for p in options(cmd).values() if not (p.help or "").strip()})
    assert not missing, f"deltaspec {path}: options without help: {missing}"
    assert (cmd.help or "").strip(), f"deltaspec {path} has no help"


@pytest.mark.parametrize("path", [p for p, _ in all_commands()] + [""])
def test_help_fits_80_columns(path):
    """Click wraps option help itself, but not the \\b example blocks of docstrings: those are checked here."""
    r = CliRunner().invoke(cli, path.split() + ["--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert r.exit_code == 0, r.output
    wide = [line for line in r.output.splitlines() if len(line) > 80]
    assert not wide, f"deltaspec {path} --help: {wide}"


def test_metric_options_only_where_a_metric_is_computed():
    cmds = dict(all_commands())
    for path in ("analyze", "compare", "plot heatmap"):
        assert {"--n-ref", "--energy-k"} <= set(options(cmds[path])), path
    for path in ("subspace", "plot hist", "plot spectrum", "plot energy", "plot similarity"):
        assert not {"--n-ref", "--energy-k"} & set(options(cmds[path])), path
    assert "--metrics" in options(cmds["analyze"]) and "--metrics" in options(cmds["compare"])
    assert "--svd-top-k" in options(cmds["analyze"]) and "--top-k" not in options(cmds["analyze"])
    assert "--phi-k" in options(cmds["subspace"]) and "--grid" in options(cmds["plot similarity"])


def test_plot_hist_help_says_what_it_draws_by_default():
    r = CliRunner().invoke(cli, ["plot", "hist", "--help"], env={"COLUMNS": "200"})
    line = next(x for x in r.output.splitlines() if "--modules" in x)
    assert "k_proj,v_proj" in line and "default: all" not in line


def run(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args] + ["-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.stdout


def test_new_names_and_old_spellings_agree(tmp_path):
    new = run("subspace", S / "lora", S / "multilora", "--modules", "v_proj", "--layers", "0", "--phi-k", "2,8",
              "--format", "json")
    old = run("subspace", S / "lora", S / "multilora", "--modules", "v_proj", "--layers", "0", "-k", "2,8",
              "--format", "json")
    assert json.loads(new)["rows"] == json.loads(old)["rows"] and "phi@8" in json.loads(new)["rows"][0]
    a = json.loads(run("analyze", S / "full", "--base", S / "base", "--layers", "0", "--svd-top-k", "4", "--format", "json"))
    b = json.loads(run("analyze", S / "full", "--base", S / "base", "--layers", "0", "--top-k", "4", "--format", "json"))
    assert a["settings"]["svd_top_k"] == b["settings"]["svd_top_k"] == 4
    assert [x["singular_values"] for x in a["layers"]] == [x["singular_values"] for x in b["layers"]]
    assert len(a["layers"][0]["singular_values"]) == 4 and a["settings"]["energy_k"] == [1, 4, 16]
    for opt in ("--grid", "-k"):
        out = tmp_path / f"phi{opt}.png"
        r = CliRunner().invoke(cli, ["plot", "similarity", str(S / "lora"), str(S / "multilora"), "--layers", "0",
                                     "--modules", "v_proj", opt, "4", "-o", str(out), "-q"])
        assert r.exit_code == 0, r.output


def test_python_energy_k_and_its_old_name():
    import deltaspec as ds

    a = ds.analyze(str(S / "lora"), energy_k=(2,), modules=["q_proj"], device="cpu")
    b = ds.analyze(str(S / "lora"), top_k=(2,), modules=["q_proj"], device="cpu")
    assert "top2_energy" in a.metric_names and a.settings["energy_k"] == [2]
    assert [r.metrics["top2_energy"] for r in a] == [r.metrics["top2_energy"] for r in b]
