"""Check the tutorial notebooks: the stored copy the docs render, and a fresh run on the real crop."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
TUTORIAL = NOTEBOOK_DIR / "xenium_tutorial.ipynb"

# The training cell took 1 to 3 minutes on a 2-core CPU shared with other jobs.
CELL_TIMEOUT_S = 600


def output_text(cell) -> str:
    """Join the text of a code cell's stream outputs and of the plain-text form of its results."""
    parts = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif output["output_type"] in ("execute_result", "display_data"):
            parts.append(output["data"].get("text/plain", ""))
    return "".join(parts)


def cell_calling(notebook, call: str):
    """Return the only code cell whose source contains ``call``."""
    cells = [cell for cell in notebook.cells if cell.cell_type == "code" and call in cell.source]
    assert len(cells) == 1, f"expected one code cell calling {call!r}, found {len(cells)}"
    return cells[0]


def test_stored_tutorial_has_outputs() -> None:
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed; pip install nbformat")
    notebook = nbformat.read(TUTORIAL, as_version=4)
    nbformat.validate(notebook)

    # The docs show the stored outputs without executing the notebook, and myst-nb (1.4) takes the
    # language that highlights the code cells from these two entries.
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    assert notebook.metadata["language_info"]["name"] == "python"

    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells
    for position, cell in enumerate(code_cells, start=1):
        assert cell.outputs, f"code cell {position} has no stored output:\n{cell.source}"
        assert cell.execution_count == position, f"code cell {position} was not run in order"
        errors = [output for output in cell.outputs if output["output_type"] == "error"]
        assert not errors, f"code cell {position} stored an error:\n{cell.source}"


@pytest.mark.slow
def test_tutorial_runs_on_xenium_crop(xenium_lung_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed; pip install nbformat")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed; pip install nbclient")
    pytest.importorskip("ipykernel", reason="ipykernel is not installed; pip install ipykernel")

    notebook = nbformat.read(TUTORIAL, as_version=4)
    files_before = sorted(path.name for path in NOTEBOOK_DIR.iterdir())

    # The notebook finds the crop by a path relative to its own folder, so the kernel starts there.
    # The executed copy stays in memory.
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, when a cell fails

    metrics = output_text(cell_calling(notebook, "sg.tl.segmentation_metrics("))
    for key in ("segger", "vendor", "expansion_0", "expansion_15", "segger_cut_80"):
        assert key in metrics, f"metrics table lacks the row {key!r}:\n{metrics}"
    assert "mecr_area_matched" in metrics

    comparison = output_text(cell_calling(notebook, "np.interp("))
    assert "Nucleus expansion assigns" in comparison
    assert "vendor:" in comparison

    round_trip = output_text(cell_calling(notebook, "sg.models.Segger.load("))
    assert "same training history: True" in round_trip
    assert "same cell for every transcript: True" in round_trip

    assert sorted(path.name for path in NOTEBOOK_DIR.iterdir()) == files_before
