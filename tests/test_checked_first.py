"""Work is not thrown away and mistakes are caught before it (issue 20, items 1-3).

- compare/subspace/plot read and solve only the layers every input has (chosen from headers); report
  opens every input before the first SVD (its per-input sections use every layer);
- every option and every input's needs are checked before the first SVD (a spy on the analysis
  entry point and on tensor loading fails the test if any layer is touched first);
- a mistyped local path is "no such file or directory (did you mean …?)", never a Hub id, and is
  caught before torch is imported; a mistyped command gets the closest command name.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import deltaspec.analysis
from deltaspec.io.files import hub
from deltaspec.io.files.paths import looks_local, missing_message, nearest
from deltaspec.updates import LayerUpdate
from deltaspec_cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
S = ROOT / "sample_checkpoints"
LORA, FULL, BASE, MULTI = (str(S / n) for n in ("lora", "full", "base", "multilora"))


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def loads(monkeypatch):
    """The names of the layers whose tensors were loaded (LayerUpdate.load), in order."""
    seen = []
    real = LayerUpdate.load

    def spy(self):
        seen.append(self.name)
        return real(self)

    monkeypatch.setattr(LayerUpdate, "load", spy)
    return seen


@pytest.fixture
def no_work(monkeypatch):
    """Any tensor load or analysis fails the test: the error must come first."""
    def boom(*a, **k):
        raise AssertionError("a layer was loaded or analysed before the validation error")

    monkeypatch.setattr(LayerUpdate, "load", boom)
    monkeypatch.setattr(deltaspec.analysis, "analyze_layers", boom)


def test_compare_reads_only_the_shared_layers(loads):
    r = run("compare", LORA, FULL, "--base", BASE, "--format", "json", "-q")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    shared = out["layers"]
    assert len(shared) == 16 and {n.rsplit(".", 1)[1] for n in shared} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert sorted(loads) == sorted(shared * 2)  # each shared layer once per input; no MLP layer of the full FT
    assert sorted(out["dropped"]["full"]) == sorted(n for n in out["dropped"]["full"] if "mlp" in n)
    assert len(out["dropped"]["full"]) == 12  # still reported as left out


def test_compare_numbers_unchanged_by_reading_less():
    """The shared layers' metrics equal those of analysing each input in full and aligning afterwards."""
    import deltaspec as ds

    r = run("compare", LORA, FULL, "--base", BASE, "--format", "json", "-q", "--per-layer")
    assert r.exit_code == 0, r.output
    full = ds.analyze(ds.load(FULL, base=BASE), progress=False)
    want = ds.compare([ds.analyze(LORA, progress=False), full], ["lora", "full"], per_layer=True).to_dict()
    got = json.loads(r.stdout)
    for g in want["groups"]:
        for m in ("top1_energy", "effective_rank"):
            assert got["groups"][g]["metrics"][m] == pytest.approx(want["groups"][g]["metrics"][m], rel=1e-6)


def test_subspace_and_plot_read_only_the_shared_layers(loads, tmp_path):
    r = run("subspace", LORA, FULL, "--base", BASE, "--format", "json", "-q", "--layers", "0")
    assert r.exit_code == 0, r.output
    assert loads and all("mlp" not in n for n in loads)
    loads.clear()
    r = run("plot", "spectrum", LORA, FULL, "--base", BASE, "-q", "-o", tmp_path / "s.png", "--dpi", "20")
    assert r.exit_code == 0, r.output
    assert len(loads) == 32 and all("mlp" not in n for n in loads)


