"""The notebooks in notebooks/ run top to bottom (each asserts on what it shows) and are committed
executed. `python tests/test_notebooks.py` executes them again and writes their outputs."""

import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("matplotlib")

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def execute(path: pathlib.Path):
    book = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(book, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    return book


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_is_committed_executed(path):
    committed = nbformat.read(path, as_version=4)
    code = [c for c in committed.cells if c.cell_type == "code"]
    executed = code and all(c.get("execution_count") for c in code) and any(c.get("outputs") for c in code)
    assert executed, f"{path.name}: commit it executed (python tests/test_notebooks.py {path.name})"
    book = execute(path)  # raises CellExecutionError, naming the cell, when an assertion fails
    assert all(c.get("execution_count") for c in book.cells if c.cell_type == "code")


if __name__ == "__main__":
    for path in NOTEBOOKS if len(sys.argv) < 2 else [pathlib.Path(p) for p in sys.argv[1:]]:
        nbformat.write(execute(path), path)
        print("executed", path)
