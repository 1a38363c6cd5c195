"""Grade exercise submissions: ``python -m kdlib.course.grade SUBMISSIONS... [--timeout S]
[--report out.json|out.csv] [--jobs N] [--memory MB]``.

Grading is built so that a submission can neither forge its marks nor harm the batch.

1. **Snapshots first.** Before any student code runs, every submitted file and every answer key
   is read once, copied into the grader's private temporary folder and hashed (SHA-256).
   Everything after works from these snapshots; a submitted file is only ever read.
2. **One sandbox per submission** (:mod:`kdlib.course.sandbox`): the notebook runs, cell by cell,
   in a fresh kernel (``nbclient``) inside bubblewrap, with its own PID namespace, no network, a
   read-only view of Python and kdlib only, and limits on memory, CPU time, processes and file
   size. A cell that raises (a syntax error included) is recorded and the next one runs; a cell
   that runs longer than ``--timeout`` seconds is interrupted; cells after
   ``--notebook-timeout`` seconds are not run; a sandbox still alive after all of that is
   killed with every process in it. Where bubblewrap is unavailable, the grader says loudly
   what is not enforced and grades anyway.
3. **Verdicts outside the sandbox** (:mod:`kdlib.course.record`): in the kernel, each exercise's
   checker calls the learner's function on its fixed inputs and only the outputs are written
   out, as data. The grader's own process replays them to the same checker and computes the
   verdict, so patching the checker, ``print`` or ``torch.allclose`` in the kernel changes
   nothing.
4. **A row for every file.** An unreadable file, a crashed kernel, a killed sandbox, an unknown
   notebook or a grader error becomes that file's row with a reason. The grader also warns
   about two submissions of one notebook by one student, a notebook whose metadata disagrees
   with its file name, and cells deleted compared with the answer key (matched by id, or by
   content when ids changed). The report is written at the end, from the grader's memory,
   atomically; the temporary folder is removed whatever happened.

Each row has points per exercise, the total and the reasons for lost points; then come
totals per student, the compression challenge's leaderboard (models at its accuracy bar,
ranked by nonzero parameters) and the wall time of the whole run. ``--report`` writes JSON
or CSV.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import queue
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..validate import atomic_path
from . import sandbox
from .checks import EXERCISES
from .exercises import EXERCISES_DIR

__all__ = [
    "ExerciseScore",
    "Submission",
    "grade",
    "grade_one",
    "write_report",
    "summary",
    "students",
    "leaderboard",
]

NOTEBOOKS: list[str] = sorted({ex.notebook for ex in EXERCISES.values()})
_WARM_UP_TIMEOUT = 300  # seconds for the kernel to import torch and kdlib, however busy
_MAX_NOTEBOOK = 64 * 2**20  # bytes: a larger submission is not run
_MAX_RUN_REPORT = 2**20  # bytes of the sandbox's own report that the grader reads
_MAX_PROBLEMS = 40  # problems kept from one sandbox's report


@dataclass
class ExerciseScore:
    """One exercise of one submission."""

    exercise: str  # exercise id, a key of kdlib.course.checks.EXERCISES
    passed: bool  # every check passed
    points: float  # points earned
    max_points: int  # points available
    message: str  # what the checker said (or why it could not run)
    measures: dict = field(default_factory=dict)  # the challenge's size and accuracy


@dataclass
class Submission:
    """One graded notebook: a row of the report."""

    path: str  # the submitted file, as given
    student: str  # from the file or folder name
    notebook: str | None  # exercise notebook it answers, e.g. "04_soft_target_kd"
    score: float  # points earned
    maximum: int  # points available
    exercises: list[ExerciseScore] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # why points may be lost, and warnings
    seconds: float = 0.0  # time spent grading it
    sha256: str = ""  # of the submitted file, when it was snapshotted
    sandboxed: bool = False  # ran under bubblewrap (see kdlib.course.sandbox)
    cpu_seconds: float = 0.0  # CPU time of its runner and kernel, as the sandbox measured it


@dataclass
class _Snapshot:
    """A submission as read once, before any student code ran."""

    path: Path  # as given
    data: bytes | None  # its bytes (None: could not be read)
    sha256: str  # of data
    copy: Path | None  # the snapshot copy in the grader's private folder
    error: str = ""  # why it could not be read


@dataclass
class _Options:
    timeout: float
    notebook_timeout: float
    jobs: int
    limits: sandbox.Limits
    keys: dict  # answer keys: notebook stem -> parsed notebook (None: no comparison)


# --------------------------------------------------------------------------------------------
# Snapshots
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _snapshot(paths: Sequence[Path], folder: Path) -> list[_Snapshot]:
    """Read every file once and keep a copy and its hash; a file that cannot be read gets
    its reason instead (it becomes a row, never an exception)."""
    snaps = []
    for i, path in enumerate(paths):
        try:
            if path.stat().st_size > _MAX_NOTEBOOK:
                raise ValueError(f"larger than {_MAX_NOTEBOOK // 2**20} MB")
            data = path.read_bytes()
        except (OSError, ValueError) as e:
            snaps.append(_Snapshot(path, None, "", None, f"{type(e).__name__}: {e}"))
            continue
        copy = folder / f"{i:04d}.ipynb"
        copy.write_bytes(data)
        copy.chmod(stat.S_IRUSR)
        snaps.append(_Snapshot(path, data, _sha256(data), copy))
    return snaps


def _answer_keys(key_dir: Path | None) -> tuple[dict, dict[str, str]]:
    """Parse the answer keys once, before any student code runs: ``({stem: notebook},
    {stem: sha256})``. A key that cannot be read is left out (cells are then not compared)."""
    import nbformat

    keys, hashes = {}, {}
    if key_dir is None or not Path(key_dir).is_dir():
        return keys, hashes
    for stem in NOTEBOOKS:
        try:
            data = (Path(key_dir) / f"{stem}.ipynb").read_bytes()
            keys[stem] = nbformat.reads(data.decode("utf-8"), as_version=4)
            hashes[stem] = _sha256(data)
        except Exception:  # a missing or broken key: that comparison is skipped
            continue
    return keys, hashes


# --------------------------------------------------------------------------------------------
# Which notebook, which student, which cells
def _defines(nb, notebook: str) -> bool:
    """Does the notebook's code define every exercise name of exercise notebook ``notebook``?
    (Answers to questions are left out: a student version leaves them undefined.)"""
    code = "\n".join(c.source for c in nb.cells if c.get("cell_type") == "code")
    names = [
        ex.name for ex in EXERCISES.values() if ex.notebook == notebook and ex.kind != "answer"
    ]
    return all(
        re.search(rf"^\s*(def\s+{re.escape(n)}\s*\(|{re.escape(n)}\s*=)", code, re.M)
        for n in names
    )


def _from_name(path: Path) -> str | None:
    for stem in sorted(NOTEBOOKS, key=len, reverse=True):
        if stem in path.name:
            return stem
    return None


def _identify(nb, path: Path) -> tuple[str | None, list[str]]:
    """Which exercise notebook a submission answers, and warnings when its metadata, its file
    name and its code disagree (the code decides between the first two)."""
    meta = nb.get("metadata", {}).get("kdlib", {}) if nb is not None else {}
    by_meta = meta.get("exercise") if isinstance(meta, dict) else None
    by_meta = by_meta if by_meta in NOTEBOOKS else None
    by_name = _from_name(path)
    if by_meta is None or by_name is None or by_meta == by_name:
        return by_meta or by_name, []
    if nb is not None and _defines(nb, by_meta) and not _defines(nb, by_name):
        chosen = by_meta
    else:
        chosen = by_name
    return chosen, [
        f"mismatch: its metadata says {by_meta} but its file name says {by_name}; graded as "
        f"{chosen}, the notebook whose exercises its code defines"
    ]


def _student(path: Path, notebook: str | None) -> str:
    """``alice/04_x.ipynb`` → alice; ``alice_04_x.ipynb`` → alice; otherwise the file stem."""
    stem = path.stem
    named = _from_name(path) or notebook
    if named and stem == named:
        return path.resolve().parent.name
    if named and named in stem:
        name = stem.replace(named, "").strip("_-. ")
        return name or path.resolve().parent.name
    return stem


def _first_line(source: str) -> str:
    return next((line.strip() for line in source.splitlines() if line.strip()), "")


def _missing_cells(nb, key) -> list[str]:
    """Code cells of the answer key that the submission lacks: matched by cell id, or, where
    ids were regenerated, by their first line or their whole source."""
    if key is None:
        return []
    ids = {c.get("id") for c in nb.cells} - {None}
    code = [c.source for c in nb.cells if c.get("cell_type") == "code"]
    firsts = {_first_line(s) for s in code} - {""}
    sources = {s.strip() for s in code}
    missing = []
    for index, cell in enumerate(key.cells, start=1):
        if cell.cell_type != "code" or cell.get("id") in ids:
            continue
        if _first_line(cell.source) in firsts or cell.source.strip() in sources:
            continue
        missing.append(f"cell {index} ({_first_line(cell.source)[:40]})")
    return missing


# --------------------------------------------------------------------------------------------
# Inside the sandbox: run the notebook, record the learner's outputs
def _grading_cell(exercise_id: str, out_dir: str) -> str:
    # A fresh import under an underscored name; whatever the kernel patched, only data leaves.
    return (
        "from kdlib.course.record import record_exercise as _kdlib_record_exercise\n"
        f"_kdlib_record_exercise({exercise_id!r}, globals(), {out_dir!r})"
    )


def _kernel_env(jobs: int, job_dir: Path | None = None) -> dict[str, str]:
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
        "LANG": "C.UTF-8",
        "KDLIB_PROGRESS": "0",  # no progress bars in a grading log
        "KDLIB_DEVICE": "cpu",
        "MPLBACKEND": "Agg",  # plots render nowhere
        "OMP_NUM_THREADS": str(threads),  # parallel kernels share the cores
        "MKL_NUM_THREADS": str(threads),
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "MALLOC_ARENA_MAX": "2",  # fewer malloc arenas: less address space per thread
    }
    if job_dir is not None:  # everything a kernel writes stays in the job's folder
        for name, sub in (
            ("HOME", "home"),
            ("TMPDIR", "tmp"),
            ("IPYTHONDIR", "home/.ipython"),
            ("JUPYTER_RUNTIME_DIR", "tmp/jupyter"),
            ("JUPYTER_CONFIG_DIR", "home/.jupyter"),
            ("MPLCONFIGDIR", "tmp/matplotlib"),
            ("KDLIB_CACHE", "home/.cache/kdlib"),
        ):
            env[name] = str(job_dir / sub)
    return env


def _error(cell) -> str | None:
    """``"Name: first line of the message"`` of a cell's error output, if it has one."""
    errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    if not errors:
        return None
    ename, evalue = errors[0].get("ename", "Error"), str(errors[0].get("evalue", ""))
    evalue = evalue.strip().splitlines()[0][:120] if evalue.strip() else ""
    return f"{ename}: {evalue}" if evalue else ename


