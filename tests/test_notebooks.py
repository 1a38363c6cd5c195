"""The stored course notebooks: executed in order, without errors or stderr, shaped as a
lesson (parameters cell, questions with hidden answers), and following the two-tier test
policy that nbval then applies (`make test`, `make test-strict`).

Every code cell with an output is in one tier:
- **exact** (tag ``nbval-check-output``): the output is the same on every machine and torch
  version (shapes, counts, by-hand vs library values on seeded tensors); `make test`
  compares it digit for digit.
- **measured** (no tag): the output comes out of training, so its last digits depend on the
  torch build and the thread count. The cell ``assert``s the claim the prose makes, with a
  tolerance the claim can carry; `make test` runs it, `make test-strict` (CI's reference
  environment) also compares the output digit for digit.
- **ignored** (``# NBVAL_IGNORE_OUTPUT`` and a reason on the next line): never compared.
  Only timings and widget reprs may be ignored without an assert (e.g. the environment
  report of notebook 00 is ignored, and asserts the versions the course needs).

``python tests/test_notebooks.py`` prints how many cells each notebook has in each tier.
"""

import ast
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
IGNORE = "# NBVAL_IGNORE_OUTPUT"
EXACT = "nbval-check-output"
WIDGET = "application/vnd.jupyter.widget-view+json"


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


def _asserts(cell) -> bool:
    """Whether the cell's code holds an ``assert`` statement (IPython magics aside)."""
    code = "\n".join(
        line for line in "".join(cell["source"]).splitlines() if not line.lstrip().startswith("%")
    )
    return any(isinstance(node, ast.Assert) for node in ast.walk(ast.parse(code)))


def _widget(cell) -> bool:
    return any(WIDGET in out.get("data", {}) for out in cell.get("outputs", []))


def tier(cell) -> str | None:
    """``"exact"``, ``"measured"`` or ``"ignored"`` for a code cell with output, else None."""
    if not cell.get("outputs"):
        return None
    if _ignored(cell) or "nbval-ignore-output" in cell.get("metadata", {}).get("tags", []):
        return "ignored"
    if EXACT in cell.get("metadata", {}).get("tags", []):
        return "exact"
    return "measured"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_measured_output_is_checked_by_an_assert(path):
    _, cells = _code_cells(path)
    unchecked = [
        k + 1
        for k, c in enumerate(cells)
        if tier(c) == "measured" and not _asserts(c) and not _widget(c)
    ]
    assert not unchecked, (
        f"{path.name}: code cells {unchecked} print measured numbers that `make test` does not "
        f"compare, and no assert checks their claim: add one, or tag the cell {EXACT!r} if "
        "its output is the same on every machine"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_only_timings_and_widgets_are_ignored(path):
    _, cells = _code_cells(path)
    with_output = [c for c in cells if c.get("outputs")]
    ignored = [c for c in with_output if tier(c) == "ignored"]
    assert len(ignored) <= 0.2 * len(with_output), (
        f"{path.name}: {len(ignored)} of {len(with_output)} output cells ignored by nbval"
    )
    for c in ignored:
        lines = [line.strip() for line in "".join(c["source"]).splitlines()]
        reason = lines[lines.index(IGNORE) + 1] if IGNORE in lines else ""
        timing = any(w in reason.lower() for w in ("time", "timing", "latenc"))
        assert timing or _widget(c) or _asserts(c), (
            f"{path.name}: only timings and widget reprs may be ignored unchecked; this "
            f"cell's reason is {reason!r} and it asserts nothing"
        )


def counts() -> dict[str, dict[str, int]]:
    """Cells per tier, per notebook."""
    table = {}
    for path in NOTEBOOKS:
        _, cells = _code_cells(path)
        tiers = [tier(c) for c in cells]
        table[path.name] = {t: tiers.count(t) for t in ("exact", "measured", "ignored")}
    return table


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


if __name__ == "__main__":
    table = counts()
    print(f"{'notebook':<42}{'exact':>7}{'measured':>10}{'ignored':>9}")
    for name, row in table.items():
        print(f"{name:<42}{row['exact']:>7}{row['measured']:>10}{row['ignored']:>9}")
    total = {t: sum(r[t] for r in table.values()) for t in ("exact", "measured", "ignored")}
    print(f"{'total':<42}{total['exact']:>7}{total['measured']:>10}{total['ignored']:>9}")
    sys.exit(0)
