"""Child processes of the project, for tests and for bench/: a free port, the environment, stopping, /proc figures."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "scripts" / "entrypoint.sh"
# The soft open-file limit many hosts give; the entry point raises it to the hard one.
LOW_SOFT_FILE_LIMIT = 256


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_environment(**overrides: str) -> dict[str, str]:
    """The environment for a child process of the project, without test-runner settings leaking in."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTEST_", "DJANGO_SETTINGS"))}
    env["DJANGO_SETTINGS_MODULE"] = "realtime_project.settings"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


def manage(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python manage.py ...`` in a child process."""
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=check
    )


def run_python(code: str, *, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``python -c code`` in the project folder, its output captured as text; the caller checks how it ended."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def stop_process(process: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Send ``sig``, wait up to ``timeout`` seconds, then SIGKILL; safe on processes that already ended."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def resident_kib(pid: int) -> int:
    """A process's resident memory in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS line for process {pid}")


def open_fds(pid: int) -> int:
    """How many file descriptors a process holds open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def entrypoint_started(cwd: Path, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """``scripts/entrypoint.sh`` started in a session of its own, logging to ``log_path``, under
    ``LOW_SOFT_FILE_LIMIT`` open files (soft; the hard limit stays)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [str(ENTRYPOINT)],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_SOFT_FILE_LIMIT, hard)),
        )