_OUT_OF_MEMORY = re.compile(r"^MemoryError|can't allocate memory|not enough memory|std::bad_alloc")


def _cell_problem(number: int, cell, timed_out: str | None = None, memory_mb: int = 0):
    if timed_out:
        return f"cell {number} {timed_out}"
    error = _error(cell)
    if error is None:
        return None
    ename, _, evalue = error.partition(": ")
    if ename in ("SyntaxError", "IndentationError", "TabError"):
        return f"cell {number} has a syntax error: {evalue}"
    if _OUT_OF_MEMORY.search(error):
        return (
            f"cell {number} ran out of memory: it tried to allocate past the limit of "
            f"{memory_mb:,} MB per process ({_clip(error, 80)})"
        )
    return f"cell {number} raised {error}"


def _execute(nb, exercise_ids: list[str], work: Path, out: Path, options: dict) -> dict:
    """Inside the sandbox: run notebook ``nb`` in a fresh kernel whose folder is ``work``,
    then one recording cell per exercise (writing to ``out``).

    Returns:
        ``{"problems": [...], "why": {exercise id: why it left no record}}``.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    timeout, notebook_timeout = options["timeout"], options["notebook_timeout"]
    memory_mb = options.get("memory_mb", 0)
    problems: list[str] = []
    why: dict[str, str] = {}
    n_cells = len(nb.cells)
    # Warm-up first: torch and kdlib load before any timed cell, so a slow import on a busy
    # machine is never mistaken for the learner's code running too long.
    warm = nbformat.v4.new_code_cell("import kdlib.course.checks, kdlib.course.record")
    warm.metadata["kdlib_grader"] = "warm-up"
    grading = [nbformat.v4.new_code_cell(_grading_cell(i, str(out))) for i in exercise_ids]
    nb.cells.extend([warm, *grading])  # nbclient addresses cells by index in nb

    def cell_timeout(cell) -> int:
        if cell.metadata.get("kdlib_grader") == "warm-up":
            return _WARM_UP_TIMEOUT
        return max(1, int(round(timeout)))

    timed_out: dict[int, str] = {}  # cell index -> why, for cells stopped by the timeout

    def on_executed(cell, cell_index, execute_reply):
        content = (execute_reply or {}).get("content", {})
        if content.get("ename") == "CellTimeoutError":
            timed_out[cell_index] = content.get("evalue", "timed out")

    client = NotebookClient(
        nb,
        timeout_func=cell_timeout,
        on_cell_executed=on_executed,
        kernel_name="python3",
        allow_errors=True,
        interrupt_on_timeout=True,
        error_on_timeout={
            "ename": "CellTimeoutError",
            "evalue": f"ran longer than {timeout:g} s and was interrupted",
            "traceback": [],
        },
        resources={"metadata": {"path": str(work)}},
    )
    try:
        # The kernel's own log (e.g. ipykernel's warnings) would only clutter the report.
        with client.setup_kernel(env=dict(os.environ), cwd=str(work), stderr=subprocess.DEVNULL):
            client.execute_cell(warm, n_cells)
            if _error(warm):
                problems.append(f"kdlib could not be imported in the kernel: {_error(warm)}")
            deadline = time.monotonic() + notebook_timeout
            for index, cell in enumerate(nb.cells[:n_cells]):
                if cell.cell_type != "code":
                    continue
                if time.monotonic() > deadline:
                    problems.append(
                        f"stopped after {notebook_timeout:g} s: cells from {index + 1} "
                        "on were not run"
                    )
                    break
                client.execute_cell(cell, index)
                problem = _cell_problem(index + 1, cell, timed_out.get(index), memory_mb)
                if problem:
                    problems.append(problem)
            for index, (exercise_id, cell) in enumerate(
                zip(exercise_ids, grading, strict=True), start=n_cells + 1
            ):
                client.execute_cell(cell, index)
                if timed_out.get(index) or _error(cell):
                    why[exercise_id] = timed_out.get(index) or _error(cell) or "no result"
    except DeadKernelError:
        problems.append(
            "the kernel died (the notebook exited Python, crashed, was killed or ran past its "
            "CPU-time limit); exercises not checked by then score 0"
        )
    except Exception as e:  # the kernel could not start, or nbclient failed
        problems.append(f"could not run the notebook: {type(e).__name__}: {e}")
    return {"problems": problems, "why": why}


def _inside(spec_json: str) -> int:
    """The sandbox's entry point: run one submission and write ``run.json`` for the grader."""
    import nbformat

    spec = json.loads(spec_json)
    job = Path(spec["job"])
    nb = nbformat.read(job / "in" / spec["name"], as_version=4)
    report = _execute(nb, spec["exercises"], job / "work", job / "out", spec)
    report["cpu_seconds"] = _cpu_seconds()  # the runner and its (finished) kernel
    with atomic_path(job / "out" / "run.json") as tmp:
        tmp.write_text(json.dumps(report), encoding="utf-8")
    return 0


