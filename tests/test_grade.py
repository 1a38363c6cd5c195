"""kdlib.course.grade: scores submissions in fresh kernels, survives broken ones, never edits them.

The fixture submissions are made in tmp_path from exercise 02 (the cheapest notebook): a full
solution, the untouched student version, and notebooks that raise, loop forever, have syntax
errors, miss cells, hang inside the graded function, kill their kernel, or are not notebooks.
They are graded in one parallel batch, as an instructor would.
"""

import copy
import csv
import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell

from kdlib.course import grade, sandbox
from kdlib.course.checks import CHALLENGE
from kdlib.course.exercises import EXERCISES_DIR

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

    nb = copy.deepcopy(key)  # every cell id regenerated (e.g. by another notebook tool)
    for i, cell in enumerate(nb.cells):
        cell.id = f"regenerated-{i}"
    subs["regenerated-ids"] = _write(folder / "dave_02_soft_targets.ipynb", nb)
    subs["duplicate-1"] = _write(folder / "frank" / "02_soft_targets.ipynb", key)
    subs["duplicate-2"] = _write(
        folder / "frank_02_soft_targets.ipynb", nbformat.read(STUDENT, as_version=4)
    )
    nb = copy.deepcopy(key)  # a 02 notebook carrying 04's metadata
    nb.metadata["kdlib"]["exercise"] = "04_soft_target_kd"
    subs["metadata-mismatch"] = _write(folder / "judy_02_soft_targets.ipynb", nb)

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
    assert "graded 12 submissions in 12.5 s wall time (2 parallel jobs" in text
    assert "totals per student" in text
    assert "hint: replace the `raise NotImplementedError(...)` line" in text


@pytest.mark.slow
def test_regenerated_cell_ids_are_not_missing_cells(batch):
    row = batch["rows"]["regenerated-ids"]
    assert (row.score, row.problems, row.student) == (1, [], "dave")


@pytest.mark.slow
def test_two_submissions_of_one_notebook_are_flagged_and_counted_once(batch):
    first, second = batch["rows"]["duplicate-1"], batch["rows"]["duplicate-2"]
    assert (first.student, second.student) == ("frank", "frank")
    for row in (first, second):
        assert any(
            p.startswith("duplicate: frank submitted 02_soft_targets 2 times")
            for p in row.problems
        )
    totals = grade.students(list(batch["rows"].values()))
    assert totals["frank"] == {"score": 1, "maximum": 1, "submissions": 1}  # the best one


@pytest.mark.slow
def test_metadata_that_disagrees_with_the_file_name_is_flagged(batch):
    row = batch["rows"]["metadata-mismatch"]
    assert (row.notebook, row.student, row.score, row.maximum) == ("02_soft_targets", "judy", 1, 1)
    assert row.problems == [
        "mismatch: its metadata says 04_soft_target_kd but its file name says 02_soft_targets; "
        "graded as 02_soft_targets, the notebook whose exercises its code defines"
    ]


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
    assert "bubblewrap" in printed  # what the sandbox enforced, or what it could not
    rows = list(csv.DictReader(report.open()))
    assert [r["student"] for r in rows] == ["zoe", "notes"]
    assert rows[0]["notebook"] == "04_soft_target_kd" and rows[0]["maximum"] == "8"


def test_submissions_run_in_parallel(monkeypatch, tmp_path):
    threads = set()

    def fake(snap, *args):
        threads.add(threading.current_thread().name)
        time.sleep(0.2)  # long enough for the other worker to pick up a file
        return grade.Submission(str(snap.path), snap.path.stem, None, 0, 0)

    monkeypatch.setattr(grade, "_grade_snapshot", fake)
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"s{i}.ipynb")
        paths[-1].write_text("{}")
    rows = grade.grade(paths, jobs=2)
    assert [r.student for r in rows] == ["s0", "s1", "s2", "s3"]  # input order kept
    assert len(threads) == 2


