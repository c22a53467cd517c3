"""Several server processes behind one port (``REALTIME_PROCESSES``), started by scripts/entrypoint.sh.

One Python process uses one core, so an instance that should use all its cores runs several. The
entry point migrates, then execs ``python -m channels_app.ops.supervisor -- scripts/entrypoint.sh
[options]``, which:

1. raises the soft open-file limit to the hard one (every connection is a file) and logs both;
2. resolves ``REALTIME_PROCESSES`` (``1`` by default, ``auto`` = the cores the container may use);
3. with one process, execs the entry point again as the server (the server stays PID 1, as before);
4. with N, binds N listening sockets on ``HOST:PORT`` with ``SO_REUSEPORT`` (each with the listen
   backlog ``REALTIME_LISTEN_BACKLOG``) and starts the entry point once per socket, which runs
   daphne or uvicorn on it (``REALTIME_LISTEN_FD``). The kernel spreads new connections over the
   sockets by a hash of their addresses, so the processes get even shares; one socket shared by
   all would hand most connections to whichever process wakes first. The supervisor keeps every
   socket open, so a child that dies leaves its queue of pending connections for its successor.
   It restarts a child that dies, gives up (status 1) when children keep dying, and passes SIGTERM
   on to every child, which drains as a single server does;
5. with N, also makes a private folder (``REALTIME_METRICS_DIR``) where each child keeps a snapshot of
   its metrics, so that ``/metrics`` of any child sums them (``metrics_snapshots.py``); it removes a
   child's snapshot when the child exits, and the folder when it stops.

The MEMORY driver keeps messages, history and connection slots in the process: N processes would be
N separate services behind one port, so more than one is refused (status 2) with the fix.
No Django import: this runs before the server, and in the parent that never serves.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError, load_config

logger = logging.getLogger(__name__)

PROCESSES_VAR = "REALTIME_PROCESSES"
BACKLOG_VAR = "REALTIME_LISTEN_BACKLOG"
METRICS_DIR_VAR = "REALTIME_METRICS_DIR"
DEFAULT_BACKLOG = 2048
# Open files a process holds besides its connections: Redis and database pools, logs, the
# interpreter's own files (about 30 at rest; the margin is for pools under load).
RESERVED_FILES = 256
# A child that dies more than this many times within the window means a crash loop: stop.
MAX_RESTARTS = 5
RESTART_WINDOW_SECONDS = 60.0
# How long after the drain's grace period the supervisor waits before it kills what is left.
KILL_MARGIN_SECONDS = 5.0
# A child that exits is restarted this long after, so that a crash loop does not spin.
RESTART_DELAY_SECONDS = 1.0
_POLL_SECONDS = 0.1


class SupervisorError(Exception):
    """A setting the supervisor cannot work with; the message says what to write instead."""


def available_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota (v2 or v1), at least 1."""
    cores = len(os.sched_getaffinity(0))
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        # 1.5 cores of quota still keeps two processes busy: round up.
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota(root: Path) -> float | None:
    """The CPU quota in cores, or None when there is none (or it cannot be read)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def process_count(text: str | None, *, cores: int | None = None) -> int:
    """``REALTIME_PROCESSES`` as a number: unset means 1, ``auto`` the available cores."""
    value = (text or "").strip()
    if not value:
        return 1
    if value.lower() == "auto":
        return cores if cores is not None else available_cores()
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise SupervisorError(
        f"{PROCESSES_VAR}={text} is not a number of server processes: write {PROCESSES_VAR}=1 (the default), "
        f"a number such as {PROCESSES_VAR}=4, or {PROCESSES_VAR}=auto (one per available core)"
    )


def listen_backlog(text: str | None) -> int:
    """``REALTIME_LISTEN_BACKLOG`` as a number (default 2048); the kernel caps it at ``net.core.somaxconn``."""
    value = (text or "").strip()
    if not value:
        return DEFAULT_BACKLOG
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise SupervisorError(f"{BACKLOG_VAR}={text} is not a queue length: write for example {BACKLOG_VAR}=4096")


@dataclass(frozen=True)
class FileLimit:
    """The open-file limit before and after ``raise_file_limit``."""

    soft_before: int
    soft: int
    hard: int


def raise_file_limit() -> FileLimit:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-file limit from %s to %s: %s", soft, hard, exc)
            return FileLimit(soft, soft, hard)
    return FileLimit(soft, hard, hard)


def connections_configured(config) -> int:
    """The connections the configuration's channels allow at most, summed (channels created later are not counted)."""
    return sum(spec.max_of_channel_connections for spec in config.channels)


