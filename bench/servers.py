"""Servers under test, each a child process on a free loopback port.

``ServiceServer`` runs the project under daphne (or uvicorn) the way tests/support/liveserver.py does
(temp YAML config, SQLite copied from a migrated database, ``sync_channels``, then
``python -m daphne -e tcp:port=PORT:interface=127.0.0.1:backlog=2048 realtime_project.asgi:application``).
``BaselineServer`` runs ``python -m bench.baseline``; ``AsgiWsBaselineServer`` and
``SSEBaselineServer`` run the bare ASGI apps (bench/asgi_ws_baseline.py, bench/sse_baseline.py)
under the same server as the service. WebSocket servers have ``start()``, ``stop()``, ``pid``,
``subscriber_url(client_id, channel)``, ``publisher_url(channel)`` and ``problems()`` (log lines
worth reporting); every one of them has rooms, so the many-channels scenario runs on each.

Every child is registered in ``CHILDREN``: ``stop_all()`` runs at exit, and each child also gets
SIGTERM from the kernel if this process dies (``PR_SET_PDEATHSIG``), so none is left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import io
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.liveserver import server_command
from tests.support.processes import ROOT, base_environment, free_port, stop_process

CHANNEL_ID = "bench-fanout"
SSE_CHANNEL_ID = "bench-sse"
ASGI_SERVERS = ("daphne", "uvicorn")
API_KEY = "bench-" + secrets.token_hex(16)  # the server API key of every service the benchmark starts
START_TIMEOUT = 30.0

CHILDREN: list[subprocess.Popen] = []


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when its parent dies (Linux; no-op elsewhere)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def spawn(args: list[str], *, log_path: Path, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.Popen:
    """Start a registered child process writing stdout and stderr to ``log_path``."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # the bench starts no threads, so preexec_fn is safe here
        )
    CHILDREN.append(process)
    return process


