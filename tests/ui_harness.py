"""A real-browser check of a course notebook: JupyterLab, headless Chromium, one slider.

:class:`UiSession` starts JupyterLab from the interpreter running the tests (the course's
``.venv`` under ``make test``) on a loopback port with a random token and throw-away runtime,
config and data folders, and drives Debian's Chromium through Playwright (``executable_path``;
Playwright's own browser download is not used). :func:`run_slider_check` copies a notebook into
the session's folder (so the stored notebook is never touched), runs all cells from the Run
menu, checks that no cell shows an error, moves a slider with the keyboard as a learner would
(forth, back, forth, waiting each time for the kernel to finish), checks that the output next
to the slider changes with the value and comes back with it, still without errors, and saves
a screenshot under ``build/ui/``. Everything it starts is stopped when the session closes,
also on failure. Usable by hand too:
``python tests/ui_harness.py notebooks/02_soft_targets_and_temperature.ipynb --slider T``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "build" / "ui"
CHROMIUM = Path(os.environ.get("KDLIB_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
)
# JupyterLab user settings for a quiet, predictable page: no news or update toasts over the
# screenshot, every cell kept in the DOM (windowing would hide off-screen cells from the
# checks), and no autosave.
_LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
}
_STDERR = "application/vnd.jupyter.stderr"  # JupyterLab renders tracebacks with this type too


class UiCheckError(AssertionError):
    """A notebook failed the browser check; the message says what the learner would see."""


@dataclass
class SliderResult:
    """What :func:`run_slider_check` saw before and after the move.

    ``value_*`` is the slider handle's ``aria-valuenow`` (an option's index for a selection
    slider), ``readout_*`` the value as the slider shows it, ``text_*`` the text of the output
    next to the slider.
    """

    notebook: Path
    value_before: str
    value_after: str
    readout_before: str
    readout_after: str
    text_before: str
    text_after: str
    images_after: int
    screenshot: Path
    seconds: float


def missing_requirements() -> list[str]:
    """Why the UI check cannot run here (empty when it can)."""
    missing = []
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        missing.append(
            f"no Chromium at {CHROMIUM} (install Debian's `chromium` package, "
            "or point KDLIB_CHROMIUM at a Chromium binary)"
        )
    for module, extra in (("playwright", "ui"), ("jupyterlab", "lab"), ("psutil", "lab")):
        if importlib.util.find_spec(module) is None:
            missing.append(
                f"Python package `{module}` not installed (pip install -e '.[{extra}]')"
            )
    return missing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_settings(config_dir: Path) -> None:
    for name, values in _LAB_SETTINGS.items():
        path = config_dir / "lab" / "user-settings" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


class UiSession:
    """JupyterLab plus headless Chromium, started together and always stopped together.

    Use as a context manager. ``timeout`` (seconds) bounds each wait for the server, a page,
    the kernel or the cells; it is generous because the machines are small and shared.
    """

    def __init__(self, timeout: float = 120.0):
        self.timeout = timeout
        self.token = secrets.token_hex(16)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._tmp = Path(tempfile.mkdtemp(prefix="kdlib-ui-"))
        self.root = self._tmp / "root"
        self.profile = self._tmp / "chromium-profile"
        self.log_path = self._tmp / "jupyterlab.log"
        self._server: subprocess.Popen | None = None
        self._playwright = None
        self._browser = None
        self._runs = 0
        self.traffic: dict = {}  # page -> _KernelTraffic

    def __enter__(self) -> UiSession:
        try:
            self._start_server()
            self._start_browser()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start_server(self) -> None:
        self.root.mkdir()
        _write_settings(self._tmp / "config")
        env = dict(
            os.environ,
            JUPYTER_RUNTIME_DIR=str(self._tmp / "runtime"),
            JUPYTER_CONFIG_DIR=str(self._tmp / "config"),
            JUPYTER_DATA_DIR=str(self._tmp / "data"),
        )
        cmd = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",  # CI runs as root
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
        ]
        with open(self.log_path, "wb") as log:
            # Its own process group, so close() can stop the server and anything it spawned.
            self._server = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._server.poll() is not None:
                raise UiCheckError(f"JupyterLab exited at start-up:\n{self.log_tail()}")
            try:
                self.api("GET", "/api/status")
                return
            except OSError:
                time.sleep(0.25)
        raise UiCheckError(
            f"JupyterLab did not answer in {self.timeout:.0f} s:\n{self.log_tail()}"
        )

    def _start_browser(self) -> None:
        self._playwright = _playwright_acquire()
        self._browser = self._playwright.chromium.launch_persistent_context(
            str(self.profile),  # a fresh user-data-dir
            executable_path=str(CHROMIUM),
            headless=True,
            args=list(CHROMIUM_FLAGS),
            viewport={"width": 1280, "height": 1000},
        )
        self._browser.set_default_timeout(self.timeout * 1000)

    def api(self, method: str, path: str):
        """Call the Jupyter server's REST API with the session's token; return parsed JSON."""
        request = urllib.request.Request(
            self.url + path, method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def log_tail(self, chars: int = 3000) -> str:
        """The end of JupyterLab's log, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def pids(self) -> list[int]:
        """Processes this session started: the server, its kernels and the browser's."""
        import psutil

        pids = []
        if self._server is not None and psutil.pid_exists(self._server.pid):
            pids.append(self._server.pid)
            pids += [p.pid for p in psutil.Process(self._server.pid).children(recursive=True)]
        for child in psutil.Process().children(recursive=True):
            try:
                if any(str(self.profile) in arg for arg in child.cmdline()):
                    pids.append(child.pid)
            except psutil.Error:
                pass
        return pids

    def add_notebook(self, notebook: Path) -> str:
        """Copy ``notebook`` into the session's folder; return its path relative to the root."""
        self._runs += 1
        folder = self.root / f"run{self._runs}"
        folder.mkdir()
        shutil.copy(notebook, folder / notebook.name)
        return f"run{self._runs}/{notebook.name}"

    def new_page(self, path: str | None = None):
        """Open ``path`` in JupyterLab in its own fresh workspace (no restored tabs).

        Without ``path``, a blank page (for tests of the harness's page logic).
        """
        page = self._browser.new_page()
        self.traffic[page] = _KernelTraffic(page)
        if path is None:
            return page
        page.goto(f"{self.url}/lab/workspaces/ui{self._runs}/tree/{path}?reset&token={self.token}")
        return page

    def shutdown_kernels(self, path: str) -> None:
        """Stop the kernels of the notebook at ``path`` so the next check has the CPU."""
        for session in self.api("GET", "/api/sessions"):
            if session.get("path") == path:
                self.api("DELETE", f"/api/sessions/{session['id']}")

    def close(self) -> None:
        """Stop the browser and the server with its kernels; safe to call more than once."""
        try:
            leftover = self.pids()
        except Exception:
            leftover = []
        if self._browser is not None:
            try:
                self._browser.close()
            except Exception:
                pass
        if self._playwright is not None:
            _playwright_release()
        self._browser = self._playwright = None
        if self._server is not None:
            # SIGTERM lets the server shut its kernels down; they live in their own sessions.
            _signal_group(self._server.pid, signal.SIGTERM)
            try:
                self._server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _signal_group(self._server.pid, signal.SIGKILL)
                self._server.wait(timeout=10)
            self._server = None
        for pid in leftover:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        shutil.rmtree(self._tmp, ignore_errors=True)