def check_file_limit(limit: FileLimit, *, connections: int) -> str | None:
    """A warning when ``connections`` (plus the reserve) would not fit under the hard open-file limit."""
    needed = connections + RESERVED_FILES
    if limit.hard == resource.RLIM_INFINITY or limit.hard >= needed:
        return None
    return (
        f"the hard open-file limit ({limit.hard}) is below the {needed} files that the configured channels' "
        f"{connections} connections need in one process: raise it (docker run --ulimit nofile={needed}:{needed}, "
        "LimitNOFILE= under systemd; see docs/deployment.md, 'Limits: files, backlog, ports')"
    )


def check_driver(driver: str, processes: int) -> None:
    """Refuse several processes on the MEMORY driver: each would be a separate service behind one port."""
    if processes > 1 and driver == "MEMORY":
        raise SupervisorError(
            f"{PROCESSES_VAR}={processes} needs pubsub.driver REDIS: with the MEMORY driver each process keeps its "
            "own messages, history and connection slots, so a message published to one process would not reach "
            f'subscribers of another. Write {PROCESSES_VAR}=1, or set pubsub.driver: "REDIS" with a redis url '
            "(docs/deployment.md, 'Several processes per instance')"
        )


def check_shared_key(env: dict[str, str], processes: int) -> None:
    """Refuse several processes that would each make up their own signing key (tokens, sessions).

    Without ``DJANGO_SECRET_KEY`` the key is kept in the data folder, which the processes share; with
    PostgreSQL and no ``REALTIME_DATA_DIR`` there is none, and a token one process signs would be
    refused by the others.
    """
    if processes == 1 or env.get("DJANGO_SECRET_KEY") or env.get("REALTIME_DATA_DIR"):
        return
    if env.get("DATABASE_URL", "sqlite:").startswith("sqlite:"):
        return
    raise SupervisorError(
        f"{PROCESSES_VAR}={processes} needs one signing key for every process: set DJANGO_SECRET_KEY (or "
        "REALTIME_DATA_DIR, a folder they share), or write REALTIME_PROCESSES=1"
    )


