"""Project-wide pytest hooks: a runtime table for the notebooks checked by nbval, and the
hypothesis profile.

Each notebook's cells are pytest items; their durations are added up per notebook and
printed at the end of the run. This is a report, not an assertion on time.

Property tests draw new examples on every run locally. CI (``.ci/run``) sets
``HYPOTHESIS_PROFILE=ci``: the same examples every time, so a landing never turns red on a
lucky draw; run locally (or ``--hypothesis-seed``) to explore.
"""

import os
from collections import defaultdict

try:
    from hypothesis import settings
except ImportError:  # the notebooks alone can be checked without the dev extra
    pass
else:
    settings.register_profile("ci", derandomize=True, print_blob=True)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

_nb_seconds: dict[str, float] = defaultdict(float)
_ui_skipped: list[str] = []  # why the real-browser tests did not run


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _nb_seconds[path] += report.duration
    if path.endswith("test_ui.py") and report.skipped and isinstance(report.longrepr, tuple):
        _ui_skipped.append(report.longrepr[2].removeprefix("Skipped: "))


def pytest_terminal_summary(terminalreporter):
    tr = terminalreporter
    if _ui_skipped:
        tr.section("real-browser test NOT run")
        tr.write_line(f"{len(_ui_skipped)} browser checks skipped: {_ui_skipped[0]}")
        tr.write_line(
            "To run them: install Chromium (Debian/Ubuntu: `sudo apt-get install chromium`, or "
            "set KDLIB_CHROMIUM to a Chromium binary) and `make setup EXTRAS=lab,dev,ui`."
        )
    if not _nb_seconds:
        return
    tr.section("notebook runtimes (nbval, includes kernel start-up)")
    for path, seconds in sorted(_nb_seconds.items()):
        tr.write_line(f"{path:<55} {seconds:6.1f} s")
    tr.write_line(f"{'total':<55} {sum(_nb_seconds.values()):6.1f} s")
