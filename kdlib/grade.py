"""Grade exercise submissions: ``python -m kdlib.grade SUBMISSIONS... [--timeout S]
[--report out.json|out.csv] [--jobs N]``.

Each submitted notebook is copied into a temporary folder and run there, cell by cell, in a
fresh kernel (``nbclient``): a cell that raises (a syntax error included) is recorded and the
next one runs; a cell that runs longer than ``--timeout`` seconds is interrupted; a notebook
still running after ``--notebook-timeout`` seconds is stopped. Then, in the same kernel, each
exercise of that notebook is scored by its checker from :mod:`kdlib.checks` on the names the
notebook defined (one cell per exercise, so a function that hangs costs only its own
exercise), whatever the notebook's own check cells printed. Cells missing compared with the
released notebook (its answer key in ``exercises/source``) are reported. A submitted file is
only ever read. Submissions run in parallel (``--jobs``, each in its own kernel). Every
submission gets a row — an unreadable file, a crashed kernel or an unknown notebook included
— with points per exercise, the total and the reasons for lost points; then come totals per
student and the wall time of the whole run. ``--report`` writes the rows as JSON or CSV.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .checks import EXERCISES
from .exercises import EXERCISES_DIR

__all__ = ["ExerciseScore", "Submission", "grade", "grade_one", "write_report", "summary"]

NOTEBOOKS: list[str] = sorted({ex.notebook for ex in EXERCISES.values()})
_WARM_UP_TIMEOUT = 300  # seconds for the kernel to import torch and kdlib, however busy


@dataclass
class ExerciseScore:
    """One exercise of one submission."""

    exercise: str  # exercise id, a key of kdlib.checks.EXERCISES
    passed: bool  # every check passed
    points: float  # points earned
    max_points: int  # points available
    message: str  # what the checker said (or why it could not run)


@dataclass
class Submission:
    """One graded notebook: a row of the report."""

    path: str  # the submitted file, as given
    student: str  # from the file or folder name
    notebook: str | None  # exercise notebook it answers, e.g. "04_soft_target_kd"
    score: float  # points earned
    maximum: int  # points available
    exercises: list[ExerciseScore] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # why points may be lost
    seconds: float = 0.0  # time spent grading it
    sha256: str = ""  # of the submitted file (unchanged by grading)


# --------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _identify(nb, path: Path) -> str | None:
    """Which exercise notebook a submission answers: its metadata, else its file name."""
    meta = nb.get("metadata", {}).get("kdlib", {}) if nb is not None else {}
    stem = meta.get("exercise") if isinstance(meta, dict) else None
    if stem in NOTEBOOKS:
        return stem
    for stem in sorted(NOTEBOOKS, key=len, reverse=True):
        if stem in path.name:
            return stem
    return None


def _student(path: Path, notebook: str | None) -> str:
    """``alice/04_x.ipynb`` → alice; ``alice_04_x.ipynb`` → alice; otherwise the file stem."""
    stem = path.stem
    if notebook and stem == notebook:
        return path.resolve().parent.name
    if notebook and notebook in stem:
        name = stem.replace(notebook, "").strip("_-. ")
        return name or path.resolve().parent.name
    return stem


def _missing_cells(nb, notebook: str, key_dir: Path | None) -> list[str]:
    """Code cells of the answer key whose ids the submission lacks."""
    if key_dir is None:
        return []
    key_path = key_dir / f"{notebook}.ipynb"
    if not key_path.exists():
        return []
    import nbformat

    key = nbformat.read(key_path, as_version=4)
    present = {c.get("id") for c in nb.cells}
    if present == {None}:  # an old notebook format without cell ids: nothing to compare
        return []
    missing = []
    for index, cell in enumerate(key.cells, start=1):
        if cell.cell_type == "code" and cell.get("id") not in present:
            first = next((line for line in cell.source.splitlines() if line.strip()), "")
            missing.append(f"cell {index} ({first.strip()[:40]})")
    return missing


def _grading_cell(exercise_id: str, token: str) -> str:
    # Fresh, underscored imports: the submission may have rebound print, json or kdlib.
    return (
        "import builtins as _kdlib_builtins, json as _kdlib_json\n"
        "from kdlib.checks import check_exercise as _kdlib_check_exercise\n"
        f"_kdlib_builtins.print({token!r} + _kdlib_json.dumps("
        f"_kdlib_check_exercise({exercise_id!r}, globals()).to_dict()))"
    )


def _kernel_env(jobs: int) -> dict[str, str]:
    env = dict(os.environ)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env.update(
        KDLIB_PROGRESS="0",  # no progress bars in a grading log
        MPLBACKEND="Agg",  # plots render nowhere
        OMP_NUM_THREADS=str(threads),  # parallel kernels share the cores instead of fighting
        MKL_NUM_THREADS=str(threads),
        PYTHONHASHSEED="0",
    )
    return env


def _error(cell) -> str | None:
    """``"Name: first line of the message"`` of a cell's error output, if it has one."""
    errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    if not errors:
        return None
    ename, evalue = errors[0].get("ename", "Error"), str(errors[0].get("evalue", ""))
    evalue = evalue.strip().splitlines()[0][:120] if evalue.strip() else ""
    return f"{ename}: {evalue}" if evalue else ename


