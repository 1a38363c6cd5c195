"""kdlib.grade: scores submissions in fresh kernels, survives broken ones, never edits them.

The fixture submissions are made in tmp_path from exercise 02 (the cheapest notebook): a full
solution, the untouched student version, and notebooks that raise, loop forever, have syntax
errors, miss cells, hang inside the graded function, kill their kernel, or are not notebooks.
They are graded in one parallel batch, as an instructor would.
"""

import copy
import csv
import hashlib
import json
import threading
import time

import nbformat
import pytest
from nbformat.v4 import new_code_cell

from kdlib import grade
from kdlib.exercises import EXERCISES_DIR

SOURCE = EXERCISES_DIR / "source" / "02_soft_targets.ipynb"
STUDENT = EXERCISES_DIR / "02_soft_targets.ipynb"
TIMEOUT = 8  # seconds per cell: the graded cells are tiny, imports are warmed up before


def _cells(nb, needle):
    """Index of the first cell whose source contains ``needle``."""
    return next(i for i, c in enumerate(nb.cells) if needle in c.source)


def _write(path, nb):
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def _submissions(folder):
    key = nbformat.read(SOURCE, as_version=4)
    solution_cell = _cells(key, "def soften(")
    check_cell = _cells(key, "check_soften(soften)")
    subs = {}
    subs["full"] = _write(folder / "alice" / "02_soft_targets.ipynb", key)
    subs["untouched"] = _write(
        folder / "bob" / "02_soft_targets.ipynb", nbformat.read(STUDENT, as_version=4)
    )

    nb = copy.deepcopy(key)  # raises, loops forever and has a syntax error, outside the answer
    nb.cells[2:2] = [
        new_code_cell("raise RuntimeError('oops')"),
        new_code_cell("while True:\n    pass"),
        new_code_cell("def broken(:\n    pass"),
    ]
    subs["raises-loops-syntax"] = _write(folder / "carol_02_soft_targets.ipynb", nb)

    nb = copy.deepcopy(key)  # the answer has a syntax error, and the check cell is deleted
    nb.cells[solution_cell].source = "def soften(logits, T)\n    return logits"
    del nb.cells[check_cell]
    subs["syntax-and-deleted"] = _write(folder / "erin_02_soft_targets.ipynb", nb)

    nb = copy.deepcopy(key)  # the answer hangs when called; only the grader calls it
    nb.cells[solution_cell].source = "def soften(logits, T):\n    while True:\n        pass"
    del nb.cells[check_cell]
    subs["hangs-when-checked"] = _write(folder / "heidi_02_soft_targets.ipynb", nb)

    nb = copy.deepcopy(key)  # kills its own kernel after defining the answer
    nb.cells.insert(check_cell, new_code_cell("import os\n\nos._exit(1)"))
    subs["kernel-dies"] = _write(folder / "ivan_02_soft_targets.ipynb", nb)

    subs["not-a-notebook"] = folder / "grace_02_soft_targets.ipynb"
    subs["not-a-notebook"].write_bytes(b"this is not a notebook {")
    nb = copy.deepcopy(key)
    nb.metadata.pop("kdlib")
    subs["unknown"] = _write(folder / "homework.ipynb", nb)
    return subs


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    folder = tmp_path_factory.mktemp("submissions")
    subs = _submissions(folder)
    before = {name: (p.read_bytes(), p.stat().st_mtime_ns) for name, p in subs.items()}
    order = list(subs)
    rows = grade.grade([subs[n] for n in order], timeout=TIMEOUT, jobs=2)
    return {
        "subs": subs,
        "before": before,
        "rows": dict(zip(order, rows, strict=True)),
        "folder": folder,
    }


@pytest.mark.slow
def test_full_solution_gets_full_marks_and_untouched_version_zero(batch):
    full, untouched = batch["rows"]["full"], batch["rows"]["untouched"]
    assert (full.score, full.maximum, full.problems) == (1, 1, [])
    assert full.student == "alice" and full.notebook == "02_soft_targets"
    assert [e.passed for e in full.exercises] == [True]
    assert (untouched.score, untouched.maximum) == (0, 1)
    assert untouched.student == "bob"
    assert "not implemented yet" in untouched.exercises[0].message
    assert any("NotImplementedError: Hint:" in p for p in untouched.problems)


