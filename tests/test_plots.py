"""Every plot kind rendered with Agg into temp files; figure objects inspected; deterministic bytes."""
import matplotlib

matplotlib.use("Agg")

import matplotlib as mpl  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import StepPatch  # noqa: E402

import deltaspec as ds  # noqa: E402
import deltaspec.plots as dp  # noqa: E402
from deltaspec.errors import DeltaspecError  # noqa: E402
from test_compare import run  # noqa: E402

LABELS = ["LoRA", "MultiLoRA", "FT"]


@pytest.fixture(scope="module")
def runs():
    return dict(zip(LABELS, [run("lora"), run("multilora"), run("full")]))


def outlines(ax):
    return [p for p in ax.patches if isinstance(p, StepPatch) and not p.get_label().startswith("_")]


def test_hist_is_figure_2(runs):
    axes = dp.hist(runs, modules=["k_proj", "v_proj"])
    fig = axes[0].figure
    assert len(axes) == 2 and len(fig.axes) == 2
    assert fig.get_size_inches()[0] == pytest.approx(dp.DOUBLE_COLUMN)
    assert [a.get_title() for a in axes] == ["k_proj (2 layers)", "v_proj (2 layers)"]
    for a, module in zip(axes, ["k_proj", "v_proj"]):
        steps = outlines(a)
        assert [p.get_label() for p in steps] == LABELS  # one histogram per method
        edges = [p.get_data().edges for p in steps]
        assert all(np.array_equal(e, edges[0]) for e in edges)  # bins shared
        h = dp.histogram_data(runs, module)
        assert np.array_equal(edges[0], h.edges) and h.top == 8
        for p, lab in zip(steps, LABELS):
            assert p.get_data().values.sum() == 7 * 2  # σ_2..σ_8 (/σ_1) of each of 2 layers, for every method
    assert "σ" in fig.get_supxlabel() and "i = 2…8" in fig.get_supxlabel()  # one x label for both panels
    assert axes[0].get_ylabel() == "count"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == LABELS
    # raw σ, log counts, all values: bins still shared, y log
    axes = dp.hist(runs, modules="v_proj", normalize=False, log_counts=True, top="all", density=True)
    assert axes[0].get_yscale() == "log" and len(outlines(axes[0])) == 3
    h = dp.histogram_data(runs, "v_proj", top="all", normalize=False)
    assert {k: len(v) for k, v in h.values.items()} == {"LoRA": 16, "MultiLoRA": 16, "FT": 64}


def test_spectrum_and_energy_one_line_per_method(runs):
    ax = dp.spectrum(runs, modules=["q_proj"])
    lines = [l for l in ax.get_lines() if not l.get_label().startswith("_")]
    assert [l.get_label() for l in lines] == LABELS and ax.get_yscale() == "log"
    assert [len(l.get_xdata()) for l in lines] == [8, 8, 32]  # factored spectra end at their rank
    assert lines[0].get_ydata()[0] == pytest.approx(1.0)  # σ_1/σ_1
    ax = dp.energy(runs, mark=[8])
    lines = [l for l in ax.get_lines() if not l.get_label().startswith("_")]
    assert [l.get_label() for l in lines] == LABELS and ax.get_xscale() == "log"
    for l in lines:
        y = l.get_ydata()
        assert len(y) == 32 and y[-1] == pytest.approx(1.0) and (np.diff(y) >= -1e-12).all()
    assert lines[0].get_ydata()[7] == pytest.approx(1.0)  # rank 8 holds all the energy at k = 8
    assert ax.get_ylabel() == "cumulative energy share"


def test_heatmap_layer_by_module(runs):
    ax = dp.heatmap(runs["FT"], "normalized_entropy")
    (im,) = ax.get_images()
    assert im.get_array().shape == (2, 4)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert ax.get_ylabel() == "layer" and len(ax.figure.axes) == 2  # + colorbar
    assert ax.figure.axes[1].get_ylabel() == "normalized entropy"
    assert len(ax.texts) == 8
    with pytest.raises(DeltaspecError, match="unknown metric"):
        dp.heatmap(runs["FT"], "nope")
    assert len(dp.heatmap(runs)) == 3  # one panel per input (tests/test_plot_fixes.py)


def test_similarity_matrix():
    a = ds.analyze(__import__("test_compare").synth("lora"), device="cpu", vectors=True, progress=False)
    b = ds.analyze(__import__("test_compare").synth("lora", seed=1), device="cpu", vectors=True, progress=False)
    same = dp.mean_similarity({"A": a, "A2": a}, modules="k_proj", k=4)
    assert same.shape == (4, 4) and np.allclose(np.diag(same), 1.0)
    grid = dp.mean_similarity({"A": a, "B": b}, k=6)
    ax = dp.similarity(grid, labels=["A", "B"])
    (im,) = ax.get_images()
    assert im.get_array().shape == (6, 6) and im.get_clim() == (0.0, 1.0)
    assert "top-i of A" in ax.get_ylabel() and "top-j of B" in ax.get_xlabel()
    with pytest.raises(DeltaspecError, match="singular vectors"):
        dp.mean_similarity({"A": run("lora"), "B": run("lora")})


def test_given_axes_are_used_and_returned(runs):
    fig = Figure()
    ax1, ax2 = fig.subplots(1, 2)
    assert dp.spectrum(runs, ax=ax1) is ax1 and dp.energy(runs, ax=ax2) is ax2
    axes = Figure().subplots(1, 2)
    assert list(dp.hist(runs, ax=axes)) == list(axes)


def test_files_written_and_deterministic(runs, tmp_path):
    before = dict(mpl.rcParams)
    for ext in ("pdf", "svg", "png"):
        paths = []
        for i in range(2):
            paths.append(dp.save(dp.hist(runs), tmp_path / f"fig{i}.{ext}", dpi=120))
        data = [p.read_bytes() for p in paths]
        assert len(data[0]) > 1000 and data[0] == data[1], ext
    assert (tmp_path / "fig0.pdf").read_bytes().startswith(b"%PDF") and b"/FontFile2" in (tmp_path / "fig0.pdf").read_bytes()
    svg = (tmp_path / "fig0.svg").read_text()
    assert "<dc:date>" not in svg and "<text" not in svg  # glyphs as paths: nothing depends on installed fonts
    assert (tmp_path / "fig0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"Software" not in (tmp_path / "fig0.png").read_bytes()
    for kind, fig in [("spectrum", dp.spectrum(runs)), ("energy", dp.energy(runs)), ("heat", dp.heatmap(runs["LoRA"]))]:
        assert dp.save(fig, tmp_path / f"{kind}.svg").stat().st_size > 1000
    with pytest.raises(DeltaspecError, match="unsupported"):
        dp.save(dp.energy(runs), tmp_path / "x.jpg")
    assert dict(mpl.rcParams) == before  # the paper style never leaks into global state


def test_saved_analysis_plots(runs, tmp_path):
    p = tmp_path / "lora.json"
    p.write_text(runs["LoRA"].to_json())
    back = ds.AnalysisResult.from_json(p)
    axes = dp.hist({"LoRA": back, "FT": runs["FT"]}, modules=["k_proj"])
    assert [s.get_label() for s in outlines(axes[0])] == ["LoRA", "FT"]
    with pytest.raises(DeltaspecError, match="no layers"):
        dp.hist(runs, modules=["gate_proj"])
