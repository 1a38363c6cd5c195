"""Run one untrusted command in a sandbox: bubblewrap namespaces plus resource limits.

:func:`run` starts ``argv`` (a Python command: the grader's runner for one submission) so that

- it has its own PID namespace: every process it starts, a double-forked ``setsid`` daemon
  included, is killed when the sandbox's first process ends or is killed (``bwrap
  --unshare-pid --die-with-parent``), so nothing outlives grading;
- it sees a fresh, read-only file system holding only the system folders, the Python
  installation, the virtual environment and kdlib's own code, plus ``job_dir`` (writable, the
  one place its results can go) and a private ``/tmp`` of limited size. Answer keys, other
  submissions, the report and the grader's files are simply not there;
- it has no network (``--unshare-net``: only a loopback interface) and, when the grader runs
  as root, runs as an unprivileged user of its own (``setpriv``) with no capabilities;
- it is held to limits on memory (address space per process), CPU time, processes and file
  size (``setrlimit``, inherited by everything it starts), and to a wall-clock limit.

Where bubblewrap is missing or cannot create namespaces (macOS, some containers), :func:`run`
still runs the command with the resource limits and its own process group, and
:func:`isolation` says loudly which protections are then not enforced.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["Limits", "Outcome", "isolation", "run", "NOT_ENFORCED_WITHOUT_BWRAP"]

# What the fallback (no bubblewrap) does not enforce, for the warning and the report.
NOT_ENFORCED_WITHOUT_BWRAP = (
    "separate PID namespace (a setsid daemon can outlive grading)",
    "read-only file system (the notebook runs with your permissions: it can read and change "
    "your files, other submissions and the answer keys)",
    "network isolation",
)
_UID_BASE = 61000  # sandbox users when the grader runs as root: 61000, 61001, ...


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandbox (each applies to every process in it)."""

    memory_mb: int = 4096  # address space per process (RLIMIT_AS); past it allocations fail
    cpu_seconds: int = 1800  # CPU time per process (RLIMIT_CPU); past it the process is killed
    processes: int = 256  # processes and threads of the sandbox's user (RLIMIT_NPROC)
    file_mb: int = 64  # largest file it may write, its captured output included (RLIMIT_FSIZE)
    tmp_mb: int = 512  # size of its private /tmp

    def __post_init__(self):
        for name in ("memory_mb", "cpu_seconds", "processes", "file_mb", "tmp_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class Outcome:
    """How a sandboxed command ended."""

    returncode: int | None  # None when it was killed for running past the wall-clock limit
    timed_out: bool  # ran past the wall-clock limit and was killed
    seconds: float  # wall time
    isolated: bool  # ran under bubblewrap


def _probe_command() -> list[str]:
    return ["bwrap", "--unshare-pid", "--unshare-net", "--die-with-parent", "--ro-bind", "/", "/"]


@lru_cache(maxsize=1)
def _bwrap_problem() -> str | None:
    """Why bubblewrap cannot be used here, or None when it works."""
    if os.environ.get("KDLIB_SANDBOX", "").lower() in ("0", "off", "none"):
        return "KDLIB_SANDBOX=off"
    if sys.platform != "linux":
        return f"bubblewrap needs Linux (this is {sys.platform})"
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    try:
        done = subprocess.run(
            [*_probe_command(), "true"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError) as e:
        return f"bwrap failed to start: {e}"
    if done.returncode != 0:
        return f"bwrap cannot create namespaces here: {done.stderr.strip()[:200]}"
    return None


def isolation() -> tuple[bool, str]:
    """``(True, what is enforced)`` under bubblewrap, else ``(False, a warning)``."""
    problem = _bwrap_problem()
    if problem is None:
        if os.geteuid() == 0:
            user, procs = "its own unprivileged user, ", "processes, "
        else:
            user, procs = "", ""
        return True, (
            "each submission runs under bubblewrap: own PID namespace, no network, read-only "
            f"view of Python and kdlib only, {user}limits on memory, CPU time, {procs}file "
            "size and wall time"
        )
    return False, (
        f"WARNING: no sandbox ({problem}). Submissions run with your permissions; only the "
        "memory, CPU time, file size and wall-clock limits are enforced. NOT enforced: "
        + "; ".join(NOT_ENFORCED_WITHOUT_BWRAP)
        + ". Grade untrusted submissions on Linux with bubblewrap installed."
    )


def _ancestors(path: Path) -> list[Path]:
    return list(reversed(path.parents))[1:]  # without "/"


def _read_only_paths() -> list[Path]:
    """What a sandboxed Python needs: the interpreter's installation, the environment, kdlib."""
    paths = {
        Path(sys.base_prefix).resolve(),
        Path(sys.prefix).resolve(),
        Path(sysconfig.get_paths()["purelib"]).resolve(),
        Path(sysconfig.get_paths()["platlib"]).resolve(),
        Path(__file__).resolve().parents[1],  # kdlib itself (an editable install points here)
        Path(sys.executable).resolve().parent.parent,
    }
    system = {Path(p) for p in ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/lib32")}
    keep = []
    for p in sorted(paths):  # drop those inside another one, and the system folders
        if any(q != p and q in p.parents for q in paths) or p in system or p == Path("/"):
            continue
        keep.append(p)
    return keep


def _bwrap_argv(argv: list[str], job_dir: Path, uid: int | None, limits: Limits) -> list[str]:
    cmd = [
        "bwrap",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",  # no way to push keystrokes into the grader's terminal
    ]
    for name in ("usr", "etc"):
        cmd += ["--ro-bind", f"/{name}", f"/{name}"]
    for name in ("bin", "sbin", "lib", "lib64", "lib32"):
        p = Path("/" + name)
        if p.is_symlink():
            cmd += ["--symlink", os.readlink(p), str(p)]
        elif p.is_dir():
            cmd += ["--ro-bind", str(p), str(p)]
    cmd += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--perms",
        "1777",
        "--size",
        str(limits.tmp_mb * 2**20),
        "--tmpfs",
        "/tmp",
    ]
    made: set[Path] = {Path("/usr"), Path("/etc"), Path("/tmp")}
    for p in [*_read_only_paths(), job_dir]:
        for a in _ancestors(p):  # bwrap would create them 0700: closed to the sandbox user
            if a not in made:
                cmd += ["--perms", "0755", "--dir", str(a)]
                made.add(a)
    for p in _read_only_paths():
        cmd += ["--ro-bind", str(p), str(p)]
    cmd += ["--bind", str(job_dir), str(job_dir), "--chdir", str(job_dir)]
    if uid is not None:  # as root: drop to a user of its own, without capabilities
        cmd += [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ]
    return cmd + argv


def _set_limits(limits: Limits, nproc: bool):
    def apply():
        import resource

        mb = 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb,) * 2)
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 5))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * mb,) * 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if nproc:
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes,) * 2)

    return apply