# --------------------------------------------------------------------------------------------
# In the grader: one submission
def _read_run_report(path: Path) -> dict | None:
    """What the runner in the sandbox said (problems only: marks never come from here)."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > _MAX_RUN_REPORT:
            return None
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict):
        return None
    problems = report.get("problems")
    why = report.get("why")
    cpu = report.get("cpu_seconds")
    return {
        "cpu_seconds": float(cpu) if isinstance(cpu, (int, float)) and 0 <= cpu < 1e7 else 0.0,
        "problems": [_clip(str(p), 300) for p in problems[:_MAX_PROBLEMS]]
        if isinstance(problems, list)
        else [],
        "why": {str(k): _clip(str(v), 200) for k, v in why.items()}
        if isinstance(why, dict)
        else {},
    }


def _run_sandboxed(
    snap: _Snapshot,
    nb_name: str,
    exercise_ids: list[str],
    options: _Options,
    work_root: Path,
    slot: int,
) -> tuple[dict[str, dict], list[str], bool, float]:
    """Run one snapshot in its sandbox; replay its records here.

    Returns:
        ``({exercise id: verdict as a dict}, [problems], ran under bubblewrap, CPU seconds
        the sandbox measured)``.
    """
    from .record import RecordError, replay_exercise

    job = Path(tempfile.mkdtemp(prefix="job-", dir=work_root))
    log = work_root / f"{job.name}.log"  # outside the sandbox's view
    try:
        for sub in ("in", "out", "work", "home", "tmp"):
            (job / sub).mkdir()
        (job / "in" / nb_name).write_bytes(snap.data)
        spec = {
            "job": str(job),
            "name": nb_name,
            "exercises": exercise_ids,
            "timeout": options.timeout,
            "notebook_timeout": options.notebook_timeout,
            "memory_mb": options.limits.memory_mb,
        }
        wall = (
            _WARM_UP_TIMEOUT
            + options.notebook_timeout
            + len(exercise_ids) * (options.timeout + 5)
            + 60
        )
        outcome = sandbox.run(
            [sys.executable, "-m", "kdlib.course.grade", "--inside", json.dumps(spec)],
            job,
            env=_kernel_env(options.jobs, job),
            limits=options.limits,
            wall_seconds=wall,
            output=log,
            slot=slot,
        )
        problems: list[str] = []
        report = _read_run_report(job / "out" / "run.json")
        if outcome.timed_out:
            problems.append(
                f"stopped after {wall:g} s of wall time: the sandbox was killed with every "
                "process in it"
            )
        if report is None:
            problems.append(
                "the sandbox ended without its report (exit code "
                f"{outcome.returncode}): the notebook killed its runner, or ran out of memory "
                "or CPU time; exercises without a record score 0"
            )
            report = {"problems": [], "why": {}, "cpu_seconds": 0.0}
        problems = report["problems"] + problems
        results: dict[str, dict] = {}
        for exercise_id in exercise_ids:
            try:
                verdict = replay_exercise(exercise_id, job / "out")
            except RecordError as e:
                verdict = {"passed": False, "score": 0.0, "message": f"bad record: {e}"}
            except Exception as e:  # a replay bug must not cost the other exercises
                verdict = {
                    "passed": False,
                    "score": 0.0,
                    "message": f"could not be replayed: {type(e).__name__}: {str(e)[:200]}",
                }
            if verdict is None:
                why = report["why"].get(exercise_id, "no result")
                verdict = {
                    "passed": False,
                    "score": 0.0,
                    "message": f"could not be checked: {why}",
                }
            results[exercise_id] = verdict
        return results, problems, outcome.isolated, report["cpu_seconds"]
    finally:
        _remove(job)
        _remove(log)


def _remove(path: Path) -> None:
    """Remove a file or folder, whatever the sandbox left in it (read-only modes included)."""

    def retry(func, p, _exc):
        try:
            os.chmod(p, stat.S_IRWXU)
            func(p)
        except OSError:
            pass

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, onerror=retry)
    else:
        try:
            path.unlink()
        except OSError:
            pass


def _grade_snapshot(snap: _Snapshot, options: _Options, work_root: Path, slot: int = 0):
    """Grade one snapshot. Never raises: whatever goes wrong becomes the row's reason."""
    import nbformat

    t0 = time.perf_counter()
    row = Submission(str(snap.path), snap.path.stem, None, 0.0, 0, sha256=snap.sha256)
    try:
        nb = None
        if snap.data is None:
            row.problems.append(f"could not be read: {snap.error}")
        else:
            try:
                nb = nbformat.reads(snap.data.decode("utf-8"), as_version=4)
            except Exception as e:  # not JSON, not a notebook, not UTF-8
                row.problems.append(f"not a readable notebook: {type(e).__name__}: {str(e)[:120]}")
        notebook, warnings = _identify(nb, snap.path)
        row.notebook, row.student = notebook, _student(snap.path, notebook)
        row.problems += warnings
        if notebook is None and nb is not None:
            row.problems.append(
                "unknown exercise notebook: its metadata names none and its file name "
                f"contains none of {', '.join(NOTEBOOKS)}"
            )
        exercise_ids = [i for i, ex in EXERCISES.items() if ex.notebook == notebook]
        row.maximum = sum(EXERCISES[i].points for i in exercise_ids)
        results: dict[str, dict] = {}
        if nb is not None and notebook is not None:
            missing = _missing_cells(nb, options.keys.get(notebook))
            if missing:
                row.problems.append(
                    "cells missing compared with the released notebook: " + ", ".join(missing)
                )
            nb_name = re.sub(r"[^\w.-]", "_", snap.path.name) or "submission.ipynb"
            results, problems, row.sandboxed, row.cpu_seconds = _run_sandboxed(
                snap, nb_name, exercise_ids, options, work_root, slot
            )
            row.problems += problems
        for exercise_id in exercise_ids:
            ex = EXERCISES[exercise_id]
            r = results.get(exercise_id)
            if r is None:
                r = {"passed": False, "score": 0.0, "message": "not checked (see problems)"}
            points = round(ex.points * min(1.0, max(0.0, float(r.get("score") or 0.0))), 2)
            row.exercises.append(
                ExerciseScore(
                    exercise_id,
                    bool(r.get("passed")),
                    points,
                    ex.points,
                    str(r["message"]),
                    _measures(r.get("measures")),
                )
            )
        row.score = round(sum(e.points for e in row.exercises), 2)
    except Exception as e:  # a grader bug on one file must not stop the batch
        row.problems.append(f"the grader failed on this file: {type(e).__name__}: {e}")
        row.score = 0.0
        for e_ in row.exercises:
            e_.points, e_.passed = 0.0, False
    row.seconds = time.perf_counter() - t0
    return row