class _KernelTraffic:
    """Follows the kernel's status messages (busy, idle) that a page receives.

    JupyterLab's status indicator shows one status for the whole kernel, but widget messages
    run in a kernel subshell beside the main shell, so the indicator can read idle while a
    slider's callback still runs. The kernel reports busy and then idle for each request it
    handles; a request is pending from its busy to its idle.
    """

    def __init__(self, page):
        self.started = 0  # requests the kernel has taken up
        self.pending: set[str] = set()  # ids of requests taken up and not finished
        self.last = time.monotonic()  # when the last status arrived
        page.on("websocket", lambda ws: ws.on("framereceived", self._frame))

    def _frame(self, payload) -> None:
        try:
            msg_type, parent, content = _parse_frame(payload)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return  # not a kernel message (other websockets carry events, terminals...)
        if msg_type != "status" or not parent:
            return
        self.last = time.monotonic()
        if content.get("execution_state") == "busy":
            self.started += 1
            self.pending.add(parent)
        elif content.get("execution_state") == "idle":
            self.pending.discard(parent)


def _parse_frame(payload) -> tuple[str, str, dict]:
    """``(msg_type, parent msg_id, content)`` of a kernel websocket frame, in either protocol:
    JSON text, or ``v1.kernel.websocket.jupyter.org`` (offsets, channel, header, parent
    header, metadata, content)."""
    if isinstance(payload, str):
        msg = json.loads(payload)
        header, parent, content = msg["header"], msg["parent_header"], msg["content"]
    else:
        n = int.from_bytes(payload[:8], "little")
        offsets = [int.from_bytes(payload[8 * i : 8 * i + 8], "little") for i in range(1, n + 1)]
        parts = [payload[a:b] for a, b in zip(offsets, offsets[1:], strict=False)]
        header, parent, _, content = (json.loads(part) for part in parts[1:5])
    return header.get("msg_type", ""), (parent or {}).get("msg_id", ""), content