def test_a_folder_is_searched_for_notebooks(monkeypatch, tmp_path):
    monkeypatch.setattr(
        grade,
        "_grade_snapshot",
        lambda s, *a: grade.Submission(str(s.path), s.path.stem, None, 0, 0),
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
def test_every_source_gets_full_marks_and_every_untouched_student_version_zero(tmp_path):
    sources = sorted((EXERCISES_DIR / "source").glob("*.ipynb"))
    students = []
    for src in sources:  # the class: one key and one untouched student version per notebook
        shutil.copy(src, _write_dir(tmp_path / "key") / src.name)
        shutil.copy(EXERCISES_DIR / src.name, _write_dir(tmp_path / "blank") / src.name)
        students.append(tmp_path / "blank" / src.name)
    keys = [tmp_path / "key" / src.name for src in sources]
    rows = grade.grade(keys + students, timeout=120, jobs=2)  # 04-09 train small models
    key_rows, blank_rows = rows[: len(keys)], rows[len(keys) :]
    for row in key_rows:
        detail = (row.path, row.problems, [e.message for e in row.exercises])
        assert row.problems == [], detail
        assert row.score == row.maximum > 0, detail
    total = sum(ex.points for ex in grade.EXERCISES.values())
    assert sum(r.maximum for r in key_rows) == total
    for row in blank_rows:
        assert (row.score, row.maximum > 0) == (0, True), (row.path, row.exercises)
        assert all(
            "not implemented yet" in e.message or "not defined" in e.message
            for e in row.exercises
            if e.exercise != "challenge"
        ), row.path
    board = grade.leaderboard(rows)
    assert [(e["student"], e["rank"]) for e in board] == [("key", 1)]
    challenge = next(e for r in key_rows for e in r.exercises if e.exercise == "challenge")
    budget = CHALLENGE["max_params"]
    assert board[0]["nonzero_params"] == challenge.measures["nonzero_params"] <= budget
    assert "challenge leaderboard" in grade.summary(rows, 1.0, 2)


def _write_dir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def _challenge_row(student, path, measures, points=3.0):
    score = grade.ExerciseScore("challenge", False, points, 3, "", measures)
    return grade.Submission(path, student, "09_compression_challenge", points, 3, [score])


def test_the_leaderboard_ranks_models_at_the_bar_by_nonzero_parameters(tmp_path):
    def m(n, acc, bar=True, budget=True):
        return {"nonzero_params": n, "accuracy": acc, "reached_bar": bar, "within_budget": budget}

    rows = [
        _challenge_row("ann", "a.ipynb", m(2_900, 0.961)),
        _challenge_row("ben", "b.ipynb", m(1_800, 0.957)),
        _challenge_row("cat", "c.ipynb", m(900, 0.90, bar=False), points=0),
        _challenge_row("dan", "d1.ipynb", m(6_000, 0.97, budget=False), points=1.0),
        _challenge_row("dan", "d2.ipynb", m(2_500, 0.958)),  # his better submission counts
        _challenge_row("eve", "e.ipynb", m(1_800, 0.957)),  # a tie with ben
        grade.Submission("f.ipynb", "fay", "02_soft_targets", 1, 1, []),
    ]
    board = grade.leaderboard(rows)
    assert [(e["rank"], e["student"], e["nonzero_params"]) for e in board] == [
        (1, "ben", 1_800),
        (1, "eve", 1_800),
        (3, "dan", 2_500),
        (4, "ann", 2_900),
        (None, "cat", 900),
    ]
    text = grade.summary(rows, 1.0, 1)
    assert "challenge leaderboard" in text and "(below the bar)" in text
    report = json.loads(grade.write_report(rows, tmp_path / "r.json").read_text())
    assert report["leaderboard"] == board
    table = list(csv.DictReader(grade.write_report(rows, tmp_path / "r.csv").open()))
    by_path = {r["path"]: r for r in table}
    assert by_path["d2.ipynb"]["challenge_rank"] == "3"
    assert by_path["d1.ipynb"]["challenge_rank"] == ""  # not the submission that counts
    assert by_path["d1.ipynb"]["challenge_nonzero_params"] == "6000"
    assert by_path["f.ipynb"]["challenge_accuracy"] == ""
    assert grade.leaderboard(rows[-1:]) == []


# --------------------------------------------------------------------------------------------
# Attacks: forged passes, sabotage, processes that outlive grading, resource abuse.
# Every attacker starts from the untouched student version (so any mark would be unearned)
# and adds one hostile cell; victims are graded after the attackers. The whole class runs as
# one batch, as an instructor would grade it.
FACTS = "import json, os, socket, threading, time\n"


def _hostile(cell_source):
    nb = nbformat.read(STUDENT, as_version=4)
    nb.cells.insert(_cells(nb, "def soften(") + 1, new_code_cell(cell_source))
    return nb


def _attacks(folder, keys, reports, marker):
    """Attack submissions, then victims; returns ``({name: path}, order)``."""
    victims = folder / "victims"
    bob = victims / "bob_02_soft_targets.ipynb"  # untouched student version
    carol = victims / "carol_02_soft_targets.ipynb"  # full solution, renamed by an attacker
    alice = victims / "alice_02_soft_targets.ipynb"  # full solution, graded last
    key_file = keys / "02_soft_targets.ipynb"
    attacks = {
        "replaced-check-exercise": (
            "import kdlib.course.checks as c\n"
            "def forged(exercise_id, namespace, quiet=True):\n"
            "    return c.CheckResult(exercise_id, True, 5, 5)\n"
            "c.check_exercise = forged\n"
            "for name, ex in list(c.EXERCISES.items()):\n"
            "    c.EXERCISES[name] = ex.__class__(ex.notebook, ex.name, forged, ex.points,"
            " ex.title)\n"
            "c.check_soften = lambda fn, **kw: c.CheckResult('soften', True, 5, 5)\n"
        ),
        "replaced-print": (
            "import builtins, json\n"
            "_real_print = builtins.print\n"
            "def print(*args, **kw):\n"
            "    text = ' '.join(map(str, args))\n"
            "    if '{' in text:\n"
            "        head, _, tail = text.partition('{')\n"
            "        text = head + json.dumps({'passed': True, 'score': 1.0,"
            " 'message': 'all checks passed'})\n"
            "    _real_print(text, **kw)\n"
            "builtins.print = print\n"
        ),
        "patched-allclose": (
            "import torch\n"
            "def soften(logits, T):\n"
            "    return torch.zeros_like(logits)\n"
            "torch.allclose = lambda *a, **k: True\n"
            "torch.isclose = lambda a, b, *x, **k: torch.ones_like(a, dtype=torch.bool)\n"
            "torch.equal = lambda *a, **k: True\n"
            "torch.Tensor.__eq__ = lambda a, b: torch.ones_like(a, dtype=torch.bool)\n"
        ),
        "report-daemon": (
            "import os, sys\n"
            f"code = '''\nimport time\nfor _ in range(60):\n    time.sleep(0.5)\n"
            f"    for p in {[str(r) for r in reports]!r}:\n"
            "        try:\n            open(p, 'w').write('forged')\n"
            "        except Exception:\n            pass\n'''\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    if os.fork() == 0:\n"
            f"        os.execv(sys.executable, [sys.executable, '-c', code, {marker!r}])\n"
            "    os._exit(0)\n"
        ),
        "writes-other-submission": (
            f"key = open({str(key_file)!r}).read()\nopen({str(bob)!r}, 'w').write(key)\n"
        ),
        "edits-answer-key": (
            "import json\n"
            f"nb = json.load(open({str(key_file)!r}))\n"
            "nb['cells'] = nb['cells'][:2]\n"
            f"json.dump(nb, open({str(key_file)!r}, 'w'))\n"
        ),
        "junk-answer-key": f"open({str(key_file)!r}, 'w').write('junk {{')\n",
        "renames-submission": f"import os\nos.rename({str(carol)!r}, {str(carol)!r} + '.x')\n",
        "kills-the-grader": (
            "import os, signal\n"
            f"for pid in ({os.getpid()}, os.getppid(), 1):\n"
            "    try:\n        os.kill(pid, signal.SIGKILL)\n"
            "    except OSError:\n        pass\n"
        ),
        "allocates-past-the-limit": (
            "import torch\nhog = torch.empty(6 * 2**30, dtype=torch.uint8)\n"
        ),
        "writes-a-huge-file": (
            "with open('big.bin', 'wb') as f:\n"
            "    for _ in range(200):\n        f.write(bytes(2**20))\n"
        ),
        "floods-its-output": "for _ in range(40):\n    print('x' * 2**20)\n",
        # What the sandbox lets it see and do, reported through an error message
        "probes-the-sandbox": (
            FACTS + "facts = {}\n"
            f"facts['key'] = os.path.exists({str(keys)!r})\n"
            f"facts['other'] = os.path.exists({str(bob)!r})\n"
            f"facts['repo'] = os.path.exists({str(EXERCISES_DIR)!r})\n"
            "try:\n"
            "    socket.create_connection(('1.1.1.1', 53), timeout=2)\n"
            "    facts['net'] = True\n"
            "except OSError:\n    facts['net'] = False\n"
            "try:\n"
            f"    open({str(folder / 'pwned')!r}, 'w')\n"
            "    facts['write'] = True\n"
            "except OSError:\n    facts['write'] = False\n"
            "n = 0\n"
            "try:\n"
            "    for n in range(1, 600):\n"
            "        threading.Thread(target=time.sleep, args=(3,), daemon=True).start()\n"
            "except RuntimeError:\n    pass\n"
            "facts['threads'] = n\n"
            "raise RuntimeError('facts ' + json.dumps(facts, separators=(',', ':')))\n"
        ),
    }
    subs = {}
    for i, (name, source) in enumerate(attacks.items()):
        subs[name] = _write(folder / f"mallory{i:02d}_02_soft_targets.ipynb", _hostile(source))
    subs["victim-bob"] = _write(bob, nbformat.read(STUDENT, as_version=4))
    subs["victim-carol"] = _write(carol, nbformat.read(SOURCE, as_version=4))
    subs["victim-alice"] = _write(alice, nbformat.read(SOURCE, as_version=4))
    return subs


def _processes_with(marker):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    if not sandbox.isolation()[0]:
        pytest.skip(f"needs bubblewrap: {sandbox.isolation()[1]}")
    folder = tmp_path_factory.mktemp("attacks")
    keys = folder / "keys"  # a copy of the answer keys, for attackers to aim at
    shutil.copytree(EXERCISES_DIR / "source", keys)
    reports = [folder / "grades.json", folder / "grades.csv"]
    marker = f"kdlib-attack-{os.getpid()}-{time.time_ns()}"
    subs = _attacks(folder, keys, reports, marker)
    files = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    order = list(subs)
    t0 = time.perf_counter()
    rows = grade.grade([subs[n] for n in order], timeout=TIMEOUT, jobs=2, key_dir=keys)
    wall = time.perf_counter() - t0
    survivors = _processes_with(marker)  # right after grading returned
    for r in reports:
        grade.write_report(rows, r, wall)
    written = {r: r.read_bytes() for r in reports}
    time.sleep(2)  # a daemon that outlived grading would strike now
    return {
        "subs": subs,
        "rows": dict(zip(order, rows, strict=True)),
        "files": files,
        "folder": folder,
        "survivors": survivors,
        "written": written,
    }


def _row(attacked, name):
    return attacked["rows"][name]


def _problems(row):
    return " | ".join(row.problems)


@pytest.mark.slow
def test_every_submission_gets_a_row_and_no_file_is_damaged(attacked):
    assert len(attacked["rows"]) == len(attacked["subs"])
    for path, data in attacked["files"].items():  # submissions and answer keys alike
        assert path.exists() and path.read_bytes() == data, path
    assert not (attacked["folder"] / "pwned").exists()
    assert all(r.sandboxed for r in attacked["rows"].values())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["replaced-check-exercise", "replaced-print", "patched-allclose"])
