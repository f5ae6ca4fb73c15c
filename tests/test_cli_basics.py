"""CLI plumbing that needs no checkpoint: help, import hygiene, option parsing, output rules."""
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from deltaspec_cli.common import parse_layers
from deltaspec_cli.main import COMMANDS, cli
from deltaspec_cli.output import check_output, output_format
from deltaspec.errors import DeltaspecError


def test_import_deltaspec_pulls_in_neither_click_nor_matplotlib():
    code = "import sys, deltaspec; print('click' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_top_level_help_lists_every_command_without_importing_torch():
    code = ("import sys; from click.testing import CliRunner; from deltaspec_cli.main import cli; "
            "r = CliRunner().invoke(cli, ['--help']); print(r.exit_code, 'torch' in sys.modules); print(r.output)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    first, rest = out.split("\n", 1)
    assert first == "0 False"
    for name in COMMANDS:
        assert name in rest


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name):
    r = CliRunner().invoke(cli, [name, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.output


def test_parse_layers():
    assert parse_layers("0-3,8") == [0, 1, 2, 3, 8]
    assert parse_layers(None) is None
    with pytest.raises(click.BadParameter):
        parse_layers("a-b")


def test_output_format_from_extension():
    assert output_format(None, "x.json") == "json"
    assert output_format(None, "x.CSV") == "csv"
    assert output_format(None, None) == "table"
    assert output_format("csv", "x.json") == "csv"


def test_refuses_to_overwrite_input_files(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "adapter_model.safetensors").write_bytes(b"x")
    with pytest.raises(DeltaspecError, match="refusing"):
        check_output(str(ckpt / "adapter_model.safetensors"), [str(ckpt)])
    check_output(str(tmp_path / "out.json"), [str(ckpt)])  # elsewhere: fine
    with pytest.raises(DeltaspecError, match="never writes into its input paths"):
        check_output(str(ckpt / "new.json"), [str(ckpt)])  # a new file inside an input: refused too


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_one_line_error(tmp_path):
    r = CliRunner().invoke(cli, ["analyze", str(tmp_path), "--device", "cuda:0"], catch_exceptions=False)
    assert r.exit_code == 2
    assert r.output.startswith("error: device 'cuda:0' requested") and r.output.count("\n") == 1