def _measures(value) -> dict:
    """The numbers a verdict reports for the leaderboard (computed in this process)."""
    if not isinstance(value, dict):
        return {}
    return {
        str(k): v
        for k, v in value.items()
        if isinstance(v, (bool, int, float)) and (not isinstance(v, float) or v == v)
    }


def _duplicates(rows: Sequence[Submission]) -> None:
    """Warn on every row of a student who submitted one notebook more than once."""
    groups: dict[tuple[str, str], list[Submission]] = {}
    for r in rows:
        if r.notebook:
            groups.setdefault((r.student, r.notebook), []).append(r)
    for (student, notebook), group in groups.items():
        if len(group) > 1:
            paths = ", ".join(r.path for r in group)
            for r in group:
                r.problems.append(
                    f"duplicate: {student} submitted {notebook} {len(group)} times ({paths}); "
                    "the totals per student count the best of them"
                )


def _options(timeout, jobs, notebook_timeout, key_dir, memory_mb) -> _Options:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    if notebook_timeout is not None and not notebook_timeout > 0:
        raise ValueError(f"notebook_timeout must be > 0 seconds, got {notebook_timeout!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    try:
        limits = sandbox.Limits(memory_mb=memory_mb)
    except ValueError as e:
        raise ValueError(f"memory_mb: {e}") from None
    keys, _ = _answer_keys(Path(key_dir) if key_dir else None)
    return _Options(timeout, notebook_timeout or 5 * timeout, jobs, limits, keys)


def grade_one(
    path: str | os.PathLike,
    timeout: float = 60,
    notebook_timeout: float | None = None,
    key_dir: str | os.PathLike | None = EXERCISES_DIR / "source",
    jobs: int = 1,
    memory_mb: int = sandbox.Limits.memory_mb,
) -> Submission:
    """Grade one submitted notebook (snapshotted first, never written); see :func:`grade`."""
    return grade([path], timeout, jobs, notebook_timeout, key_dir, memory_mb)[0]


def _expand(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given; folders searched for notebooks (checkpoints skipped)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"no such submission file or folder: {p}")
    return found


def grade(
    paths: Sequence[str | os.PathLike],
    timeout: float = 60,
    jobs: int | None = None,
    notebook_timeout: float | None = None,
    key_dir: str | os.PathLike | None = EXERCISES_DIR / "source",
    memory_mb: int = sandbox.Limits.memory_mb,
) -> list[Submission]:
    """Grade submissions in parallel, each in its own sandbox; one :class:`Submission` per
    notebook, in input order.

    Args:
        paths: notebooks, or folders to search for ``*.ipynb``.
        timeout: seconds a cell may run before it is interrupted (> 0).
        jobs: submissions graded at once (default: CPU count).
        notebook_timeout: seconds a whole notebook may run (default ``5 × timeout``).
        key_dir: answer keys, to report deleted cells (``None``: don't compare).
        memory_mb: address space per sandboxed process, in MB.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: no notebooks found, ``timeout``, ``jobs`` or ``memory_mb`` not positive.
    """
    jobs = (os.cpu_count() or 1) if jobs is None else jobs
    options = _options(timeout, jobs, notebook_timeout, key_dir, memory_mb)
    files = _expand(paths)
    if not files:
        raise ValueError(f"no notebooks (*.ipynb) found in {', '.join(map(str, paths))}")
    options.jobs = jobs = min(jobs, len(files))
    isolated, message = sandbox.isolation()
    if not isolated:
        print(message, file=sys.stderr)
    work_root = Path(tempfile.mkdtemp(prefix="kdlib-grade-"))
    try:
        snap_dir = work_root / "snapshots"
        snap_dir.mkdir(mode=0o700)
        snaps = _snapshot(files, snap_dir)
        slots: queue.Queue[int] = queue.Queue()
        for s in range(jobs):
            slots.put(s)

        def one(snap: _Snapshot) -> Submission:
            slot = slots.get()
            try:
                return _grade_snapshot(snap, options, work_root, slot)
            finally:
                slots.put(slot)

        if jobs == 1:
            rows = [one(s) for s in snaps]
        else:
            with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="kdlib-grade") as pool:
                rows = list(pool.map(one, snaps))
        for snap, row in zip(snaps, rows, strict=True):
            if snap.copy is not None and _sha256(snap.copy.read_bytes()) != snap.sha256:
                row.problems.append("its snapshot changed during grading (graded from memory)")
        _duplicates(rows)
        return rows
    finally:
        _remove(work_root)