def test_a_forged_pass_earns_nothing(attacked, name):
    row = _row(attacked, name)
    assert (row.score, row.maximum) == (0, 1), row
    assert not row.exercises[0].passed


@pytest.mark.slow
def test_patched_allclose_is_judged_on_what_the_function_returned(attacked):
    message = _row(attacked, "patched-allclose").exercises[0].message
    assert "check 1 of 5" in message and "got:      [[0.0, 0.0, 0.0]]" in message


@pytest.mark.slow
def test_no_attacker_earns_a_mark_and_every_victim_is_graded_on_its_own_file(attacked):
    rows = attacked["rows"]
    for name, row in rows.items():
        if not name.startswith("victim"):
            assert row.score == 0, (name, row)
    assert rows["victim-bob"].score == 0  # an attacker wrote the answer key into bob's file
    for name in ("victim-carol", "victim-alice"):  # renamed; answer key edited and junked
        assert (rows[name].score, rows[name].problems) == (1, []), rows[name]


@pytest.mark.slow
def test_a_daemon_neither_outlives_grading_nor_rewrites_the_report(attacked):
    assert attacked["survivors"] == []
    assert _processes_with(attacked["subs"]["report-daemon"].name) == []
    for path, data in attacked["written"].items():
        assert path.read_bytes() == data, path
    assert json.loads(attacked["written"][attacked["folder"] / "grades.json"])["submissions"]


