"""Project-wide pytest hooks: a runtime table for the notebooks checked by nbval.

Each notebook's cells are pytest items; their durations are added up per notebook and
printed at the end of the run. This is a report, not an assertion on time.
"""

from collections import defaultdict

_nb_seconds: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _nb_seconds[path] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _nb_seconds:
        return
    tr = terminalreporter
    tr.section("notebook runtimes (nbval, includes kernel start-up)")
    for path, seconds in sorted(_nb_seconds.items()):
        tr.write_line(f"{path:<55} {seconds:6.1f} s")
    tr.write_line(f"{'total':<55} {sum(_nb_seconds.values()):6.1f} s")
