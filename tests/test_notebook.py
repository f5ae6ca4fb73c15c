"""examples/quickstart.ipynb: committed with its outputs (a reader on GitHub sees them), and it runs in a
real Jupyter kernel (nbclient) to the same outputs: objects show as HTML tables, Figure 2 shows inline as
a PNG. Skipped without the notebook test extras. `python examples/execute_quickstart.py` re-saves it."""
import json
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NOTEBOOK = EXAMPLES / "quickstart.ipynb"


def test_committed_notebook_ships_with_its_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["execution_count"] is not None for c in code)
    assert all(c["outputs"] for c in code[1:])  # every cell after the imports shows something
    assert "/work/" not in NOTEBOOK.read_text() and "execution" not in json.dumps([c["metadata"] for c in code])


def _shown(cells):
    """What a reader sees of each code cell: text and HTML outputs, and which cells show a PNG."""
    text = lambda t: "".join(t) if isinstance(t, list) else t  # the file stores multi-line strings as lists
    return [[(o.get("output_type"), text(o.get("text")), text((o.get("data") or {}).get("text/html")),
              "image/png" in (o.get("data") or {})) for o in c["outputs"]] for c in cells if c["cell_type"] == "code"]


@pytest.mark.slow
def test_notebook_runs_and_shows_tables_and_figures(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # A kernel spec for exactly this Python, so no other installed "python3" kernel is picked up.
    spec = tmp_path / "kernels" / "deltaspec-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
                                                            "{connection_file}"], "display_name": "deltaspec test",
                                                   "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    committed = _shown(json.loads(NOTEBOOK.read_text())["cells"])
    nbclient.NotebookClient(nb, timeout=300, kernel_name="deltaspec-test",
                            resources={"metadata": {"path": str(EXAMPLES)}}).execute()  # raises on any error
    assert _shown(nb.cells) == committed  # the shipped outputs are what the code gives (re-save if not)
    outputs = {i: c.outputs for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    by_source = {nb.cells[i].source.splitlines()[-1]: o for i, o in outputs.items()}
    html = [o for o in by_source["lora"] if "text/html" in o.get("data", {})]
    assert html and "<table>" in html[0]["data"]["text/html"] and "16 layers" in html[0]["data"]["text/html"]
    assert "<table>" in by_source["cmp"][0]["data"]["text/html"]
    fig2 = next(o for i, o in outputs.items() if "dp.hist" in nb.cells[i].source)
    pngs = [o for o in fig2 if o.output_type == "display_data" and "image/png" in o.data]
    assert len(pngs) == 1  # Figure 2 inline, once
    assert "| module | metric |" in next(o[0].text for i, o in outputs.items() if "to_markdown" in nb.cells[i].source)