def listening_sockets(host: str, port: int, count: int, backlog: int, *, nodelay: bool) -> list[socket.socket]:
    """``count`` sockets listening on ``host:port`` with ``SO_REUSEPORT``, inheritable by children.

    ``nodelay``: accepted connections inherit ``TCP_NODELAY`` from the listener. uvicorn sets it on
    the connections of a socket it opens itself, not on one it is handed (``--fd``), so the
    listener carries it for uvicorn; daphne (Twisted) sets it on neither, and gets neither here.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if nodelay:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((host.strip("[]"), port))
            sock.listen(backlog)
            sock.set_inheritable(True)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise SupervisorError(f"cannot listen on {host}:{port}: {exc}: choose another PORT or HOST") from exc
    return sockets


def metrics_dir_create() -> Path | None:
    """A folder only this user may read (0700) for the children's metrics snapshots; None (logged) when
    none can be made, and each scrape then describes the process that answers it."""
    try:
        return Path(tempfile.mkdtemp(prefix="realtime-metrics-"))
    except OSError as exc:
        logger.warning("no folder for the metrics snapshots (%s): each /metrics describes one server process", exc)
        return None


def metrics_snapshot_remove(directory: Path, pid: int) -> None:
    """Remove what the server process ``pid`` wrote in ``directory``: its snapshot (``<pid>.json``, the
    name ``metrics_snapshots.py`` writes under) and a temporary file left by a write cut short."""
    for path in (directory / f"{pid}.json", *directory.glob(f".{pid}.*.tmp")):
        path.unlink(missing_ok=True)


@dataclass
class Child:
    """One server process and the listening socket it serves."""

    index: int
    sock: socket.socket
    process: subprocess.Popen | None = None
    restart_at: float = 0.0


class Supervisor:
    """Runs one server process per listening socket, restarts them, and stops them on SIGTERM."""

    def __init__(
        self,
        command: list[str],
        sockets: list[socket.socket],
        *,
        grace: float,
        env: dict[str, str],
        metrics_dir: Path | None = None,
    ):
        self.command = command
        self.children = [Child(index, sock) for index, sock in enumerate(sockets)]
        self.grace = grace
        self.env = env if metrics_dir is None else {**env, METRICS_DIR_VAR: str(metrics_dir)}
        self.metrics_dir = metrics_dir
        self.stopping: int | None = None
        self.deaths: deque[float] = deque()

    def start(self, child: Child) -> None:
        """Start (or restart) ``child``'s server process on its socket."""
        fd = child.sock.fileno()
        env = {
            **self.env,
            "REALTIME_SUPERVISED": "1",
            "REALTIME_LISTEN_FD": str(fd),
            "REALTIME_PROCESS_INDEX": str(child.index),
        }
        # A process group of its own: a terminal's Ctrl-C reaches the supervisor only, which passes it on once.
        child.process = subprocess.Popen(self.command, env=env, pass_fds=(fd,), process_group=0)
        logger.info("server process %d started (pid %d)", child.index, child.process.pid)

    def run(self) -> int:
        """Start every child and supervise until they are stopped; return the exit status."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for child in self.children:
            self.start(child)
        while self.stopping is None:
            now = time.monotonic()
            for child in self.children:
                if child.process is None and now >= child.restart_at:
                    self.start(child)
                elif child.process is not None and child.process.poll() is not None:
                    self._forget_metrics(child.process.pid)
                    if not self._restart_allowed(child):
                        return self._shutdown(signal.SIGTERM, status=1)
                    child.process, child.restart_at = None, now + RESTART_DELAY_SECONDS
            time.sleep(_POLL_SECONDS)
        return self._shutdown(self.stopping, status=0)

    def _restart_allowed(self, child: Child) -> bool:
        """Log ``child``'s exit; False when children exited more than ``MAX_RESTARTS`` times in the window."""
        now = time.monotonic()
        self.deaths.append(now)
        while self.deaths and now - self.deaths[0] > RESTART_WINDOW_SECONDS:
            self.deaths.popleft()
        pid, status = child.process.pid, child.process.returncode
        if len(self.deaths) > MAX_RESTARTS:
            logger.error(
                "server process %d (pid %d) exited with status %s: %d exits within %.0fs, stopping the instance",
                child.index, pid, status, len(self.deaths), RESTART_WINDOW_SECONDS,
            )  # fmt: skip
            return False
        logger.warning("server process %d (pid %d) exited with status %s: restarting it", child.index, pid, status)
        return True

    def _forget_metrics(self, pid: int) -> None:
        # An exited process's counts leave the instance's sums now, not once its snapshot is stale.
        if self.metrics_dir is not None:
            metrics_snapshot_remove(self.metrics_dir, pid)

    def _on_signal(self, signum, frame) -> None:
        if self.stopping is None:
            self.stopping = signum

    def _shutdown(self, signum: int, *, status: int) -> int:
        running = [
            child.process for child in self.children if child.process is not None and child.process.poll() is None
        ]
        logger.info(
            "%s: stopping %d server process(es), each draining for at most %.0fs",
            signal.Signals(signum).name,
            len(running),
            self.grace,
        )
        for process in running:
            try:
                process.send_signal(signum)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.grace + KILL_MARGIN_SECONDS
        for process in running:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                logger.error("server process pid %d did not stop within the grace period: killing it", process.pid)
                process.kill()
                process.wait()
        for child in self.children:
            child.sock.close()
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return status


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("realtime: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    """``python -m channels_app.ops.supervisor -- COMMAND...``: see the module's docstring.

    ``--check`` only checks the settings (status 2 and the fix when one is wrong), so that the entry
    point stops before it migrates.
    """
    _configure_logging()
    command = list(sys.argv[1:] if argv is None else argv)
    check_only = command[:1] == ["--check"]
    if command[:1] in (["--"], ["--check"]):
        command = command[1:]
    if not command and not check_only:
        logger.error("usage: python -m channels_app.ops.supervisor -- COMMAND [ARGS...] (the command runs one server)")
        return 2
    env = dict(os.environ)
    try:
        processes = process_count(env.get(PROCESSES_VAR))
        backlog = listen_backlog(env.get(BACKLOG_VAR))
        config = load_config(env.get("CONFIG_FOLDER_PATH"))
        check_driver(config.pubsub.driver, processes)
        check_shared_key(env, processes)
    except (SupervisorError, ConfigError) as exc:
        logger.error("%s", exc)
        return 2
    if check_only:
        return 0

    limit = raise_file_limit()
    logger.info("open files: soft limit %s (was %s), hard limit %s", limit.soft, limit.soft_before, limit.hard)
    warning = check_file_limit(limit, connections=connections_configured(config))
    if warning:
        logger.warning("%s", warning)

    env["REALTIME_SUPERVISED"] = "1"
    # Only this supervisor's children share snapshots; one process describes itself.
    env.pop(METRICS_DIR_VAR, None)
    if processes == 1:
        os.execvpe(command[0], command, env)
    host, port = env.get("HOST", "0.0.0.0"), int(env.get("PORT", "8080"))
    try:
        nodelay = env.get("REALTIME_SERVER") == "uvicorn"
        sockets = listening_sockets(host, port, processes, backlog, nodelay=nodelay)
    except SupervisorError as exc:
        logger.error("%s", exc)
        return 2
    logger.info("%d server processes on %s:%s (SO_REUSEPORT, backlog %d each)", processes, host, port, backlog)
    grace = float(env.get("REALTIME_SHUTDOWN_GRACE_SECONDS", "20"))
    return Supervisor(command, sockets, grace=grace, env=env, metrics_dir=metrics_dir_create()).run()


if __name__ == "__main__":
    sys.exit(main())
