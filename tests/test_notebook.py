"""examples/retreinamento.ipynb runs top to bottom in a real Jupyter kernel on a small subset."""
from __future__ import annotations

import re

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import CATS_VS_DOGS, ROOT, WATER_BOTTLES

NOTEBOOK = ROOT / "examples" / "retreinamento.ipynb"
KERNEL = "retreino-test"


def _read():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    return nb


def _parameters_index(nb) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    return tagged[0]


def test_notebook_is_committed_clean_and_bilingual():
    nb = _read()
    assert nb.nbformat == 4
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit the notebook without outputs"
    assert 8 <= len(code) <= 14
    params = nb.cells[_parameters_index(nb)].source
    for name in ("SUBSET", "EPOCHS", "DATA", "MODEL", "RUNS"):
        assert re.search(rf"^{name} = ", params, re.M), f"parameters cell lacks {name}"
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for word in ("Gato", "Cachorro", "Curvas de aprendizado", "Learning curves", "Ajuste fino", "Fine-tuning"):
        assert word in markdown


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook run by nbclient with a kernel spec that points at this interpreter.

    A kernel spec in a temporary JUPYTER_PATH works on a fresh CI machine, where no `python3`
    kernel is registered, and never picks up some other Python's kernel.
    """
    from ipykernel.kernelspec import install

    tmp = tmp_path_factory.mktemp("notebook")
    install(kernel_name=KERNEL, display_name="retreino test", prefix=str(tmp / "jupyter"))
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PATH", str(tmp / "jupyter" / "share" / "jupyter"))

    nb = _read()
    runs = tmp / "runs"
    # Inject the values after the parameters cell, as papermill does: the defaults stay visible.
    injected = nbformat.v4.new_code_cell(
        f"SUBSET = 6\nEPOCHS = 1\nWARMUP = 1\nDATA = {str(CATS_VS_DOGS)!r}\nMODEL = {str(WATER_BOTTLES)!r}\n"
        f"RUNS = {str(runs)!r}",
        metadata={"tags": ["injected-parameters"]},
    )
    nb.cells.insert(_parameters_index(nb) + 1, injected)
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=300, resources={"metadata": {"path": str(tmp)}})
    try:
        client.execute()
    finally:
        mp.undo()
        nbformat.write(nb, tmp / "executed.ipynb")  # kept for a look when the test fails
    return nb, runs


def _outputs(nb, kind: str):
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if kind == "error" and out.output_type == "error":
                yield out
            elif kind == "stdout" and out.output_type == "stream" and out.name == "stdout":
                yield out.text
            elif kind in out.get("data", {}):
                yield out.data[kind]


def test_notebook_runs_and_draws_its_figures(executed):
    nb, runs = executed
    assert not list(_outputs(nb, "error"))
    pngs = list(_outputs(nb, "image/png"))
    # data grid, learning curves, confusion matrix, scatter, one photo, prediction grid
    assert len(pngs) >= 6, f"only {len(pngs)} figures"
    stdout = "".join(_outputs(nb, "stdout"))
    assert re.search(r"^train\s+12 images", stdout, re.M)  # 6 cats + 6 dogs
    assert re.search(r"^(Gato|Cachorro)\s+\d+\.\d%\n(Gato|Cachorro)\s+\d+\.\d%$", stdout, re.M)
    assert re.search(r"accuracy\s+[01]\.\d{4}\s+loss", stdout)

    run_dirs = [p for p in runs.iterdir() if p.name.startswith("gato-cachorro")]
    assert len(run_dirs) == 1
    files = {p.name for p in run_dirs[0].iterdir()}
    assert {"fine_tuned_model.keras", "learning_curves.png", "confusion_matrix.png", "predictions_scatter.png",
            "metrics.json", "test_predictions.csv", "test_grid.png", "report.html"} <= files