@pytest.mark.slow
def test_exceptions_infinite_loops_and_syntax_errors_get_reasons(batch):
    row = batch["rows"]["raises-loops-syntax"]
    assert row.student == "carol"
    assert row.score == 1  # the answer itself is right: the broken cells cost nothing here
    problems = " | ".join(row.problems)
    assert "cell 3 raised RuntimeError: oops" in problems
    assert f"cell 4 ran longer than {TIMEOUT} s and was interrupted" in problems
    assert "cell 5 has a syntax error" in problems


@pytest.mark.slow
def test_a_broken_answer_and_a_deleted_cell_score_zero_with_reasons(batch):
    row = batch["rows"]["syntax-and-deleted"]
    assert (row.score, row.maximum) == (0, 1)
    problems = " | ".join(row.problems)
    assert "has a syntax error" in problems
    assert "cells missing compared with the released notebook: cell 5 (check_soften" in problems
    assert "`soften` is not defined" in row.exercises[0].message


@pytest.mark.slow
def test_an_answer_that_hangs_when_checked_costs_only_its_points(batch):
    row = batch["rows"]["hangs-when-checked"]
    assert row.score == 0
    assert row.exercises[0].message == (
        f"could not be checked: ran longer than {TIMEOUT} s and was interrupted"
    )


@pytest.mark.slow
def test_a_dead_kernel_or_a_broken_file_still_gets_a_row(batch):
    dead = batch["rows"]["kernel-dies"]
    assert dead.score == 0 and any("the kernel died" in p for p in dead.problems)
    broken = batch["rows"]["not-a-notebook"]
    assert (broken.score, broken.maximum, broken.notebook) == (0, 1, "02_soft_targets")
    assert broken.problems[0].startswith("not a readable notebook")
    unknown = batch["rows"]["unknown"]
    assert unknown.notebook is None and "unknown exercise notebook" in unknown.problems[0]
    assert len(batch["rows"]) == len(batch["subs"])  # one row each: nothing stopped the batch


@pytest.mark.slow
def test_submissions_are_byte_identical_after_grading(batch):
    for name, path in batch["subs"].items():
        data, mtime = batch["before"][name]
        assert path.read_bytes() == data, name
        assert path.stat().st_mtime_ns == mtime, name
        assert batch["rows"][name].sha256 == hashlib.sha256(data).hexdigest()
    # The kernels ran on copies elsewhere: nothing new appeared next to the submissions.
    found = sorted(p.name for p in batch["folder"].rglob("*") if p.is_file())
    assert found == sorted(p.name for p in batch["subs"].values())


@pytest.mark.slow
def test_reports_and_the_summary(batch, tmp_path):
    rows = list(batch["rows"].values())
    out = grade.write_report(rows, tmp_path / "grades.json", wall_seconds=12.5)
    report = json.loads(out.read_text())
    first = report["submissions"][0]
    assert {"path", "score", "maximum"} <= set(first)
    assert first["path"] == str(batch["subs"]["full"]) and first["score"] == 1
    assert report["students"]["alice"] == {"score": 1, "maximum": 1, "submissions": 1}
    table = list(csv.DictReader((grade.write_report(rows, tmp_path / "g.csv")).open()))
    assert [r["student"] for r in table][:2] == ["alice", "bob"]
    assert table[0]["soften"] == "1.0" and table[1]["soften"] == "0.0"
    text = grade.summary(rows, 12.5, 2)
    assert "graded 8 submissions in 12.5 s wall time (2 parallel jobs" in text
    assert "totals per student" in text
    assert "hint: replace the `raise NotImplementedError(...)` line" in text