# Playwright's sync API allows one driver per thread, so sessions that overlap (a test's own
# session inside a shared one) share it; it stops when the last session closes.
_DRIVER: dict = {"playwright": None, "users": 0}


def _playwright_acquire():
    if _DRIVER["playwright"] is None:
        from playwright.sync_api import sync_playwright

        _DRIVER["playwright"] = sync_playwright().start()
    _DRIVER["users"] += 1
    return _DRIVER["playwright"]


def _playwright_release() -> None:
    _DRIVER["users"] -= 1
    if _DRIVER["users"] == 0:
        driver, _DRIVER["playwright"] = _DRIVER["playwright"], None
        try:
            driver.stop()
        except Exception:
            pass


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# The JavaScript below reads the page; it never changes it except for the status recorder.
_INDICATOR = ".jp-NotebookPanel .jp-Notebook-ExecutionIndicator"
_JS_STATUS = f"""() => {{
  const el = document.querySelector('{_INDICATOR}');
  return el ? el.dataset.status : null;
}}"""
# Done when the kernel is idle and every cell with code shows an execution count, or when an
# error stopped the run (JupyterLab then clears the prompts of the cells it skipped).
_JS_CELLS_DONE = f"""(runnable) => {{
  const el = document.querySelector('{_INDICATOR}');
  if (!el || el.dataset.status !== 'idle') return false;
  const prompts = Array.from(
    document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-InputPrompt'))
    .map(p => p.textContent);
  if (prompts.some(p => p.includes('*'))) return false;
  if (document.querySelector('.jp-NotebookPanel [data-mime-type="{_STDERR}"]')) return true;
  return prompts.length === runnable.length
    && prompts.every((p, i) => !runnable[i] || /[0-9]/.test(p));
}}"""
_JS_PROMPTS = """() => Array.from(
  document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-InputPrompt'))
  .map(p => p.textContent.trim())"""
_JS_ERRORS = f"""() => Array.from(
  document.querySelectorAll('.jp-NotebookPanel [data-mime-type="{_STDERR}"]'))
  .map(e => e.textContent.trim().slice(-600))"""
