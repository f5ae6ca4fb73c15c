"""Figures a reviewer would accept, checked on what is drawn: densities per log-bin, no σ_1/σ_1 bar,
methods apart in greyscale, no colliding tick labels at single-column width, heatmaps on one scale
with one precision and readable labels, and no default titles over the caller's own subplots."""
import itertools

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import StepPatch  # noqa: E402

import deltaspec.plots as dp  # noqa: E402
from test_compare import run  # noqa: E402

LABELS = ["LoRA", "MultiLoRA", "FT"]


@pytest.fixture(scope="module")
def runs():
    return dict(zip(LABELS, [run("lora"), run("multilora"), run("full")]))


def steps(ax):
    return [p for p in ax.patches if isinstance(p, StepPatch) and not p.get_label().startswith("_")]


@pytest.mark.parametrize("log_x", [True, False])
def test_density_has_unit_area_per_drawn_bin_width(runs, log_x):
    (ax,) = dp.hist(runs, modules="v_proj", top="all", density=True, log_x=log_x, normalize=False)
    h = dp.histogram_data(runs, "v_proj", top="all", log_x=log_x, normalize=False)
    for p, lab in zip(steps(ax), LABELS):
        v, edges = p.get_data().values, p.get_data().edges
        width = np.diff(np.log10(edges)) if log_x else np.diff(edges)
        assert (v * width).sum() == pytest.approx(1.0)
        x = np.log10(h.values[lab]) if log_x else h.values[lab]
        ref, _ = np.histogram(x, bins=np.log10(edges) if log_x else edges, density=True)  # independent reference
        np.testing.assert_allclose(v, ref, rtol=1e-12)
    assert ax.get_ylabel() == ("density per decade" if log_x else "density")
    if log_x:  # geometric bins: per-decade densities, not counts / (linear width) that blow up the smallest bin
        assert max(p.get_data().values.max() for p in steps(ax)) < 10


def test_normalised_histogram_leaves_sigma_1_out(runs):
    h = dp.histogram_data(runs, "k_proj")
    for lab in LABELS:
        assert len(h.values[lab]) == (h.top - 1) * h.n_layers and h.values[lab].max() < 1.0
        want = np.concatenate([np.sort(r.singular_values)[::-1][1:h.top] / r.singular_values.max()
                               for r in runs[lab].layers if r.module == "k_proj"])
        np.testing.assert_allclose(np.sort(h.values[lab]), np.sort(want))
    raw = dp.histogram_data(runs, "k_proj", normalize=False)
    assert len(raw.values["FT"]) == raw.top * raw.n_layers  # raw σ keep σ_1: no artefact there
    axes = dp.hist(runs, modules="k_proj")
    assert "i = 2…8" in axes[0].get_xlabel()


def test_methods_differ_by_line_style_without_blended_fills(runs):
    for ax in dp.hist(runs):
        ps = [p for p in ax.patches if isinstance(p, StepPatch)]
        assert not any(p.get_fill() for p in ps)  # no translucent fills that blend into grey/brown
        assert len({str(p.get_linestyle()) for p in steps(ax)}) == 3
    for ax in (dp.spectrum(runs), dp.energy(runs)):
        lines = [l for l in ax.get_lines() if not l.get_label().startswith("_")]
        assert len({l.get_linestyle() for l in lines}) == 3


def overlaps(boxes) -> bool:
    return any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))


@pytest.mark.parametrize("kw", [dict(size="single"), dict(size="single", log_x=True, top="all"), dict(),
                                dict(size="single", density=True)])
def test_tick_labels_never_collide(runs, kw):
    axes = dp.hist(runs, **kw)
    fig = axes[0].figure
    FigureCanvasAgg(fig).draw()
    r = fig.canvas.get_renderer()
    for a in axes:
        for axis in (a.xaxis, a.yaxis):
            boxes = [t.get_window_extent(r) for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]
            assert len(boxes) >= 2 and not overlaps(boxes), (kw, [t.get_text() for t in axis.get_ticklabels()])
    assert not overlaps([a.get_window_extent(r) for a in axes])


def test_heatmaps_share_one_scale_one_precision_and_a_readable_label(runs):
    axes = dp.heatmap(runs, "top1_energy")
    ims = [a.get_images()[0] for a in axes]
    vals = np.concatenate([np.ravel(im.get_array().compressed()) for im in ims])
    assert {im.get_clim() for im in ims} == {(vals.min(), vals.max())}
    fig = axes[0].figure
    assert len(fig.axes) == 4  # three panels and ONE colour bar
    assert fig.axes[3].get_ylabel() == "top-1 energy share"
    assert [a.get_title() for a in axes] == LABELS
    decimals = {len(t.get_text().split(".")[1]) for a in axes for t in a.texts}
    assert decimals == {3}  # 0.790 next to 0.815, never 0.79
    axes = dp.heatmap(runs, vmin=0, vmax=1)
    assert {a.get_images()[0].get_clim() for a in axes} == {(0, 1)}
    one = dp.heatmap(runs["FT"], "effective_rank")
    assert one.get_title() == "" and one.figure.axes[1].get_ylabel() == "effective rank"
    assert dp.heatmap(runs["FT"], title="FT").get_title() == "FT"


def test_no_default_titles_on_the_callers_subplots(runs):
    fig = Figure()
    axes = fig.subplots(1, 4)
    dp.spectrum(runs, ax=axes[0])
    dp.energy(runs, ax=axes[1])
    dp.heatmap(runs["FT"], ax=axes[2], colorbar=False)
    dp.similarity(np.eye(4), ax=axes[3])
    assert [a.get_title() for a in axes] == ["", "", "", ""]
    assert dp.spectrum(runs, ax=fig.subplots(1, 1), title="mine").get_title() == "mine"


def test_cli_heatmap_of_several_inputs_with_a_fixed_scale(tmp_path, monkeypatch):
    from pathlib import Path

    from deltaspec_cli.main import cli

    drawn = []
    real = dp.heatmap
    monkeypatch.setattr(dp, "heatmap", lambda *a, **k: drawn.append(real(*a, **k)) or drawn[-1])
    S = Path(__file__).resolve().parent.parent / "sample_checkpoints"
    out = tmp_path / "h.png"
    r = CliRunner().invoke(cli, ["plot", "heatmap", str(S / "lora"), str(S / "multilora"), "--labels", "LoRA,ML",
                                 "--vmin", "0.3", "--vmax", "0.6", "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    (axes,) = drawn
    assert [a.get_title() for a in axes] == ["LoRA", "ML"]
    assert {a.get_images()[0].get_clim() for a in axes} == {(0.3, 0.6)} and out.stat().st_size > 1000
