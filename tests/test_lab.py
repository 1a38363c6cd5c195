"""`make lab` serves JupyterLab: start it headless on a loopback port and fetch its page."""

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_lab_serves_the_course(tmp_path):
    port, token = _free_port(), "kdlib-test-token"
    flags = (
        f"--no-browser --ip=127.0.0.1 --port={port} --ServerApp.port_retries=0 "
        f"--IdentityProvider.token={token} --ServerApp.runtime_dir={tmp_path}"
    )
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        ["make", "-s", "lab", f"LAB_FLAGS={flags}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # so the whole group (make + jupyter) can be stopped
    )
    try:
        url = f"http://127.0.0.1:{port}/lab/tree/notebooks/00_setup_and_data.ipynb?token={token}"
        deadline, page = time.time() + 60, None
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    page = resp.read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert page is not None, f"JupyterLab did not answer on port {port} (exit {proc.poll()})"
        assert "JupyterLab" in page
        api = f"http://127.0.0.1:{port}/api/contents/notebooks?token={token}"
        with urllib.request.urlopen(api, timeout=10) as resp:
            listing = resp.read().decode()
        assert "00_setup_and_data.ipynb" in listing
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