@pytest.mark.slow
def test_killing_the_grader_ends_only_that_submission(attacked):
    row = _row(attacked, "kills-the-grader")
    assert row.score == 0
    assert "the sandbox ended without its report" in _problems(row)


@pytest.mark.slow
def test_allocating_past_the_memory_limit_gets_a_row_saying_so(attacked):
    row = _row(attacked, "allocates-past-the-limit")
    assert row.score == 0
    assert "ran out of memory: it tried to allocate past the limit of 4,096 MB" in _problems(row)


@pytest.mark.slow
def test_output_and_file_size_are_bounded(attacked):
    assert "File too large" in _problems(_row(attacked, "writes-a-huge-file"))
    assert len(_row(attacked, "floods-its-output").problems) >= 1  # its stub raised; no hang


@pytest.mark.slow
def test_inside_the_sandbox_keys_other_files_and_network_are_out_of_reach(attacked):
    problems = _problems(_row(attacked, "probes-the-sandbox"))
    facts = json.loads(problems.split("RuntimeError: facts ")[1].split(" | ")[0])
    assert facts["key"] is False and facts["other"] is False and facts["repo"] is False
    assert facts["net"] is False and facts["write"] is False
    assert facts["threads"] < sandbox.Limits().processes  # the process limit holds


@pytest.mark.slow
def test_without_bubblewrap_it_grades_anyway_and_says_what_is_not_enforced(
    monkeypatch, tmp_path, capsys
):
    monkeypatch.setattr(sandbox, "_bwrap_problem", lambda: "bubblewrap (bwrap) is not installed")
    full = _write(tmp_path / "alice_02_soft_targets.ipynb", nbformat.read(SOURCE, as_version=4))
    forged = _write(
        tmp_path / "mallory_02_soft_targets.ipynb",
        _hostile(
            "import kdlib.course.checks as c\n"
            "c.check_exercise = lambda *a, **k: c.CheckResult('soften', True, 5, 5)\n"
        ),
    )
    rows = grade.grade([full, forged], timeout=TIMEOUT, jobs=2)
    warning = capsys.readouterr().err
    assert "WARNING: no sandbox (bubblewrap (bwrap) is not installed)" in warning
    assert "NOT enforced: separate PID namespace" in warning
    assert [(r.score, r.sandboxed) for r in rows] == [(1, False), (0, False)]
    assert "NOT enforced" in grade.summary(rows, 1.0, 2)


