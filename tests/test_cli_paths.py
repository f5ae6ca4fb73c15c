"""Paths are untrusted input: a symbolic link loop (a self-loop or a two-link cycle) given to any path
argument of any command is one `error:` line naming the path, exit code 2, no traceback; the Python API
raises a one-line FormatError for the checkpoint, base= and initial=."""
import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from deltaspec.errors import FormatError
from deltaspec.io import load
from deltaspec_cli.common import UserPath
from deltaspec_cli.main import COMMANDS, LazyGroup, cli

SAMPLES = Path(__file__).resolve().parent.parent / "sample_checkpoints"
OUT_NAMES = {"report": "r.html", "plot": "p.png", "resize": "resized", "train": "trained"}


def _leaves():
    """(argv prefix, click command) of every command and subcommand."""
    group = LazyGroup()
    for name in COMMANDS:
        cmd = group.get_command(None, name)
        if isinstance(cmd, click.Group):
            for sub in cmd.list_commands(None):
                yield [name, sub], cmd.get_command(None, sub)
        else:
            yield [name], cmd


CASES = [(tuple(argv), p.name) for argv, cmd in _leaves() for p in cmd.params if isinstance(p.type, UserPath)]


def test_every_path_parameter_is_a_user_path():
    """A new path option must use UserPath (cli/common.py), or it escapes these checks."""
    loose = [(argv, p.name) for argv, cmd in _leaves() for p in cmd.params
             if isinstance(p.type, click.Path) and not isinstance(p.type, UserPath)]
    assert not loose and len(CASES) >= 15


def _argv(argv, cmd, target, loop, tmp_path):
    args = list(argv)
    for p in cmd.params:
        if p.name == target:
            value = loop
        elif p.required and (isinstance(p, click.Argument) or isinstance(p.type, UserPath) and p.name != "out"):
            value = str(SAMPLES / "lora")  # an input that exists (extract's --base/--tuned are required options)
        elif p.required:
            value = p.type.choices[0] if isinstance(p.type, click.Choice) else str(tmp_path / OUT_NAMES.get(argv[0], "o.json"))
        else:
            continue
        args += [value] if isinstance(p, click.Argument) else [p.opts[0], value]
    return args


@pytest.fixture
def loops(tmp_path):
    os.symlink("self", tmp_path / "self")
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    return {"self-loop": str(tmp_path / "self"), "two-link cycle": str(tmp_path / "a")}


@pytest.mark.parametrize("argv,target", CASES, ids=["-".join(a) + ":" + t for a, t in CASES])
def test_symlink_loop_is_one_error_line(tmp_path, loops, argv, target):
    cmd = dict((tuple(a), c) for a, c in _leaves())[argv]
    for kind, loop in loops.items():
        r = CliRunner().invoke(cli, _argv(argv, cmd, target, loop, tmp_path))
        lines = [x for x in r.output.splitlines() if x.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {loop}: a symbolic link loop"), \
            (kind, r.output, r.exception)


@pytest.mark.parametrize("kw", ["path", "base", "initial"])
def test_python_api_symlink_loop(loops, kw):
    for loop in loops.values():
        args = {"path": str(SAMPLES / ("full" if kw == "base" else "lora"))}
        args[kw] = loop
        with pytest.raises(FormatError) as e:
            load(**args)
        assert str(e.value).startswith(f"{loop}: a symbolic link loop") and "\n" not in str(e.value)
