"""Student versions of the exercise notebooks, generated from their solution sources.

An exercise source (``exercises/source/NN_topic.ipynb``) is the answer key: each solution
sits between a ``### BEGIN SOLUTION`` and a ``### END SOLUTION`` line, and the first line of
the region is a one-line ``# Hint: ...`` comment. :func:`student_version` replaces every region
by ``raise NotImplementedError("Hint: ...")`` at the region's indentation, clears all outputs
and execution counts, and keeps cell ids (the grader compares them with the key's to spot
deleted cells). ``python -m kdlib.course.exercises`` (what ``make exercises`` runs) writes
``exercises/NN_topic.ipynb`` for every source; ``--check`` writes nothing and lists the
student versions that are out of date, which is how the test suite proves they are current.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

from ..validate import atomic_path

__all__ = [
    "EXERCISES_DIR",
    "strip_solutions",
    "student_version",
    "render",
    "stale",
    "generate",
]

# The repository's exercises folder: student versions here, sources (answer keys) in source/.
EXERCISES_DIR = Path(__file__).resolve().parents[2] / "exercises"

_BEGIN = re.compile(r"^(?P<indent>[ \t]*)### BEGIN SOLUTION[ \t]*$")
_END = re.compile(r"^[ \t]*### END SOLUTION[ \t]*$")
_HINT = re.compile(r"^[ \t]*#[ \t]*(?P<hint>Hint:.*\S)[ \t]*$")
_LINE = 79  # notebook code cells fit a projector, as ruff format keeps them
# Cell metadata that only describes a past run.
_RUN_METADATA = ("execution", "collapsed", "scrolled")


def _stub(indent: str, hint: str) -> list[str]:
    """``raise NotImplementedError("<hint>")``, wrapped the way ``ruff format`` wraps it."""
    literal = '"' + hint.replace("\\", "\\\\").replace('"', '\\"') + '"'
    one_line = f"{indent}raise NotImplementedError({literal})"
    if len(one_line) <= _LINE:
        return [f"{indent}# YOUR CODE HERE", one_line]
    return [
        f"{indent}# YOUR CODE HERE",
        f"{indent}raise NotImplementedError(",
        f"{indent}    {literal}",
        f"{indent})",
    ]


def strip_solutions(source: str, where: str = "cell") -> str:
    """Replace every solution region of one code cell's source by a stub with its hint.

    Args:
        source: the cell's code.
        where: names the cell in error messages (e.g. ``"04_soft_target_kd.ipynb, cell 5"``).

    Raises:
        ValueError: a BEGIN without END (or the reverse), nested regions, or a region whose
            first line is not a ``# Hint: ...`` comment.

    Example:
        >>> print(strip_solutions(
        ...     "def f(x):\\n    ### BEGIN SOLUTION\\n    # Hint: double it\\n"
        ...     "    return 2 * x\\n    ### END SOLUTION"))
        def f(x):
            # YOUR CODE HERE
            raise NotImplementedError("Hint: double it")
    """
    lines = source.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        begin = _BEGIN.match(lines[i])
        if begin is None:
            if _END.match(lines[i]):
                raise ValueError(f"{where}, line {i + 1}: ### END SOLUTION without a BEGIN")
            out.append(lines[i])
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if _END.match(lines[j])), None)
        if end is None:
            raise ValueError(f"{where}, line {i + 1}: ### BEGIN SOLUTION has no ### END SOLUTION")
        body = lines[i + 1 : end]
        if any(_BEGIN.match(line) for line in body):
            raise ValueError(f"{where}, line {i + 1}: solution regions cannot be nested")
        first = next((line for line in body if line.strip()), "")
        hint = _HINT.match(first)
        if hint is None:
            raise ValueError(
                f"{where}, line {i + 1}: a solution region must start with a one-line "
                f"'# Hint: ...' comment (the student's stub shows it), found {first.strip()!r}"
            )
        out.extend(_stub(begin["indent"], hint["hint"]))
        i = end + 1
    return "\n".join(out)


def student_version(nb, name: str = "notebook"):
    """A copy of source notebook ``nb`` with stubs for solutions and no outputs.

    Cell ids, the other metadata and markdown are kept. ``nb`` is not modified.

    Raises:
        ValueError: malformed solution markers (see :func:`strip_solutions`), or markers in
            a markdown cell, where they would not be stripped.
    """
    out = copy.deepcopy(nb)
    for index, cell in enumerate(out.cells, start=1):
        where = f"{name}, cell {index}"
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source, where)
            cell.outputs = []
            cell.execution_count = None
            for key in _RUN_METADATA:
                cell.metadata.pop(key, None)
        elif "BEGIN SOLUTION" in cell.source or "END SOLUTION" in cell.source:
            raise ValueError(
                f"{where}: solution markers only work in code cells; this is a "
                f"{cell.cell_type} cell"
            )
    return out


def render(nb) -> str:
    """The exact text a notebook is stored as (what ``nbformat.write`` writes)."""
    import nbformat

    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def _pairs(source_dir: Path, student_dir: Path) -> list[tuple[Path, Path]]:
    sources = sorted(source_dir.glob("*.ipynb"))
    if not sources:
        raise FileNotFoundError(f"no exercise sources (*.ipynb) in {source_dir}")
    return [(src, student_dir / src.name) for src in sources]


def _expected(src: Path) -> str:
    import nbformat

    return render(student_version(nbformat.read(src, as_version=4), src.name))


def stale(source_dir: Path | None = None, student_dir: Path | None = None) -> list[str]:
    """What is out of date: student versions that differ from (or lack) their source's, and
    student versions with no source. Empty when everything is current."""
    source_dir = Path(source_dir or EXERCISES_DIR / "source")
    student_dir = Path(student_dir or EXERCISES_DIR)
    problems = []
    for src, dst in _pairs(source_dir, student_dir):
        if not dst.exists():
            problems.append(f"{dst}: missing (run `make exercises`)")
        elif dst.read_text(encoding="utf-8") != _expected(src):
            problems.append(f"{dst}: differs from what {src} generates (run `make exercises`)")
    names = {src.name for src in source_dir.glob("*.ipynb")}
    for dst in sorted(student_dir.glob("*.ipynb")):
        if dst.name not in names:
            problems.append(f"{dst}: no source {source_dir / dst.name}")
    return problems


def generate(source_dir: Path | None = None, student_dir: Path | None = None) -> list[Path]:
    """Write the student version of every source; return the files that changed.

    A file is rewritten only when its text changes, so an up-to-date tree stays untouched.
    """
    source_dir = Path(source_dir or EXERCISES_DIR / "source")
    student_dir = Path(student_dir or EXERCISES_DIR)
    written = []
    for src, dst in _pairs(source_dir, student_dir):
        text = _expected(src)
        if not dst.exists() or dst.read_text(encoding="utf-8") != text:
            with atomic_path(dst) as tmp:  # a reader never sees half a notebook
                tmp.write_text(text, encoding="utf-8")
            written.append(dst)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kdlib.course.exercises",
        description="Write the student versions of the exercise notebooks from their sources.",
    )
    parser.add_argument("--source", type=Path, default=EXERCISES_DIR / "source")
    parser.add_argument("--out", type=Path, default=EXERCISES_DIR)
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if any is out of date"
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = stale(args.source, args.out)
        for p in problems:
            print(p)
        print("student versions are current" if not problems else f"{len(problems)} stale")
        return 1 if problems else 0
    written = generate(args.source, args.out)
    for path in written:
        print(f"wrote {path}")
    print(f"{len(written)} student version(s) written, the others were current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
