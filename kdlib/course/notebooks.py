"""Execute the course notebooks in place: ``python -m kdlib.course.notebooks notebooks/*.ipynb``.

``make notebooks`` calls this to refresh every stored output in one step. Each notebook runs
top to bottom in a fresh kernel (``nbclient``) from its own folder, and is written back only
if every cell succeeded, so a failing run never leaves half-refreshed outputs behind. The
grader (:mod:`kdlib.course.grade`) uses :func:`execute` too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["execute"]


def execute(path: str | Path, timeout: int = 300, kernel_name: str = "python3"):
    """Run a notebook in a fresh kernel; return ``(notebook, seconds)``.

    Raises ``nbclient.exceptions.CellExecutionError`` on the first failing cell. The file on
    disk is not touched.
    """
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(path.parent.resolve())}},
    )
    t0 = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=300, help="seconds per cell")
    args = parser.parse_args(argv)
    rows = []
    for path in sorted(args.paths):
        print(f"executing {path} ...", flush=True)
        nb, seconds = execute(path, args.timeout)
        nbformat.write(nb, path)
        rows.append((path.name, seconds))
    print("\nnotebook runtimes")
    for name, seconds in rows:
        print(f"  {name:<45} {seconds:6.1f} s")
    print(f"  {'total':<45} {sum(s for _, s in rows):6.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
