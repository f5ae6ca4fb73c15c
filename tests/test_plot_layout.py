"""Every plot sizes itself from its content: no label or title outside the figure or on another panel
(constrained layout, a grid when one row would squeeze the panels); and a matplotlib user's first move
works: with pyplot imported, `dp.spectrum(res); plt.savefig(...)` writes the figure, not a blank page."""
import json
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import deltaspec.plots as dp  # noqa: E402
from test_compare import run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TRAJ = json.loads((ROOT / "figures" / "trajectory.json").read_text())["trajectories"]


@pytest.fixture(scope="module")
def runs():
    return {"LoRA": run("lora"), "MultiLoRA": run("multilora")}


PLOTS = {
    "hist": lambda r: dp.hist(r, modules=["k_proj", "v_proj"], title="a title over both panels"),
    "spectrum": lambda r: dp.spectrum(r),
    "energy": lambda r: dp.energy(r),
    "heatmap": lambda r: dp.heatmap(r, "normalized_entropy", title="normalized entropy per layer and module"),
    "rank_needed": lambda r: dp.rank_needed({"LoRA": r["LoRA"]}),
    "trajectory": lambda r: dp.trajectory(TRAJ, title="k_proj and v_proj of the samples (mean over 4 layers each)"),
    "trajectory-2": lambda r: dp.trajectory(TRAJ, metrics=["top1_energy", "effective_rank"]),
}


def boxes_overlap(a, b, tol=0.5) -> bool:
    return a.x0 < b.x1 - tol and b.x0 < a.x1 - tol and a.y0 < b.y1 - tol and b.y0 < a.y1 - tol


@pytest.mark.parametrize("name", list(PLOTS))
def test_labels_and_titles_stay_inside_and_apart(runs, name):
    out = PLOTS[name](runs)
    axes = list(np.atleast_1d(out))
    fig = axes[0].figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    with dp.paper_style():  # as dp.save draws it
        canvas.draw()
    r = canvas.get_renderer()
    frame = fig.bbox
    drawn = [a.get_tightbbox(r) for a in fig.axes] + [x.get_window_extent(r) for x in fig.legends]
    drawn += [fig._suptitle.get_window_extent(r)] if fig._suptitle is not None else []
    for bb in drawn:  # tick labels, axis labels, titles, colour bars, legends
        assert frame.x0 - 1 <= bb.x0 and bb.x1 <= frame.x1 + 1 and frame.y0 - 1 <= bb.y0 and bb.y1 <= frame.y1 + 1, \
            f"{name}: something drawn outside the figure ({bb} vs {frame})"
    panels = [a.get_tightbbox(r) for a in fig.axes if a.get_label() != "<colorbar>"]
    for i in range(len(panels)):
        for j in range(i + 1, len(panels)):
            assert not boxes_overlap(panels[i], panels[j]), f"{name}: panels {i} and {j} overlap"
    if fig._suptitle is not None:
        st = fig._suptitle.get_window_extent(r)
        assert not any(boxes_overlap(st, p) for p in panels), f"{name}: the title overlaps a panel"


def test_four_trajectory_panels_go_on_a_grid():
    axes = dp.trajectory(TRAJ)
    pos = {(round(a.get_position().x0, 2), round(a.get_position().y0, 2)) for a in axes}
    assert len({x for x, _ in pos}) == 2 and len({y for _, y in pos}) == 2


def test_pyplot_users_savefig_writes_the_figure(tmp_path):
    code = f"""
import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
import matplotlib; matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import deltaspec.plots as dp
from test_compare import run
ax = dp.spectrum({{"LoRA": run("lora")}})
assert plt.gcf() is ax.figure
plt.savefig({str(tmp_path / 'x.png')!r})
plt.figure(); plt.savefig({str(tmp_path / 'blank.png')!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    img = matplotlib.image.imread(tmp_path / "x.png")[..., :3]
    blank = matplotlib.image.imread(tmp_path / "blank.png")[..., :3]
    drawn = np.any(img < 0.9, axis=-1).mean()
    assert np.any(blank < 0.9, axis=-1).mean() == 0 and drawn > 0.02  # lines, ticks and labels, not a blank page


def test_trajectory_title_says_what_each_point_averages(runs):
    lora = runs["LoRA"]
    axes = dp.trajectory({"LoRA": [(10, lora), (20, lora)]}, modules=["k_proj", "v_proj"])
    n = sum(r.module in ("k_proj", "v_proj") for r in lora.layers)
    assert axes[0].figure.get_suptitle() == f"each point: mean over {n} layers (k_proj, v_proj) of one checkpoint"
    assert dp.spectrum(lora).get_title().endswith(f"median over {len(lora.layers)} layers (IQR band)")