# What the learner sees next to the slider: the slider's cell's outputs without the sliders
# themselves (their readouts always change), as text plus the sources of images.
_JS_OUTPUT = """(el) => {
  const area = el.closest('.jp-Cell').querySelector('.jp-Cell-outputArea');
  const clone = area.cloneNode(true);
  clone.querySelectorAll('.widget-slider').forEach(n => n.remove());
  const images = Array.from(clone.querySelectorAll('img')).map(i => i.getAttribute('src'));
  const readout = el.querySelector('.widget-readout');
  return {text: clone.textContent.replace(/\\s+/g, ' ').trim(), images: images,
          readout: readout ? readout.textContent.trim() : ''};
}"""
# Puts the slider's outputs at the top of the notebook view, with a few lines of the code cell
# above them for context, so the screenshot shows the slider and its plot.
_JS_FRAME = """(el) => {
  const area = el.closest('.jp-Cell').querySelector('.jp-Cell-outputArea');
  area.scrollIntoView({block: 'start'});
  let box = area.parentElement;
  while (box && box.scrollHeight <= box.clientHeight) box = box.parentElement;
  if (box) box.scrollBy(0, -90);
}"""
_JS_IMAGES_LOADED = """(el) => Array.from(
  el.closest('.jp-Cell').querySelectorAll('.jp-Cell-outputArea img'))
  .every(i => i.complete && i.naturalWidth > 0)"""
_JS_IMAGE_BOXES = """(el) => Array.from(
  el.closest('.jp-Cell').querySelectorAll('.jp-Cell-outputArea img'))
  .map(i => { const r = i.getBoundingClientRect();
              return [i.getAttribute('src'), r.left, r.top, r.right, r.bottom]; })"""


def _wait(page, js: str, what: str, timeout: float, arg=None) -> None:
    try:
        page.wait_for_function(js, arg=arg, timeout=timeout * 1000, polling=200)
    except Exception as e:
        raise UiCheckError(f"timed out after {timeout:.0f} s waiting for {what}") from e


def _check_no_errors(page, when: str) -> None:
    errors = page.evaluate(_JS_ERRORS)
    if errors:
        shown = "\n---\n".join(errors)
        raise UiCheckError(f"{len(errors)} output(s) show an error or stderr {when}:\n{shown}")


def _code_cells(notebook: Path) -> list[bool]:
    """For each code cell of the stored notebook: does it have source to run?"""
    cells = json.loads(notebook.read_text())["cells"]
    return [bool("".join(c["source"]).strip()) for c in cells if c.get("cell_type") == "code"]


def _find_slider(page, slider: int | str):
    sliders = page.locator(".jp-NotebookPanel .widget-slider")
    if isinstance(slider, int):
        count = sliders.count()
        if not 0 <= slider < count:
            raise UiCheckError(f"slider index {slider} out of range: the page shows {count}")
        return sliders.nth(slider)
    label = re.compile(rf"^\s*{re.escape(slider)}\s*$")
    found = sliders.filter(has=page.locator(".widget-label", has_text=label))
    if found.count() != 1:
        labels = page.locator(".jp-NotebookPanel .widget-slider .widget-label").all_text_contents()
        raise UiCheckError(
            f"expected one slider labelled {slider!r}, found {found.count()}; labels: {labels}"
        )
    return found


def _signature(output: dict) -> str:
    blob = output["text"] + "\0" + "\0".join(output["images"])
    return hashlib.sha256(blob.encode()).hexdigest()


def _describe(output: dict) -> str:
    return f"{output['text'][:300]!r} and {len(output['images'])} image(s)"