# --------------------------------------------------------------------------------------------
# Cheap tests: no kernel needed
def test_files_that_are_no_notebook_are_graded_without_a_kernel(tmp_path, capsys):
    bad = tmp_path / "zoe_04_soft_target_kd.ipynb"
    bad.write_text("{")
    other = tmp_path / "notes.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), other)
    report = tmp_path / "out" / "grades.csv"
    assert grade.main([str(bad), str(other), "--report", str(report), "--jobs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "zoe" in printed and "not a readable notebook" in printed
    assert "graded 2 submissions in" in printed and "wall time" in printed
    assert "CPU time of the grader and its kernels: " in printed
    rows = list(csv.DictReader(report.open()))
    assert [r["student"] for r in rows] == ["zoe", "notes"]
    assert rows[0]["notebook"] == "04_soft_target_kd" and rows[0]["maximum"] == "4"


def test_submissions_run_in_parallel(monkeypatch, tmp_path):
    threads = set()

    def fake(path, *args):
        threads.add(threading.current_thread().name)
        time.sleep(0.2)  # long enough for the other worker to pick up a file
        return grade.Submission(str(path), path.stem, None, 0, 0)

    monkeypatch.setattr(grade, "grade_one", fake)
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"s{i}.ipynb")
        paths[-1].write_text("{}")
    rows = grade.grade(paths, jobs=2)
    assert [r.student for r in rows] == ["s0", "s1", "s2", "s3"]  # input order kept
    assert len(threads) == 2


def test_a_folder_is_searched_for_notebooks(monkeypatch, tmp_path):
    monkeypatch.setattr(
        grade, "grade_one", lambda p, *a: grade.Submission(str(p), p.stem, None, 0, 0)
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.ipynb").write_text("{}")
    (tmp_path / "a" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "a" / ".ipynb_checkpoints" / "x-checkpoint.ipynb").write_text("{}")
    (tmp_path / "a" / "notes.txt").write_text("")
    assert [r.student for r in grade.grade([tmp_path], jobs=1)] == ["x"]


def test_student_names_come_from_files_or_folders(tmp_path):
    assert grade._student(tmp_path / "alice" / "04_soft_target_kd.ipynb", "04_soft_target_kd") == (
        "alice"
    )
    assert grade._student(tmp_path / "bob-04_soft_target_kd.ipynb", "04_soft_target_kd") == "bob"
    assert grade._student(tmp_path / "essay.ipynb", None) == "essay"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"paths": ["/no/such/file.ipynb"]}, FileNotFoundError, "no such submission file"),
        ({"timeout": 0}, ValueError, "timeout must be a number of seconds > 0"),
        ({"jobs": 0}, ValueError, "jobs must be a positive integer"),
        ({"notebook_timeout": -1}, ValueError, "notebook_timeout must be > 0"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, error, message):
    args = {"paths": [tmp_path], **kwargs}
    (tmp_path / "x.ipynb").write_text("{}")
    with pytest.raises(error, match=message):
        grade.grade(**args)


def test_an_empty_folder_and_a_bad_report_name_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="no notebooks"):
        grade.grade([tmp_path])
    with pytest.raises(ValueError, match="report must end in .json or .csv"):
        grade.write_report([], tmp_path / "grades.txt")
    (tmp_path / "x.ipynb").write_text("{}")
    with pytest.raises(SystemExit) as info:
        grade.main([str(tmp_path), "--report", "grades.xlsx"])
    assert info.value.code == 2
    assert "--report must end in .json or .csv" in capsys.readouterr().err


@pytest.mark.slow
def test_every_source_runs_clean_top_to_bottom_at_full_marks():
    sources = sorted((EXERCISES_DIR / "source").glob("*.ipynb"))
    rows = grade.grade(sources, timeout=120, jobs=2)  # 05 and 09 train small models
    for row in rows:
        detail = (row.path, row.problems, [e.message for e in row.exercises])
        assert row.problems == [], detail
        assert row.score == row.maximum > 0, detail
    assert sum(r.maximum for r in rows) == sum(ex.points for ex in grade.EXERCISES.values())
