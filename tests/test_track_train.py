"""`deltaspec train --track-every`: the built-in trainer records the live analysis of its tracked steps,
equal to `analyze` of the checkpoints saved at the same steps; plot trajectory / compare read the file."""
import json

import pytest
from click.testing import CliRunner

import deltaspec as ds
from deltaspec.integrations import record
from deltaspec_cli.main import cli


def invoke(*args):
    r = CliRunner().invoke(cli, [*map(str, args)])
    assert r.exit_code == 0, r.output
    return r


def train(*args):
    return invoke("train", "--preset", "tiny", "--batch-size", "4", "-q", *args)


def same(a, b):
    assert [r.name for r in a.layers] == [r.name for r in b.layers]
    for x, y in zip(a.layers, b.layers):
        assert x.singular_values == pytest.approx(y.singular_values, rel=1e-5, abs=1e-6 * y.singular_values[0])
        for m in ("normalized_entropy", "effective_rank", "top1_energy", "frobenius_norm"):
            assert x.metrics[m] == pytest.approx(y.metrics[m], rel=1e-5)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    b = tmp_path_factory.mktemp("track") / "base"
    train("--method", "pretrain", "--out", b, "--steps", "1")
    return b


@pytest.mark.parametrize("method", ["multilora", "full"])
def test_track_every_equals_analyze_of_step_checkpoints(base, tmp_path, method):
    out = tmp_path / method
    train("--method", method, "--base", base, "--out", out, "--steps", "3", "--track-every", "2", "--save-every", "2",
          "--rank", "4", "--heads", "2", *(["--target-modules", "q_proj,v_proj"] if method == "full" else []))
    header, points = record.read(out / record.TRAJECTORY_FILE)
    assert [s for s, _ in points] == [2, 3] and header["run"] == method  # every 2nd step, and the last
    assert json.loads((out / "train_info.json").read_text())["track_every"] == 2
    kw = {"base": str(base), "modules": ["q_proj", "v_proj"]} if method == "full" else {}
    same(points[0][1], ds.analyze(str(out / "checkpoint-2"), progress=False, **kw))
    same(points[1][1], ds.analyze(str(out), progress=False, **kw))


def test_plot_and_compare_read_a_tracked_run(base, tmp_path):
    out = tmp_path / "lora"
    train("--method", "lora", "--base", base, "--out", out, "--steps", "4", "--track-every", "1", "--rank", "4")
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-0"]  # no step checkpoints (0: the initial adapter)
    r = invoke("plot", "trajectory", out, "--modules", "k_proj,v_proj", "-o", tmp_path / "t.png")
    assert "lora: 4 points, steps 1–4" in r.output and (tmp_path / "t.png").stat().st_size > 0
    invoke("plot", "trajectory", out / record.TRAJECTORY_FILE, "--metrics", "top1_energy", "-o", tmp_path / "u.png")
    r = invoke("compare", out / record.TRAJECTORY_FILE, out, "--labels", "tracked,final")
    assert "tracked" in r.output
    same(record.load_analysis(out / record.TRAJECTORY_FILE), ds.analyze(str(out), progress=False))
