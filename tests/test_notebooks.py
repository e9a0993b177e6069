"""The notebooks in notebooks/ run top to bottom (each asserts on what it shows) and are committed
executed. `python tests/test_notebooks.py` executes them again and writes their outputs."""

import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("matplotlib")

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def execute(path: pathlib.Path, km=None):
    """Run the notebook top to bottom; in its own kernel, or in the started-once kernel ``km``
    after a ``%reset -f`` (each notebook then starts from empty names, the imports paid once)."""
    book = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(book, km=km, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    if km is None:
        client.execute()
        return book
    book.cells.insert(0, nbformat.v4.new_code_cell("%reset -f"))
    try:
        client.execute()
    finally:
        del book.cells[0]
        if client.kc is not None:
            client.kc.stop_channels()
    return book


@pytest.fixture(scope="module")
def kernel():
    """One kernel for every notebook of the module (started by the first, in notebooks/)."""
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    km = AsyncKernelManager(kernel_name="python3")
    yield km
    if km.has_kernel:
        run_sync(km.shutdown_kernel)(now=True)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_is_committed_executed(path, kernel):
    committed = nbformat.read(path, as_version=4)
    code = [c for c in committed.cells if c.cell_type == "code"]
    executed = code and all(c.get("execution_count") for c in code) and any(c.get("outputs") for c in code)
    assert executed, f"{path.name}: commit it executed (python tests/test_notebooks.py {path.name})"
    book = execute(path, kernel)  # raises CellExecutionError, naming the cell, when an assertion fails
    assert all(c.get("execution_count") for c in book.cells if c.cell_type == "code")


if __name__ == "__main__":
    for path in NOTEBOOKS if len(sys.argv) < 2 else [pathlib.Path(p) for p in sys.argv[1:]]:
        nbformat.write(execute(path), path)
        print("executed", path)
