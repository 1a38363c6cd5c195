"""The README agrees with the course: its map lists every notebook, and its summary table's
seed-0 entries are the numbers notebook 09 prints (both come from kdlib.course.results)."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def _rows(text: str) -> dict[str, list[str]]:
    """Markdown table rows by their first cell (header and rules left out)."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_course_map_links_every_notebook_once():
    course_map = _section("Course map")
    linked = re.findall(r"\]\((notebooks/[^)]+\.ipynb)\)", course_map)
    on_disk = sorted(f"notebooks/{p.name}" for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert sorted(linked) == on_disk
    for number, row in _rows(course_map).items():
        if number.isdigit():
            assert row[0].startswith("[") and len(row[1]) > 20, f"notebook {number}: {row}"


def _notebook_09_table() -> dict[str, list[str]]:
    nb = json.loads((ROOT / "notebooks" / "09_prune_then_distill.ipynb").read_text())
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            # a rendered table (display(Markdown(...))) or printed text
            text = "".join(out.get("data", {}).get("text/markdown", out.get("text", "")))
            if "| method | starts from |" in text:
                return _rows(text)
    raise AssertionError("notebook 09 has no stored summary table")


def test_summary_table_seed_0_is_what_notebook_09_prints():
    readme = _rows(_section("Results").split("**Course summary")[1])
    notebook = _notebook_09_table()
    methods = [m for m in notebook if m != "method"]
    assert len(methods) >= 7
    for method in methods:
        assert method in readme, f"{method!r} is not in the README's summary table"
        nb_row, rd_row = notebook[method], readme[method]
        assert nb_row[:3] == rd_row[:3], method  # starts from, parameters, bytes
        if method.startswith("teacher"):
            assert nb_row[3] == rd_row[3]
        else:
            assert f"0: {nb_row[3]}" in rd_row[4], (method, nb_row[3], rd_row[4])


def test_your_own_data_example_runs():
    block = _section("Your own data").split("```python\n")[1].split("```")[0]
    assert len([line for line in block.splitlines() if line.strip()]) == 5
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102
    data, hist = scope["data"], scope["hist"]
    assert data.X_train.dtype.is_floating_point and str(data.X_train.dtype) == "torch.float32"
    assert data.num_classes == 3 and len(data.X_test) == 100
    assert len(hist.rows) == 5 and 0 <= hist.last("test_acc") <= 1
