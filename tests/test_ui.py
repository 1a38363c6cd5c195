"""The course in a real browser: JupyterLab and headless Chromium drive the notebooks' sliders.

Marked ``ui``. Each check (see ``tests/ui_harness.py``) runs a copy of a notebook from the Run
menu, moves a slider with the keyboard, and fails if a cell shows an error or the output next
to the slider stays the same; screenshots go to ``build/ui/``. The harness is itself tested on
three small notebooks in ``tests/ui_fixtures/``: a working slider, one whose callback ignores
the slider, and one whose callback raises. Without Chromium or Playwright these tests are
skipped with the reason (``pytest -rs`` lists it); with ``KDLIB_UI_REQUIRED=1`` (CI) they fail
instead, so a CI machine cannot pass without running them.
"""

import os
import time
from pathlib import Path

import psutil
import pytest
import ui_harness as ui

pytestmark = pytest.mark.ui

FIXTURES = Path(__file__).parent / "ui_fixtures"
NOTEBOOKS = ui.ROOT / "notebooks"


def _require_browser() -> None:
    missing = ui.missing_requirements()
    if not missing:
        return
    reason = "; ".join(missing)
    if os.environ.get("KDLIB_UI_REQUIRED") == "1":
        pytest.fail(f"UI test required (KDLIB_UI_REQUIRED=1) but cannot run: {reason}")
    pytest.skip(f"UI test skipped: {reason}")


@pytest.fixture(scope="module")
def session():
    _require_browser()
    with ui.UiSession() as s:
        yield s


def test_working_slider_passes_and_is_screenshotted(session):
    result = ui.run_slider_check(FIXTURES / "slider_ok.ipynb", "T", session=session)
    # End takes the slider to its maximum; the callback prints the softmax at that T.
    assert (result.value_before, result.value_after) == ("1.0", "10.0")
    assert (result.readout_before, result.readout_after) == ("1.00", "10.00")
    assert "T = 1.0: p = [0.756 0.169 0.062 0.014]" in result.text_before
    assert "T = 10.0: p = [0.302 0.26 0.235 0.203]" in result.text_after
    assert result.images_after == 1
    assert result.screenshot == ui.SCREENSHOTS / "slider_ok.png"
    assert result.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_harness_fails_when_a_slider_callback_raises(session):
    with pytest.raises(ui.UiCheckError, match=r"show an error .* after moving slider 'T' to 10"):
        ui.run_slider_check(FIXTURES / "slider_error.ipynb", "T", session=session)


# Two sliders as ipywidgets 8 draws them in JupyterLab (trimmed to what the harness reads).
SLIDERS_HTML = "".join(
    f'<div class="widget-slider"><label class="widget-label">{label}</label>'
    f'<div class="noUi-handle" role="slider" aria-valuenow="{v}"></div></div>'
    for label, v in (("T", 1), ("alpha", 0.5))
)


@pytest.mark.parametrize(
    "slider, expected",
    [("T", "1"), ("alpha", "0.5"), (0, "1"), (1, "0.5")],
)
def test_harness_finds_sliders_by_label_or_index(session, slider, expected):
    page = session.new_page()
    try:
        page.set_content(f'<div class="jp-NotebookPanel">{SLIDERS_HTML}</div>')
        found = ui._find_slider(page, slider)
        assert found.locator(".noUi-handle").get_attribute("aria-valuenow") == expected
    finally:
        page.close()


@pytest.mark.parametrize(
    "slider, message",
    [
        ("lambda", r"expected one slider labelled 'lambda', found 0; labels: \['T', 'alpha'\]"),
        ("alph", r"expected one slider labelled 'alph', found 0"),
        (2, r"slider index 2 out of range: the page shows 2"),
    ],
)
def test_harness_names_a_missing_slider(session, slider, message):
    page = session.new_page()
    try:
        page.set_content(f'<div class="jp-NotebookPanel">{SLIDERS_HTML}</div>')
        with pytest.raises(ui.UiCheckError, match=message):
            ui._find_slider(page, slider)
    finally:
        page.close()


def test_harness_rejects_a_missing_notebook(tmp_path):
    with pytest.raises(FileNotFoundError, match="no notebook at .*nothing.ipynb"):
        ui.run_slider_check(tmp_path / "nothing.ipynb", "T")


def test_harness_fails_when_output_does_not_change_and_stops_everything(monkeypatch):
    """The broken notebook fails the check, and its own session leaves no process behind."""
    _require_browser()
    started = []
    close = ui.UiSession.close

    def record_then_close(self):
        started.extend(self.pids())
        close(self)

    monkeypatch.setattr(ui.UiSession, "close", record_then_close)
    with pytest.raises(
        ui.UiCheckError, match=r"output did not change when slider 'T' moved from 1.0 to 10.0"
    ):
        ui.run_slider_check(FIXTURES / "slider_broken.ipynb", "T")
    assert len(started) >= 2, f"expected the server and the browser among {started}"
    deadline = time.monotonic() + 10  # orphans are reaped by init a moment after they exit

    def alive():
        running = []
        for pid in started:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    running.append(pid)
            except psutil.NoSuchProcess:
                pass
        return running

    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive() == []


# The course's own widgets, as a learner meets them after `make lab`: the text next to the
# slider must name the value the slider shows.
COURSE_SLIDERS = [
    pytest.param("02_soft_targets_and_temperature.ipynb", "T", "T = {} |", id="02-temperature"),
    pytest.param("07_magnitude_pruning.ipynb", "sparsity", "sparsity {} |", id="07-sparsity"),
]


@pytest.mark.parametrize("name, slider, says", COURSE_SLIDERS)
def test_course_slider(session, name, slider, says):
    result = ui.run_slider_check(NOTEBOOKS / name, slider, session=session)
    assert result.readout_after != result.readout_before
    assert says.format(result.readout_before) in result.text_before
    assert says.format(result.readout_after) in result.text_after
    assert result.images_after >= 1
    assert result.screenshot == ui.SCREENSHOTS / f"{Path(name).stem}.png"
