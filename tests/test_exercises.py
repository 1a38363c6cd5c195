"""kdlib.course.exercises: student versions are generated from the sources and are current."""

import re

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from kdlib.course import exercises
from kdlib.course.checks import EXERCISES
from kdlib.course.exercises import EXERCISES_DIR, render, stale, strip_solutions, student_version

SOURCES = sorted((EXERCISES_DIR / "source").glob("*.ipynb"))


def test_student_versions_are_current_with_their_sources():
    assert SOURCES, "no exercise sources found"
    assert stale() == [], "run `make exercises` and commit the student versions"
    assert exercises.main(["--check"]) == 0


@pytest.mark.parametrize("src", SOURCES, ids=[p.stem for p in SOURCES])
def test_a_student_version_has_stubs_and_no_solutions_or_outputs(src):
    key = nbformat.read(src, as_version=4)
    student = nbformat.read(EXERCISES_DIR / src.name, as_version=4)
    assert [c.get("id") for c in student.cells] == [c.get("id") for c in key.cells]
    assert student.metadata["kdlib"]["exercise"] == src.stem
    regions = 0
    for k, s in zip(key.cells, student.cells, strict=True):
        assert s.cell_type == k.cell_type
        if s.cell_type != "code":
            assert s.source == k.source
            continue
        assert s.outputs == [] and s.execution_count is None
        assert "SOLUTION" not in s.source
        if "### BEGIN SOLUTION" in k.source:
            regions += 1
            hint = next(line for line in k.source.splitlines() if "# Hint:" in line)
            assert "raise NotImplementedError(" in s.source
            assert hint.split("# ", 1)[1] in s.source
            body = k.source.split("### BEGIN SOLUTION")[1].split("### END SOLUTION")[0]
            solution_lines = [ln.strip() for ln in body.splitlines()[2:] if ln.strip()]
            assert not any(line in s.source for line in solution_lines if len(line) > 12)
        else:
            assert s.source == k.source
    assert regions >= 1


def test_every_exercise_lives_in_a_source_that_defines_it():
    stems = {p.stem for p in SOURCES}
    assert {ex.notebook for ex in EXERCISES.values()} == stems
    for exercise_id, ex in EXERCISES.items():
        nb = nbformat.read(EXERCISES_DIR / "source" / f"{ex.notebook}.ipynb", as_version=4)
        cells = [c for c in nb.cells if c.metadata.get("kdlib", {}).get("exercise") == exercise_id]
        assert len(cells) == 1, exercise_id
        assert "### BEGIN SOLUTION" in cells[0].source
        defines = {"function": f"def {ex.name}(", "answer": f"{ex.name} = ", "model": "def "}
        assert defines[ex.kind] in cells[0].source, exercise_id
        assert any(f"{ex.check.__name__}(" in c.source for c in nb.cells), exercise_id


def test_each_concept_of_the_issue_has_an_exercise():
    titles = " | ".join(ex.title for ex in EXERCISES.values())
    for concept in (
        "MSE logit",
        "soft-target loss",
        "combined loss",
        "weight inheritance",
        "attention map",
        "hint regressor",
        "magnitude mask",
        "structured shrink",
        "cubic schedule",
        "compression challenge",
        "distillation training loop",
        "hint stage (training loop)",
        "prune → fine-tune cycles (training loop)",
        "question:",
        "fake quantization with the straight-through gradient",
    ):
        assert concept in titles
    assert sum(ex.kind == "answer" for ex in EXERCISES.values()) >= 2


_BREAKING = re.compile(
    r"\b(remove|delete|comment out|drop|take out)\b[^.]*\b(from|in) your (graded )?"
    r"(function|code|loss)\b"
)


def test_no_instruction_asks_to_break_a_graded_function():
    # Experiments run on ungraded copies: following every instruction keeps full marks.
    old = "remove the `* T**2` from your function and run this cell again"
    assert _BREAKING.search(old)  # the kind of instruction this test keeps out
    for src in SOURCES:
        nb = nbformat.read(src, as_version=4)
        for cell in nb.cells:
            text = " ".join(cell.source.lower().split())
            if cell.cell_type == "markdown":
                assert not _BREAKING.search(text), (src.name, cell.id)


