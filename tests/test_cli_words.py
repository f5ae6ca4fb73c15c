"""The CLI speaks in flags: no warning, error or note it prints or writes names a Python keyword
(`include_embeddings=True`, `base=`). Library messages name Python arguments; `cli_words` is the one
translation, applied to everything the CLI emits. Checked two ways: every message string in the source,
and the output of representative commands in every format."""
import ast
import inspect
import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import deltaspec
from deltaspec.io import load
from deltaspec_cli.common import CLI_FLAGS, cli_words
from deltaspec_cli.main import cli

ROOT = Path(__file__).resolve().parent.parent


def python_keywords() -> set:
    """Every parameter name of the public Python API (deltaspec.* and deltaspec.io.load)."""
    names = set(inspect.signature(load).parameters)
    for n in dir(deltaspec):
        obj = getattr(deltaspec, n)
        if callable(obj) and not n.startswith("_"):
            try:
                names |= set(inspect.signature(obj).parameters)
            except (TypeError, ValueError):
                pass
    return names


KEYWORDS = python_keywords()
KW_RE = re.compile(r"(?<![\w./-])(" + "|".join(sorted(KEYWORDS, key=len, reverse=True)) + r")=")


def message_strings():
    """(file:line, text) of every string constant in deltaspec/ and cli/ that is not a docstring."""
    for f in sorted([*ROOT.joinpath("deltaspec").rglob("*.py"), *ROOT.joinpath("cli").rglob("*.py")]):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and ast.get_docstring(n, clean=False) is not None}
        reprs = {id(c) for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "__repr__"
                 for c in ast.walk(n)}  # object reprs show Python: not messages
        for n in ast.walk(tree):
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs | reprs \
                    and not re.search(r"<\w+ [^>]*=", n.value):  # nor are HTML attributes
                yield f"{f.relative_to(ROOT)}:{n.lineno}", n.value


def test_every_python_keyword_in_a_message_has_cli_words():
    assert {"base", "include_embeddings", "lora_alpha", "initial"} <= KEYWORDS
    found, left = set(), []
    for where, text in message_strings():
        for m in KW_RE.finditer(text):
            found.add(m.group(1))
            if KW_RE.search(cli_words(text)):
                left.append(f"{where}: {text!r}")
    assert {"base", "include_embeddings"} <= found  # the scan sees the messages
    assert not left, "messages whose Python keywords cli_words cannot translate (add them to CLI_FLAGS):\n" + \
        "\n".join(left)
    assert found <= set(CLI_FLAGS)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A PEFT LoRA with an embedding update (skipped: 'pass include_embeddings=True') and a q update."""
    d = tmp_path_factory.mktemp("a")
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                                                       "target_modules": ["q_proj", "embed_tokens"]}))
    g = torch.Generator().manual_seed(0)
    save_file({"base_model.model.model.layers.0.q_proj.lora_A.weight": torch.randn(2, 6, generator=g),
               "base_model.model.model.layers.0.q_proj.lora_B.weight": torch.randn(5, 2, generator=g),
               "base_model.model.model.embed_tokens.lora_embedding_A": torch.randn(2, 9, generator=g),
               "base_model.model.model.embed_tokens.lora_embedding_B": torch.randn(4, 2, generator=g)},
              d / "adapter_model.safetensors")
    return d


def _no_python_words(text: str) -> None:
    bad = [m.group(0) for m in KW_RE.finditer(text)]
    assert not bad, (bad, text)


@pytest.mark.parametrize("argv", [["analyze", "{a}", "-q"], ["analyze", "{a}", "-q", "--format", "json"],
                                  ["analyze", "{a}", "-q", "--format", "csv"], ["info", "{a}"],
                                  ["info", "{a}", "--format", "json"],
                                  ["compare", "{a}", "{a}", "-q", "--labels", "x,y", "--format", "json"]])
def test_warnings_in_every_format_name_flags(adapter, argv):
    r = CliRunner().invoke(cli, [x.format(a=adapter) for x in argv])
    assert r.exit_code == 0, r.output
    assert "--include-embeddings" in r.output  # the warning is there, in flag spelling
    _no_python_words(r.output)


def test_errors_name_flags(tmp_path, adapter):
    mtl = tmp_path / "final_checkpoint.pt"
    torch.save({"q.lora_A": torch.zeros(1, 2, 3), "q.lora_B": torch.zeros(1, 4, 2), "q.lora_scaling": torch.zeros(1)}, mtl)
    r = CliRunner().invoke(cli, ["analyze", str(mtl), "-q"])
    assert r.exit_code == 2 and "--lora-alpha" in r.output, r.output
    _no_python_words(r.output)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    dora = tmp_path / "dora"
    dora.mkdir()
    (dora / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    save_file({"base_model.model.q.lora_A.weight": torch.ones(2, 6), "base_model.model.q.lora_B.weight": torch.ones(5, 2),
               "base_model.model.q.lora_magnitude_vector": torch.ones(5)}, dora / "adapter_model.safetensors")
    r = CliRunner().invoke(cli, ["analyze", str(dora), "-q"])
    assert r.exit_code == 2 and "--base" in r.output, r.output
    _no_python_words(r.output)