def run_slider_check(
    notebook: str | Path,
    slider: int | str = 0,
    *,
    keys: tuple[str, ...] = ("End",),
    expect_image: bool = True,
    session: UiSession | None = None,
    screenshot: str | Path | None = None,
    settle: float = 1.0,
) -> SliderResult:
    """Run ``notebook`` in JupyterLab, move one slider, and check what a learner would see.

    After all cells ran, the slider goes forth (``keys``), back to where it started (arrow
    keys), and forth again. The output next to it must change on the way forth, come back
    exactly on the way back, and be the same again the second time: what the widget shows
    must depend on the slider's value alone. Raises :class:`UiCheckError` (an
    ``AssertionError``) when it does not, when a cell shows an error (a traceback or anything
    on stderr) at any point, when a cell was left unexecuted, or when the slider cannot be
    found or does not move.

    Args:
        notebook: the ``.ipynb`` to check; a copy is run, the file itself is never written.
        slider: the slider's label (its ``description``, e.g. ``"T"``) or its index among all
            sliders on the page, in document order.
        keys: keys pressed on the focused slider handle, e.g. ``("End",)`` for its maximum or
            ``("ArrowRight",) * 3`` for three steps up.
        expect_image: also require at least one image (a plot) next to the slider afterwards.
        session: a running :class:`UiSession` to reuse; by default one is started and stopped.
        screenshot: where to save the screenshot (default ``build/ui/<notebook stem>.png``),
            taken with the slider moved; a failure saves ``<stem>-failed.png`` beside it.
        settle: seconds the kernel must stay idle after a move before the output is read.

    Example::

        result = run_slider_check("notebooks/02_soft_targets_and_temperature.ipynb", "T")
        print(result.value_before, "->", result.value_after, result.screenshot)
    """
    notebook = Path(notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"no notebook at {notebook}")
    if session is None:
        with UiSession() as own:
            return run_slider_check(
                notebook,
                slider,
                keys=keys,
                expect_image=expect_image,
                session=own,
                screenshot=screenshot,
                settle=settle,
            )
    screenshot = Path(screenshot or SCREENSHOTS / f"{notebook.stem}.png")
    failed = screenshot.with_name(f"{screenshot.stem}-failed.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    failed.unlink(missing_ok=True)  # from an earlier run
    t0 = time.perf_counter()
    path = session.add_notebook(notebook)
    page = session.new_page(path)
    try:
        _run_all(page, session, path, notebook)
        target = _find_slider(page, slider)
        handle = _Slider(page, session.traffic[page], target, slider, session.timeout, settle)
        moves = _move_forth_and_back(handle, keys)
        if expect_image and not moves[-1][1]["images"]:
            raise UiCheckError(f"no plot next to slider {slider!r} after the move")
        _screenshot(page, target, screenshot, session.timeout)
    except BaseException as e:
        try:
            page.screenshot(path=str(failed))
            note = f"\n(screenshot of the failure: {failed})"
        except Exception:
            note = ""
        if isinstance(e, UiCheckError) and note:
            raise UiCheckError(f"{notebook.name}: {e}{note}") from e
        raise
    finally:
        session.traffic.pop(page, None)
        try:
            page.close()
            session.shutdown_kernels(path)
        except Exception:
            pass  # close() stops whatever is left
    (value_before, before), (value_after, after) = moves[0], moves[-1]
    return SliderResult(
        notebook,
        value_before,
        value_after,
        before["readout"],
        after["readout"],
        before["text"],
        after["text"],
        len(after["images"]),
        screenshot,
        time.perf_counter() - t0,
    )


def _wait_for_kernel(page, session: UiSession, path: str) -> None:
    """Wait until the notebook's kernel runs and is idle, as the server and the page see it.

    If JupyterLab asks which kernel to start (it does when it opens the notebook before the
    kernel list has loaded), accept its suggestion, the notebook's own kernel, as a learner
    would.
    """
    deadline = time.monotonic() + session.timeout
    while time.monotonic() < deadline:
        dialog = page.locator(".jp-Dialog")
        if dialog.count() and "Select Kernel" in dialog.first.inner_text():
            dialog.locator("button.jp-mod-accept").click()
        states = [
            s["kernel"]["execution_state"]
            for s in session.api("GET", "/api/sessions")
            if s.get("path") == path and s.get("kernel")
        ]
        if states == ["idle"] and page.evaluate(_JS_STATUS) == "idle":
            return
        time.sleep(0.25)
    raise UiCheckError(f"the kernel did not start in {session.timeout:.0f} s")


def _run_all(page, session: UiSession, path: str, notebook: Path) -> None:
    """Run all cells from the Run menu; check that each ran and none shows an error."""
    page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(timeout=session.timeout * 1000)
    _wait_for_kernel(page, session, path)
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    runnable = _code_cells(notebook)
    _wait(page, _JS_CELLS_DONE, "all cells to finish", session.timeout, arg=runnable)
    _check_no_errors(page, "after running all cells")
    prompts = page.evaluate(_JS_PROMPTS)
    if len(prompts) != len(runnable):
        raise UiCheckError(f"page shows {len(prompts)} code cells, notebook has {len(runnable)}")
    skipped = [
        i
        for i, (p, run) in enumerate(zip(prompts, runnable, strict=True))
        if run and not re.search(r"\d", p)
    ]
    if skipped:
        raise UiCheckError(f"code cells {skipped} (0-based) did not run; prompts: {prompts}")


@dataclass
class _Slider:
    """One slider on a page, with what moving it needs: the page, its kernel traffic, limits."""

    page: object
    traffic: _KernelTraffic
    locator: object  # the slider's .widget-slider element
    name: int | str  # as the caller named it, for messages
    timeout: float
    settle: float

    def value(self) -> str:
        return self.locator.locator(".noUi-handle").first.get_attribute("aria-valuenow")

    def output(self) -> dict:
        return self.locator.evaluate(_JS_OUTPUT)

    def press(self, keys) -> str:
        self.locator.locator(".noUi-handle").first.focus()
        for key in keys:
            self.page.keyboard.press(key)
        return f"pressing {list(keys)}"

    def step_to(self, value: str) -> str:
        """Arrow keys until the slider shows ``value``: every slider kind takes them, while
        a selection slider's readout looks editable but ignores what is typed."""
        handle = self.locator.locator(".noUi-handle").first
        handle.focus()
        for _ in range(1000):
            now = float(handle.get_attribute("aria-valuenow"))
            if now == float(value):
                break
            self.page.keyboard.press("ArrowLeft" if now > float(value) else "ArrowRight")
        return f"arrow keys back to {value}"

    def move(self, action, *args) -> tuple[str, dict]:
        """Move by ``action(*args)``; wait for the slider and the kernel; read the output."""
        start, busy_before = self.value(), self.traffic.started
        how = action(*args)
        handle = self.locator.locator(".noUi-handle").first
        try:
            self.page.wait_for_function(
                "([h, v]) => h.getAttribute('aria-valuenow') !== v",
                arg=[handle.element_handle(), start],
                timeout=10_000,
            )
        except Exception as e:
            raise UiCheckError(f"slider {self.name!r} stayed at {start} after {how}") from e
        value = self.value()
        self._settle(busy_before, f"the kernel to react to slider {self.name!r} -> {value}")
        _check_no_errors(self.page, f"after moving slider {self.name!r} to {value}")
        return value, self.output()

    def _settle(self, busy_before: int, what: str) -> None:
        """Wait until the kernel took the move up, finished it, and was quiet ``settle`` s."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            t = self.traffic
            if t.started > busy_before and not t.pending:
                if time.monotonic() - t.last >= self.settle:
                    return
            self.page.wait_for_timeout(100)  # a Playwright call: websocket events get in
        if self.traffic.started == busy_before:
            raise UiCheckError(f"timed out after {self.timeout:.0f} s waiting for {what}")
        raise UiCheckError(f"kernel still busy {self.timeout:.0f} s after {what}")


def _move_forth_and_back(slider: _Slider, keys) -> list[tuple[str, dict]]:
    """Forth, back, forth; returns ``[(value, output)]`` for the start and each move."""
    slider.locator.scroll_into_view_if_needed()
    moves = [(slider.value(), slider.output())]
    moves.append(slider.move(slider.press, keys))
    (v0, out0), (v1, out1) = moves
    name = slider.name
    if _signature(out1) == _signature(out0):
        raise UiCheckError(
            f"output did not change when slider {name!r} moved from {v0} to {v1}; "
            f"it still shows {_describe(out1)}"
        )
    moves.append(slider.move(slider.step_to, v0))
    moves.append(slider.move(slider.press, keys))
    for (v, out), (v_again, out_again) in ((moves[0], moves[2]), (moves[1], moves[3])):
        if v_again != v:
            raise UiCheckError(f"slider {name!r} went to {v_again}, expected {v}")
        if _signature(out_again) != _signature(out):
            raise UiCheckError(
                f"slider {name!r} at {v} again shows {_describe(out_again)}, but first "
                f"showed {_describe(out)}: the output depends on more than the slider's "
                "value (state carried between moves, or a plot drawn while another thread "
                "closed it: draw on matplotlib.figure.Figure, not pyplot, in widget callbacks)"
            )
    return moves


def _painted(shot, src: str, box) -> bool:
    """Does the screenshot show the PNG ``src`` (a data URL) at ``box``, fully drawn?"""
    from PIL import Image

    if not src.startswith("data:image/png;base64,"):
        return True  # nothing to compare with; the DOM checks already passed
    x0, y0, x1, y1 = (round(v) for v in box)
    png = base64.b64decode(src.split(",", 1)[1])
    with Image.open(io.BytesIO(png)) as plot:
        expected = plot.convert("RGB").convert("L").resize((x1 - x0, y1 - y0))
    seen = shot.crop((x0, y0, x1, y1)).convert("L")
    diff = np.abs(np.asarray(expected, np.int16) - np.asarray(seen, np.int16))
    # Scaling blurs edges a little; a blank or half-drawn plot differs over large areas.
    return bool((diff > 64).mean() <= 0.02)


def _in_view(box, viewport) -> bool:
    x0, y0, x1, y1 = box
    return x0 >= 0 and y0 >= 0 and x1 <= viewport["width"] and y1 <= viewport["height"]


def _screenshot(page, target, path: Path, timeout: float) -> None:
    """Save a screenshot with the slider's outputs in view, once its plots are painted.

    The saved picture is compared with each plot in view and retaken until they agree, so a
    screenshot taken before the browser painted a freshly loaded image is never kept.
    """
    from PIL import Image

    target.evaluate(_JS_FRAME)
    try:
        page.wait_for_function(
            _JS_IMAGES_LOADED, arg=target.element_handle(), timeout=timeout * 1000
        )
    except Exception as e:
        raise UiCheckError("the plot next to the slider never finished loading") from e
    deadline = time.monotonic() + timeout
    while True:
        page.screenshot(path=str(path))
        images = target.evaluate(_JS_IMAGE_BOXES)
        with Image.open(path) as shot:
            if all(
                _painted(shot, src, box)
                for src, *box in images
                if _in_view(box, page.viewport_size)
            ):
                return
        if time.monotonic() > deadline:
            raise UiCheckError(f"the plot next to the slider is not painted in {path}")
        page.wait_for_timeout(500)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--slider", default="0", help="label, or index among the sliders")
    parser.add_argument("--keys", default="End", help="comma-separated keys, e.g. ArrowRight")
    args = parser.parse_args(argv)
    missing = missing_requirements()
    if missing:
        print("cannot run the UI check:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 2
    slider = int(args.slider) if args.slider.isdigit() else args.slider
    result = run_slider_check(args.notebook, slider, keys=tuple(args.keys.split(",")))
    print(f"{result.notebook}: slider {result.value_before} -> {result.value_after}")
    print(f"  before: {result.text_before[:200]}")
    print(f"  after:  {result.text_after[:200]}")
    print(f"  screenshot: {result.screenshot} ({result.seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