# --------------------------------------------------------------------------------------------
def test_strip_replaces_a_region_at_its_indentation():
    src = (
        "def f(x):\n"
        '    """Double."""\n'
        "    ### BEGIN SOLUTION\n"
        "    # Hint: multiply by two\n"
        "    y = 2 * x\n"
        "    return y\n"
        "    ### END SOLUTION\n"
        "\n"
        "print(f)"
    )
    assert strip_solutions(src) == (
        "def f(x):\n"
        '    """Double."""\n'
        "    # YOUR CODE HERE\n"
        '    raise NotImplementedError("Hint: multiply by two")\n'
        "\n"
        "print(f)"
    )


def test_strip_wraps_a_long_hint_as_ruff_format_would():
    hint = "Hint: " + "x" * 60
    out = strip_solutions(f"### BEGIN SOLUTION\n# {hint}\npass\n### END SOLUTION")
    assert out.splitlines() == [
        "# YOUR CODE HERE",
        "raise NotImplementedError(",
        f'    "{hint}"',
        ")",
    ]


def test_strip_escapes_quotes_in_hints():
    out = strip_solutions('### BEGIN SOLUTION\n# Hint: use "batchmean"\npass\n### END SOLUTION')
    assert out.splitlines()[1] == 'raise NotImplementedError("Hint: use \\"batchmean\\"")'


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("### BEGIN SOLUTION\n# Hint: h\nx = 1", "has no ### END SOLUTION"),
        ("x = 1\n### END SOLUTION", "END SOLUTION without a BEGIN"),
        ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION", "must start with a one-line '# Hint"),
        (
            "### BEGIN SOLUTION\n# Hint: h\n### BEGIN SOLUTION\n### END SOLUTION",
            "cannot be nested",
        ),
    ],
)
def test_malformed_markers_are_refused_with_the_cell_named(source, message):
    with pytest.raises(ValueError, match=message) as info:
        strip_solutions(source, "ex.ipynb, cell 3")
    assert str(info.value).startswith("ex.ipynb, cell 3, line ")


def test_markers_in_markdown_are_refused():
    nb = new_notebook(cells=[new_markdown_cell("### BEGIN SOLUTION\nanswer\n### END SOLUTION")])
    with pytest.raises(ValueError, match="only work in code cells; this is a markdown cell"):
        student_version(nb, "ex.ipynb")


def test_student_version_clears_outputs_and_leaves_the_source_alone():
    cell = new_code_cell("### BEGIN SOLUTION\n# Hint: h\nprint(1)\n### END SOLUTION")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    cell.execution_count = 3
    cell.metadata["execution"] = {"iopub.status.busy": "2024"}
    cell.metadata["tags"] = ["keep-me"]
    nb = new_notebook(cells=[cell])
    out = student_version(nb)
    assert out.cells[0].outputs == [] and out.cells[0].execution_count is None
    assert out.cells[0].metadata == {"tags": ["keep-me"]}
    assert nb.cells[0].execution_count == 3 and "print(1)" in nb.cells[0].source


def test_generate_writes_only_what_changed_and_stale_names_problems(tmp_path):
    src_dir, out_dir = tmp_path / "source", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    nb = new_notebook(
        cells=[new_code_cell("### BEGIN SOLUTION\n# Hint: h\nx = 1\n### END SOLUTION")]
    )
    nbformat.write(nb, src_dir / "01_a.ipynb")
    assert "missing" in stale(src_dir, out_dir)[0]
    assert exercises.generate(src_dir, out_dir) == [out_dir / "01_a.ipynb"]
    assert exercises.generate(src_dir, out_dir) == []
    assert stale(src_dir, out_dir) == []
    text = (out_dir / "01_a.ipynb").read_text()
    assert text == render(student_version(nb)) and "NotImplementedError" in text
    (out_dir / "01_a.ipynb").write_text(text.replace("Hint: h", "Hint: changed"))
    (out_dir / "02_orphan.ipynb").write_text(text)
    problems = stale(src_dir, out_dir)
    assert any("01_a.ipynb: differs" in p for p in problems)
    assert any("02_orphan.ipynb: no source" in p for p in problems)
    assert exercises.main(["--check", "--source", str(src_dir), "--out", str(out_dir)]) == 1
    assert not list(out_dir.glob(".*.tmp"))


def test_no_sources_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no exercise sources"):
        exercises.generate(tmp_path, tmp_path)
