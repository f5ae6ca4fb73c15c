"""Execute examples/quickstart.ipynb in a fresh kernel of this Python and save it with its outputs
(so that a reader on GitHub sees the tables and figures). Run from anywhere:

    python examples/execute_quickstart.py

Outputs are deterministic (tables from the bundled samples, PNGs written without dates), so re-running
it without code changes leaves the file unchanged. tests/test_notebook.py checks that.
"""
import json
import sys
import tempfile
from pathlib import Path

import nbclient
import nbformat

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "quickstart.ipynb"


def execute(path=NOTEBOOK):
    """The notebook, executed (a NotebookNode); cell metadata keeps no timings."""
    import os

    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "kernels" / "deltaspec-run"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
                                                                "{connection_file}"], "display_name": "deltaspec",
                                                       "language": "python"}))
        old = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = tmp
        try:
            nb = nbformat.read(path, as_version=4)
            kernelspec = nb.metadata.get("kernelspec")
            nbclient.NotebookClient(nb, timeout=300, kernel_name="deltaspec-run", record_timing=False,
                                    resources={"metadata": {"path": str(HERE)}}).execute()
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old
    nb.metadata = {"kernelspec": kernelspec, "language_info": {"name": "python"}} if kernelspec else nb.metadata
    return nb


if __name__ == "__main__":
    nbformat.write(execute(), NOTEBOOK)
    print(f"wrote {NOTEBOOK}")