def test_a_file_is_identified_by_its_code_when_metadata_and_name_disagree(tmp_path):
    key = nbformat.read(SOURCE, as_version=4)
    key.metadata["kdlib"]["exercise"] = "04_soft_target_kd"
    assert grade._identify(key, tmp_path / "x_02_soft_targets.ipynb")[0] == "02_soft_targets"
    kd = nbformat.read(EXERCISES_DIR / "04_soft_target_kd.ipynb", as_version=4)
    kd.metadata["kdlib"]["exercise"] = "04_soft_target_kd"
    found, warnings = grade._identify(kd, tmp_path / "x_02_soft_targets.ipynb")
    assert found == "04_soft_target_kd" and "graded as 04_soft_target_kd" in warnings[0]
    assert grade._identify(key, tmp_path / "notes.ipynb") == ("04_soft_target_kd", [])


def test_cells_are_matched_by_id_or_content(tmp_path):
    key = nbformat.read(SOURCE, as_version=4)
    nb = copy.deepcopy(key)
    for cell in nb.cells:
        cell.id = "x" + cell.id[1:] if cell.id else "x"
    assert grade._missing_cells(nb, key) == []
    gone = _cells(nb, "check_soften(soften)")
    del nb.cells[gone]
    assert grade._missing_cells(nb, key) == [f"cell {gone + 1} (check_soften(soften))"]


