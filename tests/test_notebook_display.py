"""Plots show inline under a Jupyter kernel (at the end of the cell, after the user's own changes),
touch no pyplot state anywhere, and saved files stay byte-identical."""
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import deltaspec.plots as dp  # noqa: E402
from deltaspec.plots import notebook  # noqa: E402
from test_compare import run  # noqa: E402


@pytest.fixture(scope="module")
def runs():
    return {"LoRA": run("lora"), "FT": run("full")}


def test_outside_notebooks_no_pyplot_and_no_ipython():
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from test_compare import run; import deltaspec.plots as dp; "
            "ax = dp.spectrum({'LoRA': run('lora')}); dp.hist({'LoRA': run('lora')}); "
            "print('matplotlib.pyplot' in sys.modules, 'IPython' in sys.modules, len(notebook_pending()))"
            .replace("notebook_pending()", "__import__('deltaspec.plots.notebook', fromlist=['x'])._pending"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "0"]


class FakeEvents:
    def __init__(self):
        self.hooks = []

    def register(self, name, fn):
        assert name == "post_execute"
        self.hooks.append(fn)


class FakeKernelShell:
    kernel = object()

    def __init__(self):
        self.events = FakeEvents()

    def end_of_cell(self):
        for fn in self.events.hooks:
            fn()


@pytest.fixture
def kernel(monkeypatch):
    display = pytest.importorskip("IPython.display")
    shell, shown = FakeKernelShell(), []
    monkeypatch.setattr(notebook, "kernel_shell", lambda: shell)
    monkeypatch.setattr(notebook, "_hooked", set())
    monkeypatch.setattr(display, "display", lambda obj: shown.append(obj))
    notebook._pending.clear()
    yield shell, shown
    notebook._pending.clear()
    dp.inline(True)


def test_own_figures_show_when_the_cell_ends(kernel, runs):
    shell, shown = kernel
    axes = dp.hist(runs)
    ax = dp.spectrum(runs)
    assert shown == []  # nothing yet: the cell may still change the figure
    ax.set_title("changed by the user")
    shell.end_of_cell()
    assert len(shown) == 2 and len(shell.events.hooks) == 1  # one hook, however many plots
    pngs = [img.data for img in shown]
    assert all(p.startswith(b"\x89PNG") for p in pngs)
    assert pngs[1] == dp.render(ax.figure, "png", notebook.DPI)  # drawn after the change
    assert shown[0].width == round(axes[0].figure.get_figwidth() * 100)
    shell.end_of_cell()
    assert len(shown) == 2  # shown once


def test_callers_axes_and_inline_off_are_left_alone(kernel, runs):
    shell, shown = kernel
    fig = Figure()
    dp.energy(runs, ax=fig.add_subplot())
    dp.inline(False)
    dp.spectrum(runs)
    shell.end_of_cell()
    assert shown == []


def test_saved_bytes_do_not_change_when_a_figure_was_displayed(kernel, runs, tmp_path):
    shell, _ = kernel
    axes = dp.hist(runs)
    dp.save(axes, tmp_path / "a.pdf")
    dp.save(axes, tmp_path / "a.png")
    shell.end_of_cell()
    dp.save(axes, tmp_path / "b.pdf")
    dp.save(axes, tmp_path / "b.png")
    assert (tmp_path / "a.pdf").read_bytes() == (tmp_path / "b.pdf").read_bytes()
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