def run(
    argv: list[str],
    job_dir: str | os.PathLike,
    *,
    env: dict[str, str],
    limits: Limits = Limits(),
    wall_seconds: float = 600,
    output: str | os.PathLike | None = None,
    slot: int = 0,
) -> Outcome:
    """Run ``argv`` sandboxed with ``job_dir`` as its working and only writable folder.

    Args:
        argv: the command (its paths must be visible inside: Python, kdlib, ``job_dir``).
        job_dir: an existing folder, bound read-write; everything else is read-only or absent.
        env: the whole environment of the command (nothing else is inherited).
        limits: resource limits.
        wall_seconds: the sandbox is killed, with everything in it, after this long.
        output: file that receives the command's stdout and stderr (its size is capped by
            ``limits.file_mb``); default: discarded.
        slot: which sandbox user to run as when the grader is root (``61000 + slot``); give
            sandboxes running at the same time different slots.

    Returns:
        An :class:`Outcome`. Never raises because of what the command does.
    """
    job_dir = Path(job_dir).resolve()
    if not job_dir.is_dir():
        raise ValueError(f"job_dir must be an existing folder, got {str(job_dir)!r}")
    if not wall_seconds > 0:
        raise ValueError(f"wall_seconds must be > 0, got {wall_seconds!r}")
    isolated = _bwrap_problem() is None
    root = os.geteuid() == 0
    uid = _UID_BASE + slot if isolated and root else None
    if uid is not None:
        for p in [job_dir, *job_dir.rglob("*")]:
            os.chown(p, uid, uid, follow_symlinks=False)
    cmd = _bwrap_argv(argv, job_dir, uid, limits) if isolated else argv
    sink = open(output, "wb") if output else subprocess.DEVNULL  # noqa: SIM115
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=job_dir,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the fallback kills it whole
            preexec_fn=_set_limits(limits, nproc=uid is not None),
        )
    finally:
        if output:
            sink.close()
    timed_out = False
    try:
        returncode = proc.wait(timeout=wall_seconds)
    except subprocess.TimeoutExpired:
        timed_out, returncode = True, None
    finally:
        _kill(proc)
    return Outcome(returncode, timed_out, time.monotonic() - t0, isolated)


def _kill(proc: subprocess.Popen) -> None:
    """Kill the sandbox. Under bwrap, killing its first process ends the PID namespace and
    every process in it; without, the process group is the best there is."""
    for target in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
        try:
            target()
        except (ProcessLookupError, PermissionError, OSError):
            pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