@pytest.mark.parametrize("argv, words", [
    (["compare", LORA, FULL, "--base", BASE, "--metrics", "top1_energi"], ["did you mean top1_energy?"]),
    (["compare", LORA, FULL], ["full", "--base"]),  # the second input's need, before the first is analysed
    (["compare", LORA, FULL, "--base", BASE, "-o", "/proc/no/such/dir/x.json"], ["x.json"]),
    (["compare", LORA, FULL, "--base", BASE, "--energy-k", "0"], ["--energy-k"]),
    (["compare", LORA, MULTI, "--modules", "q_proj", "--layers", "9"], ["layers", "available"]),
    (["analyze", LORA, "--metrics", "efective_rank"], ["did you mean effective_rank?"]),
    (["plot", "heatmap", LORA, FULL, "--base", BASE, "--metric", "stable_rnk", "-o", "h.pdf"],
     ["did you mean stable_rank?"]),
    (["plot", "trajectory", LORA, "--metrics", "top1_energi", "-o", "t.pdf"], ["did you mean top1_energy?"]),
    (["subspace", LORA, FULL, "--base", BASE, "--modules", "zz_proj"], ["zz_proj", "available"]),
    (["report", LORA, FULL, "-o", "r.html"], ["full", "--base"]),
    (["compare", LORA, "sample_checkpoints_typo/lora"], ["no such file or directory"]),
])
def test_validation_errors_come_before_any_svd(no_work, argv, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run(*argv)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "AssertionError" not in repr(r.exception)
    for w in words:
        assert w in r.output, (w, r.output)


def test_a_local_typo_is_never_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "ckpts" / "lora").mkdir(parents=True)
    (tmp_path / "ckpts" / "full").mkdir()
    monkeypatch.chdir(tmp_path)
    assert looks_local("ckpts/lroa") and not hub.is_hub_id("ckpts/lroa")
    assert hub.is_hub_id("org/model") and not looks_local("org/model")  # `org/` does not exist here
    assert all(looks_local(p) for p in ("./x", "../x/y", "/x/y", "~/x"))
    assert nearest("ckpts/lroa") == os.path.join("ckpts", "lora")
    assert nearest("ckpts/zzzzzz") is None
    assert missing_message("ckpts/lroa") == "ckpts/lroa: no such file or directory (did you mean ckpts/lora?)"
    monkeypatch.setattr(hub, "download", lambda *a: pytest.fail("went to the Hub"))
    for argv in (["analyze", "ckpts/lroa"], ["info", "ckpts/lroa"], ["analyze", "ckpts/full", "--base", "ckpts/lroa"],
                 ["compare", "ckpts/lora", "ckpts/lroa"], ["suggest-rank", "ckpts/lroa"]):
        r = run(*argv)
        assert r.exit_code == 2, (argv, r.output)
        assert r.output.startswith("error: ckpts/lroa: no such file or directory"), (argv, r.output)
        assert "did you mean ckpts/lora?" in r.output and r.output.count("\n") == 1, (argv, r.output)


def test_validation_errors_come_before_torch_is_imported():
    """Typos in paths and names, and a missing --base, fail from the headers alone: torch (~1.5 s to import)
    is never loaded for them."""
    cases = [["analyze", "sample_checkpoints/lroa"], ["compare", "sample_checkpoints/lora", "sample_checkpoints/lroa"],
             ["plot", "hist", "sample_checkpoints/lroa", "-o", "x.pdf"],
             ["analyze", "sample_checkpoints/full", "--base", "sample_checkpoints/bsae"],
             ["analyze", "sample_checkpoints/lora", "--metrics", "top1_energi"],
             ["compare", "sample_checkpoints/lora", "sample_checkpoints/full", "--base", "sample_checkpoints/base",
              "--metrics", "top1_energi"],
             ["compare", "sample_checkpoints/lora", "sample_checkpoints/full"],
             ["plot", "heatmap", "sample_checkpoints/lora", "--metric", "top1_energi", "-o", "x.pdf"]]
    code = ("import sys\nfrom deltaspec_cli.main import cli\nout = []\n"
            f"for args in {cases!r}:\n"
            "    try:\n        cli.main(args, prog_name='deltaspec')\n"
            "    except SystemExit as e:\n        out.append(e.code)\n"
            "print(out, 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.stdout.split("\n")[0] == f"{[2] * len(cases)} False", r.stdout + r.stderr
    assert r.stderr.count("did you mean sample_checkpoints/lora?") == 3
    assert "did you mean sample_checkpoints/base?" in r.stderr
    assert r.stderr.count("did you mean top1_energy?") == 3 and "needs the base weights" in r.stderr


def test_a_mistyped_command_gets_the_closest_name():
    r = run("anlyze", LORA)
    assert r.exit_code == 2 and "did you mean analyze?" in r.output
    r = run("plot", "hsit", LORA)
    assert r.exit_code == 2 and "did you mean hist?" in r.output
    r = run("zzzzzz")
    assert r.exit_code == 2 and "did you mean" not in r.output