def stop_child(process: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL, and forget the child; safe on processes that already ended."""
    stop_process(process, timeout=timeout)
    if process in CHILDREN:
        CHILDREN.remove(process)


def stop_all() -> None:
    """Stop every child still running (registered with atexit)."""
    for process in list(CHILDREN):
        stop_child(process, timeout=5)


atexit.register(stop_all)


def asgi_server_args(server_cmd: str, app: str) -> list[str]:
    """The command running the ASGI ``app`` on ``{port}``: daphne, or uvicorn with the sans-I/O websockets."""
    if server_cmd == "uvicorn":
        args = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", "{port}", "--backlog", "2048"]
        return [*args, "--ws", "websockets-sansio", "--no-access-log", "--lifespan", "off", app]
    if server_cmd != "daphne":
        raise ValueError(f"unknown ASGI server {server_cmd!r}: choose from {', '.join(ASGI_SERVERS)}")
    # The listen backlog scripts/entrypoint.sh gives daphne (Twisted's default of 50 refuses storms).
    return [sys.executable, "-m", "daphne", "-e", "tcp:port={port}:interface=127.0.0.1:backlog=2048", app]


# Log lines worth showing in a report: errors, tracebacks, warnings and slow-consumer cut-offs.
PROBLEM_LINE = re.compile(r"ERROR|CRITICAL|Traceback|WARNING|Exception|slow", re.IGNORECASE)


def problem_lines(log_text: str, limit: int = 8) -> dict:
    """Count the problem lines of a log and keep a few distinct examples."""
    hits = [line for line in log_text.splitlines() if PROBLEM_LINE.search(line)]
    examples: list[str] = []
    seen: set[str] = set()
    for line in hits:
        # Lines differing only in numbers, ids or times count as one example.
        shape = re.sub(r"[0-9a-f]{6,}|\d+", "#", line)
        if shape not in seen:
            seen.add(shape)
            examples.append(line[:300])
        if len(examples) >= limit:
            break
    return {"count": len(hits), "examples": examples}


class _Server:
    name = "server"

    def __init__(self, work_dir: Path):
        self.work_dir = work_dir
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.log_offset = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        stop_child(self.process)
        self.process = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def problems(self) -> dict:
        """Problem lines logged since the last start."""
        return problem_lines(self.log_text()[self.log_offset :])

    def _new_log(self) -> Path:
        self.log_path = self.work_dir / f"{self.name}.log"
        self.log_offset = len(self.log_text())
        return self.log_path

    def _launch(self, args: list[str], *, env: dict[str, str] | None = None, cwd: Path = ROOT, ready=None) -> None:
        """Start ``args`` on a free port (``{port}`` in them is replaced) and wait until ``ready()``.

        ``ready`` defaults to "the port accepts TCP connections".
        """
        self.port = free_port()
        args = [arg.replace("{port}", str(self.port)) for arg in args]
        self.process = spawn(args, log_path=self._new_log(), env=env, cwd=cwd)
        ready = ready or self._listening
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            if ready():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} was not ready within {START_TIMEOUT:.0f} s:\n{self.log_text()[-3000:]}")

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False


def room_channel_id(index: int) -> str:
    """The id of the ``index``-th channel of the many-channels scenario."""
    return f"bench-ch-{index:05d}"


class ServiceServer(_Server):
    """The Realtime service under daphne (or uvicorn), with channels sized for the benchmark.

    Besides the WS channel ``CHANNEL_ID`` and the SSE channel ``SSE_CHANNEL_ID`` its config
    declares ``rooms`` more WS channels (``room_channel_id(i)``) for the many-channels scenario.
    """

    name = "service"

    def __init__(
        self,
        work_dir: Path,
        *,
        max_connections: int,
        source: Path = ROOT,
        redis_url: str | None = None,
        layer: str = "pubsub",
        prefix: str | None = None,
        name: str | None = None,
        server_cmd: str = "daphne",
        rooms: int = 0,
        room_connections: int = 100,
        as_deployed: bool = False,
    ):
        super().__init__(work_dir)
        if name:
            self.name = name
        self.max_connections = max_connections
        self.redis_url = redis_url
        self.layer = layer
        self.prefix = prefix
        self.server_cmd = server_cmd
        self.rooms = rooms
        self.room_connections = room_connections
        # True: the exact command line of scripts/entrypoint.sh (uvicorn with the service's own
        # protocol classes and keep-alive pings), as tests/support/liveserver.py runs it.
        self.as_deployed = as_deployed
        self.source = source  # the project tree to run: the working tree, or a snapshot of a commit
        self.config_path = work_dir / f"{self.name}.config.yaml"
        self.database_path = work_dir / f"{self.name}.sqlite3"
        self.env: dict[str, str] = {}
        self._prepared = False

    def config_text(self) -> str:
        if self.redis_url:
            pubsub = f'  driver: "REDIS"\n  redis:\n    url: "{self.redis_url}"\n    layer: "{self.layer}"\n'
            if self.prefix:
                pubsub += f'    prefix: "{self.prefix}"\n'
        else:
            pubsub = '  driver: "MEMORY"\n'
        channels = [(CHANNEL_ID, "WS", self.max_connections), (SSE_CHANNEL_ID, "SSE", self.max_connections)]
        channels += [(room_channel_id(i), "WS", self.room_connections) for i in range(self.rooms)]
        declared = "".join(
            f'  {ident}:\n    id: "{ident}"\n    type: "{kind}"\n    max_of_channel_connections: {limit}\n'
            for ident, kind, limit in channels
        )
        return f"""\
server:
  allow_push_server_messages: true
  # The publisher must never be rate-limited, and a burst must not trip the slow-consumer bound.
  publish_rate: 1000000
  publish_burst: 1000000
  max_pending_messages: 1000000
  max_pending_bytes: 268435456
pubsub:
{pubsub}channels:
{declared}"""

    def prepare(self) -> None:
        """Write the config and sync its channels into a copy of a migrated SQLite database (once)."""
        if self._prepared:
            return
        self.config_path.write_text(self.config_text())
        self.env = base_environment(
            CONFIG_FOLDER_PATH=str(self.config_path),
            DATABASE_URL=f"sqlite:///{self.database_path}",
            LOG_LEVEL="INFO",
            # Set, so the service does not warn about a random per-process key at every start.
            DJANGO_SECRET_KEY=secrets.token_urlsafe(32),
            REALTIME_API_KEYS=API_KEY,
        )
        # Migrating takes seconds on a busy machine: do it once per source tree, then copy.
        migrated = self.work_dir / f"migrated-{hashlib.sha1(str(self.source).encode()).hexdigest()[:10]}.sqlite3"
        if not migrated.exists():
            self._manage(["migrate", "--noinput"], migrated.with_suffix(".tmp"))
            migrated.with_suffix(".tmp").rename(migrated)
        shutil.copy(migrated, self.database_path)
        self._manage(["sync_channels"], self.database_path)
        self._prepared = True

    manage_timeout = 120  # seconds a manage.py command (migrate, sync_channels) may take

    def _manage(self, command: list[str], database: Path) -> None:
        done = subprocess.run(
            [sys.executable, "manage.py", *command],
            cwd=self.source,
            env=dict(self.env, DATABASE_URL=f"sqlite:///{database}"),
            capture_output=True,
            text=True,
            timeout=self.manage_timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")

    def start(self) -> None:
        """Start the server and wait until the channel's preflight answers."""
        self.prepare()
        if self.as_deployed:
            args = server_command(self.server_cmd, port="{port}", env=self.env, extra_args=[])  # type: ignore[arg-type]
        else:
            args = asgi_server_args(self.server_cmd, "realtime_project.asgi:application")
        self._launch(args, env=self.env, cwd=self.source, ready=self._answers)

    def _answers(self) -> bool:
        try:
            return httpx.get(self._preflight_url(CHANNEL_ID), timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    def _preflight_url(self, channel_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/channels/{channel_id}?upgrade=0"

    def subscriber_url(self, client_id: str, channel: str = CHANNEL_ID) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/channels/{channel}?clientId={client_id}"

    def live_connections(self, channel: str = CHANNEL_ID) -> int | None:
        """The channel's connection count as the preflight reports it (None if it does not answer)."""
        try:
            body = httpx.get(self._preflight_url(channel), timeout=5.0).json()
        except (httpx.HTTPError, ValueError):
            return None
        # A full channel is refused with the description under "channel".
        return (body.get("channel") or body).get("connections")

    def publisher_url(self, channel: str = CHANNEL_ID) -> str:
        return self.subscriber_url(f"bench-publisher-{channel}", channel)

    def sse_url(self, client_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/channels/{SSE_CHANNEL_ID}?clientId={client_id}"

    def push_target(self, channel_id: str = CHANNEL_ID) -> tuple[str, dict[str, str], bool]:
        """(path, headers, wrap the payload in {"payload": ...}) for an HTTP publish."""
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        return f"/api/v1/channels/{channel_id}/messages", headers, True


class _Rooms:
    """URLs of a bare WebSocket broadcast server: a room per URL path, each frame to the room's other clients."""

    port: int | None

    def subscriber_url(self, client_id: str, channel: str = CHANNEL_ID) -> str:
        return f"ws://127.0.0.1:{self.port}/{channel}?clientId={client_id}"

    def publisher_url(self, channel: str = CHANNEL_ID) -> str:
        return self.subscriber_url(f"bench-publisher-{channel}", channel)


class _AsgiApp(_Server):
    """A bare ASGI app of bench/ (``app``) under the service's server (``server_cmd``)."""

    app = ""

    def __init__(self, work_dir: Path, *, server_cmd: str = "daphne"):
        super().__init__(work_dir)
        self.server_cmd = server_cmd

    def start(self) -> None:
        self._launch(asgi_server_args(self.server_cmd, self.app), env=base_environment())


class BaselineServer(_Rooms, _Server):
    """The bare ``websockets`` broadcast server (bench/baseline.py)."""

    name = "baseline"

    def __init__(self, work_dir: Path, *, server_cmd: str = "daphne"):
        super().__init__(work_dir)  # runs on its own server, whatever runs the service

    def start(self) -> None:
        args = [sys.executable, "-m", "bench.baseline", "--port", "{port}", "--max-seconds", "7200"]
        self._launch(args, env=base_environment())


class AsgiWsBaselineServer(_Rooms, _AsgiApp):
    """The bare ASGI WebSocket broadcast app (bench/asgi_ws_baseline.py) under the service's server."""

    name = "asgi"
    app = "bench.asgi_ws_baseline:app"


class SSEBaselineServer(_AsgiApp):
    """The bare ASGI SSE broadcast app (bench/sse_baseline.py) under the service's server."""

    name = "sse-baseline"
    app = "bench.sse_baseline:app"

    def sse_url(self, client_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/events?clientId={client_id}"

    def push_target(self, channel_id: str = "") -> tuple[str, dict[str, str], bool]:
        return "/publish", {"Content-Type": "text/plain"}, False


class RedisServer(_Server):
    """A throw-away ``redis-server`` on a free port (no persistence), stopped by its PID."""

    name = "redis"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        args = [binary, "--port", "{port}", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self._launch(args, cwd=self.work_dir)

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def snapshot(ref: str, destination: Path) -> str:
    """Extract the project as committed at ``ref`` into ``destination``; return the commit id.

    Other people may edit the working tree while the benchmark runs; a snapshot pins the code
    measured. Read-only for the repository (``git archive``).
    """
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=ROOT, capture_output=True, check=True)
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(destination, filter="data")
    return commit


def work_directory(keep: Path | None = None) -> Path:
    """A directory for configs, databases and logs: ``keep`` if given, else a fresh temp dir."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        return keep
    return Path(tempfile.mkdtemp(prefix="realtime-bench-"))


SERVERS = {"service": ServiceServer, "baseline": BaselineServer, "asgi": AsgiWsBaselineServer}
