"""notebooks/walkthrough.ipynb: committed without outputs, and it runs end to end (so it never rots)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "walkthrough.ipynb"
KERNEL = "alzaudit-test-kernel"


def test_committed_notebook_has_no_outputs():
    """Outputs stay out of git: every code cell has no outputs and no execution count."""
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [cell for cell in nb["cells"] if cell["cell_type"] == "code"]
    assert code, "the walkthrough has no code cells"
    for i, cell in enumerate(code):
        assert cell.get("outputs") == [], f"code cell {i} has outputs: clear them before committing"
        assert cell.get("execution_count") is None, f"code cell {i} has an execution count"
    assert not nb.get("metadata", {}).get("widgets"), "widget state is an output too"


def kernel_spec_dir(root: Path) -> Path:
    """A kernel spec that starts ipykernel with this very interpreter (not whatever 'python3' means
    in the user's Jupyter paths), so the notebook tests the environment the tests run in."""
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "alzaudit tests", "language": "python"}))
    return root


@pytest.mark.slow
def test_walkthrough_runs_end_to_end(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]' brings nbformat")
    nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[test]' brings nbclient")
    pytest.importorskip("ipykernel", reason="pip install -e '.[test]' brings ipykernel")

    monkeypatch.setenv("JUPYTER_PATH", str(kernel_spec_dir(tmp_path / "jupyter")))
    # The kernel imports this checkout's packages (cwd is the repository root, and PYTHONPATH says so too).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's tempfile folder lands here
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=600,
                                     resources={"metadata": {"path": str(ROOT)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    final = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    verdicts = [line.split(": ", 1)[1] for line in final.splitlines() if line.startswith("verdict: ")]
    assert verdicts and verdicts[0] in ("PASS", "FAIL", "INCOMPLETE"), final
    report = [line.split(": ", 1)[1] for line in final.splitlines() if line.startswith("report: ")]
    assert report and report[0].endswith("report.html") and Path(report[0]).is_file(), final
    assert Path(report[0]).is_relative_to(tmp_path), "the notebook must work in a temporary folder"
    figures = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 4, "the overlays and plots should render inline"