# --------------------------------------------------------------------------------------------
# 12 fake quantization: graded end to end (sandbox, record, replay), gradients included
_FAKE_QUANT_MISTAKES = {
    "no-clamp": (
        "    q = torch.round(x / scale) + zero_point\n    return scale * (q - zero_point)",
        "never clamp",
    ),
    "zero-point-off-by-one": (
        "    r = x / scale\n"
        "    r = r + (torch.round(r) - r).detach()\n"
        "    q = torch.clamp(r + zero_point + 1, qmin, qmax)\n"
        "    return scale * (q - zero_point)",
        "zero-point is off by one",
    ),
    "round-gradient-zero": (
        "    q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)\n"
        "    return scale * (q - zero_point)",
        "gradient of round is left at zero",
    ),
}


@pytest.mark.slow
def test_fake_quant_key_full_marks_stub_zero_and_each_named_mistake_recognised(tmp_path):
    name = "12_fake_quant.ipynb"
    key = nbformat.read(EXERCISES_DIR / "source" / name, as_version=4)
    cell = next(
        c for c in key.cells if c.metadata.get("kdlib", {}).get("exercise") == "fake_quant"
    )
    paths = {
        "key": _write(tmp_path / "key" / name, key),
        "blank": _write(
            tmp_path / "blank" / name, nbformat.read(EXERCISES_DIR / name, as_version=4)
        ),
    }
    for student, (body, _) in _FAKE_QUANT_MISTAKES.items():
        nb = copy.deepcopy(key)
        target = next(c for c in nb.cells if c.id == cell.id)
        target.source = "def fake_quant(x, scale, zero_point, qmin, qmax):\n" + body
        paths[student] = _write(tmp_path / student / name, nb)
    order = list(paths)
    rows = dict(
        zip(order, grade.grade([paths[n] for n in order], timeout=60, jobs=2), strict=True)
    )
    assert (rows["key"].score, rows["key"].maximum, rows["key"].problems) == (4, 4, [])
    assert (rows["blank"].score, rows["blank"].maximum) == (0, 4)
    for student, (_, hint) in _FAKE_QUANT_MISTAKES.items():
        row = rows[student]
        fq = next(e for e in row.exercises if e.exercise == "fake_quant")
        assert not fq.passed and hint in fq.message, (student, fq.message)
        assert row.score == 1  # the question still earns its point