# --------------------------------------------------------------------------------------------
def students(rows: Sequence[Submission]) -> dict[str, dict[str, float]]:
    """Total points per student: the best submission of each notebook counts (duplicates are
    warned about in their rows), every unidentified file counts on its own."""
    best: dict[tuple[str, str], Submission] = {}
    for i, r in enumerate(rows):
        key = (r.student, r.notebook or f"?{i}")
        if key not in best or r.score > best[key].score:
            best[key] = r
    totals: dict[str, dict[str, float]] = {}
    for r in best.values():
        t = totals.setdefault(r.student, {"score": 0.0, "maximum": 0, "submissions": 0})
        t["score"] = round(t["score"] + r.score, 2)
        t["maximum"] += r.maximum
        t["submissions"] += 1
    return dict(sorted(totals.items()))


def leaderboard(rows: Sequence[Submission]) -> list[dict]:
    """The compression challenge's ranking: one entry per student (their best submission).

    Models that reach the accuracy bar come first, ranked by nonzero parameters (fewest
    first; equal counts by accuracy, and still equal ones share a rank); then the others,
    unranked (``rank`` None), by accuracy. Each entry: ``rank``, ``student``, ``path``,
    ``nonzero_params``, ``accuracy``, ``reached_bar``, ``within_budget``, ``points``.
    """
    best: dict[str, dict] = {}
    for r in rows:
        for e in r.exercises:
            m = e.measures
            if e.exercise != "challenge" or "nonzero_params" not in m or "accuracy" not in m:
                continue
            entry = {
                "rank": None,
                "student": r.student,
                "path": r.path,
                "nonzero_params": int(m["nonzero_params"]),
                "accuracy": float(m["accuracy"]),
                "reached_bar": bool(m.get("reached_bar")),
                "within_budget": bool(m.get("within_budget")),
                "points": e.points,
            }
            old = best.get(r.student)
            if old is None or _board_key(entry) < _board_key(old):
                best[r.student] = entry
    board = sorted(best.values(), key=_board_key)
    previous, rank = None, 0
    for i, entry in enumerate(board, start=1):
        if not entry["reached_bar"]:
            break
        key = (entry["nonzero_params"], entry["accuracy"])
        if key != previous:
            rank, previous = i, key
        entry["rank"] = rank
    return board


