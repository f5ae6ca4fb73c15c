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


def test_thirty_layers_stay_readable():
    """SmolLM2's 30 layers (the shipped heads JSON): no cell values squeezed into 7-point-wide cells and
    no layer labels touching; the 4-layer samples keep their values in the cells."""
    import itertools
    import json

    data = json.loads((S.parent / "figures" / "smollm2_data" / "heads_s0.json").read_text())
    axes = dp.heads(ds.HeadsResult.from_dict(data), modules=["k_proj", "v_proj"], size="double")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = axes[0].figure
    FigureCanvasAgg(fig).draw()
    r = fig.canvas.get_renderer()
    for a in axes:
        assert not a.texts
        labels = [t for t in a.get_xticklabels() if t.get_text()]
        assert labels[0].get_text() == "0" and len(labels) >= 5
        boxes = [t.get_window_extent(r) for t in labels]
        assert not any(b1.overlaps(b2) for b1, b2 in itertools.combinations(boxes, 2))
    small = dp.heads(ds.heads(S / "multilora", device="cpu", progress=False), modules=["k_proj"])
    assert len(small.texts) == 16 and [t.get_text() for t in small.get_xticklabels()] == ["0", "1", "2", "3"]
