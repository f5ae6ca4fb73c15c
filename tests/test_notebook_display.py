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
        assert name == "post_run_cell"
        self.hooks.append(fn)


class FakePngFormatter:
    """IPython's image/png formatter: knows Figures once pyplot's inline backend registered them."""

    def __init__(self):
        self.figures = False

    def lookup(self, obj):
        if self.figures and isinstance(obj, Figure):
            return lambda fig: b""
        raise KeyError(type(obj))


class FakeKernelShell:
    kernel = object()

    def __init__(self):
        self.events = FakeEvents()
        self.png = FakePngFormatter()
        self.display_formatter = type("DF", (), {"formatters": {"image/png": self.png}})()

    def end_of_cell(self, result=None):
        for fn in self.events.hooks:
            fn(type("ExecutionResult", (), {"result": result})())


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


def test_a_figure_ipython_already_shows_is_not_shown_twice(kernel, runs):
    """A cell ending in `axes[0].figure`: with pyplot imported IPython shows the figure as the cell's
    result, so it is not shown again; without a PNG formatter (no pyplot) it is shown once by us."""
    shell, shown = kernel
    fig = dp.hist(runs)[0].figure
    shell.png.figures = True
    shell.end_of_cell(result=fig)
    assert shown == []
    fig = dp.hist(runs)[0].figure
    shell.png.figures = False
    shell.end_of_cell(result=fig)
    assert len(shown) == 1


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