def _board_key(entry: dict) -> tuple:
    if entry["reached_bar"]:
        return (0, entry["nonzero_params"], -entry["accuracy"], entry["student"])
    return (1, -entry["accuracy"], entry["nonzero_params"], entry["student"])


def _board_lines(board: list[dict]) -> list[str]:
    if not board:
        return []
    from .checks import CHALLENGE

    lines = [
        "",
        f"challenge leaderboard (bar: {CHALLENGE['min_accuracy']:.1%} test accuracy; "
        f"ranked by nonzero parameters, budget {CHALLENGE['max_params']:,})",
        f"  {'rank':>4}  {'student':<16} {'nonzero params':>14} {'accuracy':>9}  points",
    ]
    for e in board:
        rank = str(e["rank"]) if e["rank"] is not None else "—"
        note = "" if e["reached_bar"] else "  (below the bar)"
        lines.append(
            f"  {rank:>4}  {e['student']:<16} {e['nonzero_params']:>14,} "
            f"{e['accuracy']:>9.1%}  {e['points']:g}{note}"
        )
    return lines


def _clip(text: str, width: int = 110) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _brief(message: str) -> tuple[str, str]:
    """A checker's message as (which check failed, its hint), for the printed summary."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    what = re.sub(r"^✗ \S+ failed on ", "", lines[0]) if lines else ""
    hint = next((line[len("hint:") :].strip() for line in lines if line.startswith("hint:")), "")
    return what, hint


def _cpu_seconds() -> float | None:
    """CPU time of this process and its finished children, where measurable. (A sandbox's
    processes are not the grader's children: each sandbox measures its own.)"""
    try:
        import resource
    except ImportError:  # Windows
        return None
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def summary(
    rows: Sequence[Submission], wall_seconds: float, jobs: int, cpu_seconds: float | None = None
) -> str:
    """The printed report: a row per submission, totals per student, the wall time (and the
    CPU time of the grader and its kernels, which does not depend on how busy the machine
    is), and what the sandbox enforced."""
    lines = []
    for r in rows:
        lines.append(
            f"{r.student:<16} {r.notebook or '?':<26} {r.score:>5g} / {r.maximum:<3} "
            f"({r.seconds:.1f} s)  {r.path}"
        )
        for e in r.exercises:
            mark = "✓" if e.passed else "✗"
            lines.append(f"    {mark} {e.exercise:<18} {e.points:g}/{e.max_points}")
            if not e.passed:
                what, hint = _brief(e.message)
                lines.append(f"        {_clip(what)}")
                if hint:
                    lines.append(f"        hint: {_clip(hint)}")
        for p in r.problems:
            lines.append(f"    ! {p}")
    lines.append("")
    lines.append("totals per student")
    for name, t in students(rows).items():
        n = int(t["submissions"])
        lines.append(
            f"  {name:<16} {t['score']:>6g} / {int(t['maximum']):<4} ({n} notebook"
            f"{'s' if n != 1 else ''})"
        )
    lines += _board_lines(leaderboard(rows))
    per = wall_seconds / len(rows) if rows else 0.0
    lines.append("")
    lines.append(
        f"graded {len(rows)} submission{'s' if len(rows) != 1 else ''} in {wall_seconds:.1f} s "
        f"wall time ({jobs} parallel job{'s' if jobs != 1 else ''}, {per:.1f} s per submission)"
    )
    if cpu_seconds is not None:
        lines.append(f"CPU time of the grader and its kernels: {cpu_seconds:.1f} s")
    lines.append(sandbox.isolation()[1])
    return "\n".join(lines)


_BOARD_COLUMNS = ("challenge_rank", "challenge_nonzero_params", "challenge_accuracy")


def _board_cells(board: list[dict], row: Submission) -> list:
    """The leaderboard's columns for one CSV line: its own numbers, and the student's rank
    when this line is the submission the leaderboard counts."""
    measures = next((e.measures for e in row.exercises if e.exercise == "challenge"), {})
    if "nonzero_params" not in measures:
        return ["", "", ""]
    entry = next((e for e in board if e["path"] == row.path), None)
    rank = entry["rank"] if entry is not None and entry["rank"] is not None else ""
    return [rank, measures["nonzero_params"], measures.get("accuracy", "")]


def write_report(rows: Sequence[Submission], path: str | os.PathLike, wall_seconds: float = 0.0):
    """Write the rows as JSON (``.json``) or CSV (``.csv``), atomically.

    JSON: ``{"submissions": [{path, student, notebook, score, maximum, exercises: [...],
    problems, seconds, sha256}, ...], "students": {...}, "leaderboard": [...],
    "wall_seconds": ...}``.
    CSV: one line per submission with a points column per exercise and, when challenge
    submissions were graded, its rank, nonzero parameters and accuracy.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise ValueError(f"report must end in .json or .csv, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        if suffix == ".json":
            report = {
                "submissions": [asdict(r) for r in rows],
                "students": students(rows),
                "leaderboard": leaderboard(rows),
                "wall_seconds": round(wall_seconds, 2),
                "sandbox": sandbox.isolation()[1],
            }
            json.dump(report, f, indent=1, ensure_ascii=False)
            f.write("\n")
        else:
            ids = [i for i in EXERCISES if any(e.exercise == i for r in rows for e in r.exercises)]
            board = leaderboard(rows)
            writer = csv.writer(f)
            writer.writerow(
                [
                    "path",
                    "student",
                    "notebook",
                    "score",
                    "maximum",
                    *ids,
                    *(_BOARD_COLUMNS if board else ()),
                    "problems",
                    "seconds",
                ]
            )
            for r in rows:
                points = {e.exercise: e.points for e in r.exercises}
                writer.writerow(
                    [r.path, r.student, r.notebook or "", r.score, r.maximum]
                    + [points.get(i, "") for i in ids]
                    + (_board_cells(board, r) if board else [])
                    + [" | ".join(r.problems), round(r.seconds, 2)]
                )
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kdlib.course.grade",
        description="Grade exercise notebooks: run each in a fresh kernel, score its exercises.",
    )
    parser.add_argument("submissions", nargs="+", help="notebooks, or folders of notebooks")
    parser.add_argument("--timeout", type=float, default=60, help="seconds per cell (60)")
    parser.add_argument(
        "--notebook-timeout", type=float, default=None, help="seconds per notebook (5 × timeout)"
    )
    parser.add_argument("--report", help="write the results to this .json or .csv file")
    parser.add_argument("--jobs", type=int, default=None, help="parallel kernels (CPU count)")
    parser.add_argument(
        "--memory",
        type=int,
        default=sandbox.Limits.memory_mb,
        help=f"MB of address space per sandboxed process ({sandbox.Limits.memory_mb})",
    )
    parser.add_argument(
        "--key",
        default=str(EXERCISES_DIR / "source"),
        help="folder of answer keys, to report deleted cells ('' to skip)",
    )
    args = parser.parse_args(argv)
    if args.report and Path(args.report).suffix.lower() not in (".json", ".csv"):
        parser.error(f"--report must end in .json or .csv, got {args.report!r}")
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    try:
        rows = grade(
            args.submissions,
            args.timeout,
            args.jobs,
            args.notebook_timeout,
            args.key or None,
            args.memory,
        )
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    wall = time.perf_counter() - t0
    jobs = min(args.jobs or os.cpu_count() or 1, len(rows))
    cpu1 = _cpu_seconds()
    own = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    cpu = None if own is None else own + sum(r.cpu_seconds for r in rows if r.sandboxed)
    print(summary(rows, wall, jobs, cpu))
    if args.report:
        print(f"report written to {write_report(rows, args.report, wall)}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--inside"]:  # the runner, inside a submission's sandbox
        sys.exit(_inside(sys.argv[2]))
    sys.exit(main())
