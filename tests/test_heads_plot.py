"""`deltaspec.plots.heads` / `deltaspec plot heads`: the heads × layers heatmap of a MultiLoRA checkpoint."""
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import deltaspec as ds
import deltaspec.plots as dp
from deltaspec_cli.main import cli

S = Path(__file__).resolve().parent.parent / "sample_checkpoints"


@pytest.fixture(scope="module")
def result():
    return ds.heads(S / "multilora", device="cpu", progress=False)


def test_grid_holds_each_heads_share(result):
    data = dp.heads_data(result, "share", modules=["v_proj", "k_proj"])
    assert list(data) == ["v_proj", "k_proj"]
    grid, idx = data["k_proj"]
    assert idx == [0, 1, 2, 3] and grid.shape == (4, 4)
    assert np.allclose(grid.sum(axis=0), 1.0)  # shares of one layer add up to 1
    lay = result["model.layers.2.self_attn.k_proj"]
    assert np.allclose(grid[:, 2], np.diag(lay.inner) / np.trace(lay.inner))
    with pytest.raises(ds.DeltaspecError, match="not a per-head quantity"):
        dp.heads_data(result, "top1_energy")


def test_figure_is_deterministic_and_labelled(result, tmp_path):
    axes = dp.heads(result, "mean_abs_s", modules=["q_proj", "o_proj"])
    assert [a.get_title() for a in axes] == ["q_proj", "o_proj"] and axes[0].get_ylabel() == "head"
    dp.save(axes, tmp_path / "a.png", dpi=60)
    dp.save(dp.heads(result, "mean_abs_s", modules=["q_proj", "o_proj"]), tmp_path / "b.png", dpi=60)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_cli_plot_heads(tmp_path):
    out = tmp_path / "h.png"
    r = CliRunner().invoke(cli, ["plot", "heads", str(S / "multilora"), "--modules", "k_proj", "-o", str(out),
                                 "--dpi", "50", "-q"])
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:4] == b"\x89PNG"
    r = CliRunner().invoke(cli, ["plot", "heads", str(S / "lora"), "-o", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "has one head" in r.output and not (tmp_path / "x.png").exists()
