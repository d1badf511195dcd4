"""experiments/normalization_tour: the notebook is its jupytext script, and it runs headless in small mode.

The execution test starts a Jupyter kernel on this interpreter (a kernelspec written to a temporary
JUPYTER_PATH), runs every cell with ``BNJAX_NOTEBOOK_SMALL=1`` (about a minute on 2 CPU cores), and fails on
any cell error -- every gradient check in the notebook asserts its tolerance -- and, independently of those
asserts, on any printed ``check ... rel_error E tol T`` line with ``E > T``.
"""

import json
import os
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "normalization_tour.py"
NOTEBOOK = REPO / "experiments" / "normalization_tour.ipynb"
CHECK_LINE = re.compile(r"^check (?P<name>.+?)\s+rel_error (?P<err>\S+)\s+tol (?P<tol>\S+)", re.M)
# Gradient checks the notebook prints: batch norm and layer norm 9 each (3 inputs x 3 comparisons), the
# network 16 (8 parameters x 2), dropout 2.
NUM_CHECKS = 36


def _cells(nb):
    return [(c.cell_type, c.source) for c in nb.cells]


def test_notebook_is_the_script_without_outputs():
    jupytext = pytest.importorskip("jupytext")
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert _cells(nb) == _cells(jupytext.read(SCRIPT)), (
        "experiments/normalization_tour.ipynb is out of sync with its script; regenerate it with "
        "`jupytext --to ipynb experiments/normalization_tour.py`"
    )
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code), "strip the outputs"
    assert nb.metadata["jupytext"]["formats"] == "ipynb,py:percent"


def test_notebook_runs_headless_and_its_checks_pass(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    # A kernelspec that runs this interpreter, found first through JUPYTER_PATH (not whatever "python3" means
    # on this machine); the kernel inherits the environment below.
    spec_dir = tmp_path / "jupyter" / "kernels" / "bnjax-test"
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "bnjax test", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(kernel))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")  # jupyter_core warns about its path migration otherwise
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("BNJAX_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # inline PNGs, no GUI

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "import bnjax, matplotlib\nprint('bnjax from', bnjax.__file__)\nprint('backend', matplotlib.get_backend())"
    ))
    client = nbclient.NotebookClient(
        nb, kernel_name="bnjax-test", timeout=900, resources={"metadata": {"path": str(REPO)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell (a failed assert included)

    text = "".join(
        out.get("text", "") for c in nb.cells if c.cell_type == "code" for out in c.outputs
        if out.get("output_type") == "stream"
    )
    assert f"bnjax from {REPO / 'bnjax'}" in text, "the kernel imported another bnjax than this checkout's"
    backend = re.search(r"^backend (\S+)$", text, re.M).group(1)
    assert backend.lower() in ("agg", "inline", "module://matplotlib_inline.backend_inline"), backend
    images = [out for c in nb.cells if c.cell_type == "code" for out in c.outputs if "image/png" in out.get("data", {})]
    assert len(images) >= 5, f"expected a plot under each training comparison, got {len(images)} images"

    checks = CHECK_LINE.findall(text)
    assert len(checks) == NUM_CHECKS, [name for name, _, _ in checks]
    failed = [(name, err, tol) for name, err, tol in checks if not float(err) <= float(tol)]
    assert not failed, failed