def _cell_problem(number: int, cell, timed_out: str | None = None) -> str | None:
    if timed_out:
        return f"cell {number} {timed_out}"
    error = _error(cell)
    if error is None:
        return None
    ename, _, evalue = error.partition(": ")
    if ename in ("SyntaxError", "IndentationError", "TabError"):
        return f"cell {number} has a syntax error: {evalue}"
    return f"cell {number} raised {error}"


def _stdout(cell) -> str:
    return "".join(
        o.get("text", "")
        for o in cell.get("outputs", [])
        if o.get("output_type") == "stream" and o.get("name") == "stdout"
    )


def _execute(
    nb, exercise_ids: list[str], raw: bytes, name: str, timeout, notebook_timeout, jobs: int
) -> tuple[dict[str, dict], list[str]]:
    """Run notebook ``nb`` in a fresh kernel, in a temporary folder holding a copy of the
    submission (``raw``, saved as ``name``), then one grading cell per exercise.

    Returns:
        ``({exercise id: checker result as a dict}, [problems])``.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    token = f"KDLIB-GRADE-{secrets.token_hex(8)}:"
    results: dict[str, dict] = {}
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="kdlib-grade-") as tmp:
        # The kernel's folder holds a copy; the submitted file is never opened for writing.
        (Path(tmp) / name).write_bytes(raw)
        n_cells = len(nb.cells)
        # Warm-up first: torch and kdlib load before any timed cell, so a slow import on a
        # busy machine is never mistaken for the learner's code running too long.
        warm = nbformat.v4.new_code_cell("import kdlib.checks as _kdlib_checks")
        warm.metadata["kdlib_grader"] = "warm-up"
        grading = [nbformat.v4.new_code_cell(_grading_cell(i, token)) for i in exercise_ids]
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
            resources={"metadata": {"path": tmp}},
        )
        try:
            # The kernel's own log (e.g. ipykernel's warnings) would only clutter the report.
            with client.setup_kernel(env=_kernel_env(jobs), cwd=tmp, stderr=subprocess.DEVNULL):
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
                    problem = _cell_problem(index + 1, cell, timed_out.get(index))
                    if problem:
                        problems.append(problem)
                for index, (exercise_id, cell) in enumerate(
                    zip(exercise_ids, grading, strict=True), start=n_cells + 1
                ):
                    client.execute_cell(cell, index)
                    for line in _stdout(cell).splitlines():
                        if line.startswith(token):
                            results[exercise_id] = json.loads(line[len(token) :])
                    if exercise_id not in results:
                        why = timed_out.get(index) or _error(cell) or "no result"
                        results[exercise_id] = {
                            "passed": False,
                            "score": 0.0,
                            "message": f"could not be checked: {why}",
                        }
        except DeadKernelError:
            problems.append(
                "the kernel died (the notebook exited Python, crashed or ran out of memory); "
                "exercises not checked by then score 0"
            )
        except Exception as e:  # the kernel could not start, or nbclient failed
            problems.append(f"could not run the notebook: {type(e).__name__}: {e}")
    return results, problems


def grade_one(
    path: str | os.PathLike,
    timeout: float = 60,
    notebook_timeout: float | None = None,
    key_dir: str | os.PathLike | None = EXERCISES_DIR / "source",
    jobs: int = 1,
) -> Submission:
    """Grade one submitted notebook (the file is read once and never written).

    Args:
        path: the submitted ``.ipynb``.
        timeout: seconds a cell may run before it is interrupted.
        notebook_timeout: seconds the notebook's cells may run in all, counted after the
            kernel has started and imported kdlib (default ``5 × timeout``); cells after that
            are not run, but the exercises are still scored.
        key_dir: folder of the answer keys, to report deleted cells (None: don't).
        jobs: how many submissions run at once (shares the CPU threads between kernels).

    Returns:
        A :class:`Submission`; never raises because of the submission's content.
    """
    import nbformat

    path = Path(path)
    t0 = time.perf_counter()
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    row = Submission(str(path), path.stem, None, 0.0, 0, sha256=digest)
    try:
        nb = nbformat.reads(raw.decode("utf-8"), as_version=4)
    except Exception as e:  # not JSON, not a notebook, not UTF-8
        nb = None
        row.problems.append(f"not a readable notebook: {type(e).__name__}: {str(e)[:120]}")
    notebook = _identify(nb, path)
    row.notebook, row.student = notebook, _student(path, notebook)
    if notebook is None and nb is not None:
        row.problems.append(
            "unknown exercise notebook: its metadata names none and its file name contains "
            f"none of {', '.join(NOTEBOOKS)}"
        )
    exercise_ids = [i for i, ex in EXERCISES.items() if ex.notebook == notebook]
    row.maximum = sum(EXERCISES[i].points for i in exercise_ids)
    if nb is None or notebook is None:
        row.exercises = [
            ExerciseScore(i, False, 0.0, EXERCISES[i].points, "not checked (see problems)")
            for i in exercise_ids
        ]
        row.seconds = time.perf_counter() - t0
        return row
    missing = _missing_cells(nb, notebook, Path(key_dir) if key_dir else None)
    if missing:
        row.problems.append(
            "cells missing compared with the released notebook: " + ", ".join(missing)
        )

    results, problems = _execute(
        nb, exercise_ids, raw, path.name, timeout, notebook_timeout or 5 * timeout, jobs
    )
    row.problems += problems
    for exercise_id in exercise_ids:
        ex = EXERCISES[exercise_id]
        r = results.get(
            exercise_id, {"passed": False, "score": 0.0, "message": "not checked (see problems)"}
        )
        points = round(ex.points * float(r.get("score") or 0.0), 2)
        row.exercises.append(
            ExerciseScore(exercise_id, bool(r.get("passed")), points, ex.points, r["message"])
        )
    row.score = round(sum(e.points for e in row.exercises), 2)
    if _sha256(path) != digest:  # cannot happen through the grader; say so if it does
        row.problems.append("the submitted file changed while it was graded")
    row.seconds = time.perf_counter() - t0
    return row


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
) -> list[Submission]:
    """Grade submissions in parallel; one :class:`Submission` per notebook, in input order.

    Args:
        paths: notebooks, or folders to search for ``*.ipynb``.
        timeout: seconds a cell may run before it is interrupted (> 0).
        jobs: submissions graded at once, each in its own kernel (default: CPU count).
        notebook_timeout: seconds a whole notebook may run (default ``5 × timeout``).
        key_dir: answer keys, to report deleted cells (``None``: don't compare).

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: no notebooks found, ``timeout`` or ``jobs`` not positive.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    if notebook_timeout is not None and not notebook_timeout > 0:
        raise ValueError(f"notebook_timeout must be > 0 seconds, got {notebook_timeout!r}")
    jobs = (os.cpu_count() or 1) if jobs is None else jobs
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    files = _expand(paths)
    if not files:
        raise ValueError(f"no notebooks (*.ipynb) found in {', '.join(map(str, paths))}")
    jobs = min(jobs, len(files))

    def one(p: Path) -> Submission:
        return grade_one(p, timeout, notebook_timeout, key_dir, jobs)

    if jobs == 1:
        return [one(p) for p in files]
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="kdlib-grade") as pool:
        return list(pool.map(one, files))


# --------------------------------------------------------------------------------------------
def students(rows: Sequence[Submission]) -> dict[str, dict[str, float]]:
    """Total points per student over all their submissions."""
    totals: dict[str, dict[str, float]] = {}
    for r in rows:
        t = totals.setdefault(r.student, {"score": 0.0, "maximum": 0, "submissions": 0})
        t["score"] = round(t["score"] + r.score, 2)
        t["maximum"] += r.maximum
        t["submissions"] += 1
    return dict(sorted(totals.items()))


def _clip(text: str, width: int = 110) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _brief(message: str) -> tuple[str, str]:
    """A checker's message as (which check failed, its hint), for the printed summary."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    what = re.sub(r"^✗ \S+ failed on ", "", lines[0]) if lines else ""
    hint = next((line[len("hint:") :].strip() for line in lines if line.startswith("hint:")), "")
    return what, hint


def _cpu_seconds() -> float | None:
    """CPU time of this process and its finished children (the kernels), where measurable."""
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
    is)."""
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
    per = wall_seconds / len(rows) if rows else 0.0
    lines.append("")
    lines.append(
        f"graded {len(rows)} submission{'s' if len(rows) != 1 else ''} in {wall_seconds:.1f} s "
        f"wall time ({jobs} parallel job{'s' if jobs != 1 else ''}, {per:.1f} s per submission)"
    )
    if cpu_seconds is not None:
        lines.append(f"CPU time of the grader and its kernels: {cpu_seconds:.1f} s")
    return "\n".join(lines)


def write_report(rows: Sequence[Submission], path: str | os.PathLike, wall_seconds: float = 0.0):
    """Write the rows as JSON (``.json``) or CSV (``.csv``), atomically.

    JSON: ``{"submissions": [{path, student, notebook, score, maximum, exercises: [...],
    problems, seconds, sha256}, ...], "students": {...}, "wall_seconds": ...}``.
    CSV: one line per submission with a points column per exercise.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise ValueError(f"report must end in .json or .csv, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            if suffix == ".json":
                report = {
                    "submissions": [asdict(r) for r in rows],
                    "students": students(rows),
                    "wall_seconds": round(wall_seconds, 2),
                }
                json.dump(report, f, indent=1, ensure_ascii=False)
                f.write("\n")
            else:
                ids = [
                    i for i in EXERCISES if any(e.exercise == i for r in rows for e in r.exercises)
                ]
                writer = csv.writer(f)
                writer.writerow(
                    [
                        "path",
                        "student",
                        "notebook",
                        "score",
                        "maximum",
                        *ids,
                        "problems",
                        "seconds",
                    ]
                )
                for r in rows:
                    points = {e.exercise: e.points for e in r.exercises}
                    writer.writerow(
                        [r.path, r.student, r.notebook or "", r.score, r.maximum]
                        + [points.get(i, "") for i in ids]
                        + [" | ".join(r.problems), round(r.seconds, 2)]
                    )
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kdlib.grade",
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
            args.submissions, args.timeout, args.jobs, args.notebook_timeout, args.key or None
        )
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    wall = time.perf_counter() - t0
    jobs = min(args.jobs or os.cpu_count() or 1, len(rows))
    cpu1 = _cpu_seconds()
    print(summary(rows, wall, jobs, None if cpu0 is None or cpu1 is None else cpu1 - cpu0))
    if args.report:
        print(f"report written to {write_report(rows, args.report, wall)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
