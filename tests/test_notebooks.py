"""The stored course notebooks: executed in order, without errors or stderr, and shaped as a
lesson (parameters cell, questions with hidden answers). nbval (run by `make test`) then
re-executes each one and compares outputs in strict mode."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
IGNORE = "# NBVAL_IGNORE_OUTPUT"


def _ignored(cell) -> bool:
    """Whether nbval ignores the cell's output: a comment line that is exactly the marker
    (as nbval reads it; ``# NBVAL_IGNORE_OUTPUT (why)`` is NOT honoured by nbval)."""
    lines = "".join(cell["source"]).splitlines()
    return any(
        line.strip().startswith("#") and line.strip().lstrip("#").strip() == IGNORE[2:]
        for line in lines
    )


def _code_cells(path):
    nb = json.loads(path.read_text())
    return nb, [
        c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()
    ]


def test_there_are_notebooks():
    assert NOTEBOOKS and NOTEBOOKS[0].name == "00_setup_and_data.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_executed_in_order_without_errors(path):
    _, cells = _code_cells(path)
    unrun = [i for i, c in enumerate(cells) if c.get("execution_count") is None]
    assert not unrun, (
        f"{path.name}: code cells {unrun} have no stored execution; run make notebooks"
    )
    counts = [c["execution_count"] for c in cells]
    assert counts == list(range(1, len(cells) + 1)), f"{path.name}: executed out of order {counts}"
    for c in cells:
        for out in c.get("outputs", []):
            assert out["output_type"] != "error", f"{path.name}: stored error {out.get('ename')}"
            assert not (out["output_type"] == "stream" and out["name"] == "stderr"), (
                f"{path.name}: stderr output stored: {''.join(out['text'])[:200]}"
            )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_ignore_markers_are_ones_nbval_honours(path):
    _, cells = _code_cells(path)
    for c in cells:
        for line in "".join(c["source"]).splitlines():
            if "NBVAL_IGNORE_OUTPUT" in line and line.strip() != IGNORE:
                raise AssertionError(
                    f"{path.name}: nbval only honours a line that is exactly {IGNORE!r}; "
                    f"put the reason on the next line: {line.strip()!r}"
                )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_at_most_a_fifth_of_outputs_ignored(path):
    _, cells = _code_cells(path)
    with_output = [c for c in cells if c.get("outputs")]
    ignored = [c for c in with_output if _ignored(c)]
    assert len(ignored) <= 0.2 * len(with_output), (
        f"{path.name}: {len(ignored)} of {len(with_output)} output cells ignored by nbval"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_lesson_shape(path):
    nb, cells = _code_cells(path)
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
    markdown = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "What you will learn" in markdown
    assert "Check your understanding" in markdown and "<details>" in markdown
    for c in cells:
        for line in "".join(c["source"]).splitlines():
            assert len(line) <= 79, f"{path.name}: code line longer than 79 characters: {line}"
