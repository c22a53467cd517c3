"""Real server processes (daphne or uvicorn) for end-to-end tests.

``LiveServer.start(tmp_path, config_text, server="daphne")`` writes the YAML, prepares a SQLite
database (copied from a migrated template, so each server starts in about a second), runs
``sync_channels`` and starts the server on a free loopback port with the options
``scripts/entrypoint.sh`` gives it. ``stop()`` terminates it; tests never leave one behind.
"""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from channels_app.config import load_config
from tests.support.configs import on_redis
from tests.support.processes import ROOT, base_environment, free_port, manage, stop_process
from tests.support.redisserver import RedisServer

_TEMPLATE_DB: Path | None = None

SERVERS = ("daphne", "uvicorn")
# Listen backlogs scripts/entrypoint.sh asks for (daphne's own is 50).
DAPHNE_BACKLOG = 2048
UVICORN_BACKLOG = 2048
# What scripts/entrypoint.sh passes to uvicorn besides the address and the two options it derives
# from the configuration (tests/test_uvicorn.py checks the script says the same).
UVICORN_OPTIONS = (
    "--ws", "channels_app.adapters.uvicorn_ws:WebSocketProtocol", "--ws-per-message-deflate", "false",
    "--ws-ping-interval", "20", "--ws-ping-timeout", "30", "--lifespan", "off", "--backlog", str(UVICORN_BACKLOG),
    "--http", "channels_app.adapters.uvicorn_http:LimitedH11Protocol",
)  # fmt: skip
# daphne's keep-alive pings made short (``extra_args=SHORT_PINGS``), so that a silent peer is noticed within seconds.
PING_INTERVAL, PING_TIMEOUT = 1, 2
SHORT_PINGS = ("--ping-interval", str(PING_INTERVAL), "--ping-timeout", str(PING_TIMEOUT))


def _template_database(work_dir: Path) -> Path:
    global _TEMPLATE_DB
    if _TEMPLATE_DB is None or not _TEMPLATE_DB.exists():
        path = work_dir / "template.sqlite3"
        env = base_environment(DATABASE_URL=f"sqlite:///{path}")
        manage("migrate", "--noinput", env=env)
        _TEMPLATE_DB = path
    return _TEMPLATE_DB


def server_command(server: str, *, port: int, env: dict[str, str], extra_args: list[str]) -> list[str]:
    """The command line scripts/entrypoint.sh runs for ``server``, on 127.0.0.1:``port``."""
    application = "realtime_project.asgi:application"
    if server == "daphne":
        endpoint = f"tcp:port={port}:interface=127.0.0.1:backlog={DAPHNE_BACKLOG}"
        return [sys.executable, "-m", "daphne", "-e", endpoint, *extra_args, application]
    if server == "uvicorn":
        grace = max(math.ceil(float(env.get("REALTIME_SHUTDOWN_GRACE_SECONDS", "20"))), 1)
        max_size = max(1 << 20, 2 * load_config(env["CONFIG_FOLDER_PATH"]).server.max_message_size)
        return [
            sys.executable, "-m", "uvicorn", application, "--host", "127.0.0.1", "--port", str(port),
            *UVICORN_OPTIONS, "--ws-max-size", str(max_size), "--timeout-graceful-shutdown", str(grace),
            *extra_args,
        ]  # fmt: skip
    raise ValueError(f"server={server!r}: use one of {', '.join(SERVERS)}")


@dataclass
class LiveServer:
    """One server process (daphne or uvicorn) serving the project on a loopback port."""

    port: int
    config_path: Path
    database_path: Path
    env: dict[str, str]
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    server: str = "daphne"

    @property
    def http(self) -> str:
        """Base URL for HTTP requests."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        """Base URL for WebSocket connections."""
        return f"ws://127.0.0.1:{self.port}"

    def channel_url(self, channel: str, scheme: str = "ws", **query: str) -> str:
        """``/api/v1/channels/<channel>`` with a query string."""
        base = self.ws if scheme == "ws" else self.http
        url = f"{base}/api/v1/channels/{channel}"
        if query:
            url += "?" + "&".join(f"{key}={value}" for key, value in query.items())
        return url

    @classmethod
    def start(
        cls,
        work_dir: Path,
        config_text: str,
        *,
        env: dict[str, str] | None = None,
        sync: bool = True,
        database_path: Path | None = None,
        server: str = "daphne",
        extra_args: list[str] | None = None,
    ) -> LiveServer:
        """Write the config, prepare the database, sync channels and start ``server`` (with ``extra_args`` on its
        command line); wait until it answers."""
        work_dir.mkdir(parents=True, exist_ok=True)
        config_path = work_dir / "realtime.config.yaml"
        config_path.write_text(config_text)
        if database_path is None:
            database_path = work_dir / "db.sqlite3"
            shutil.copy(_template_database(work_dir.parent), database_path)
        server_env = base_environment(
            CONFIG_FOLDER_PATH=str(config_path), DATABASE_URL=f"sqlite:///{database_path}", **(env or {})
        )
        if sync:
            manage("sync_channels", env=server_env)
        live = cls(
            port=free_port(),
            config_path=config_path,
            database_path=database_path,
            env=server_env,
            server=server,
            extra_args=list(extra_args or ()),
        )
        live.run()
        return live

    def run(self) -> None:
        """Start (or restart) the server process and wait until it serves HTTP."""
        command = server_command(self.server, port=self.port, env=self.env, extra_args=self.extra_args)
        self.log_path = self.config_path.parent / f"{self.server}-{self.port}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child process owns it
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.server} exited with {self.process.returncode}:\n{self.log()}")
            try:
                httpx.get(f"{self.http}/api/v1/channels/__ping__?upgrade=0", timeout=0.5)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.server} did not start within 20 s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server and wait for it."""
        stop_process(self.process, sig)

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


def started_servers(tmp_path_factory, default_config: str, base_env: dict[str, str] | None = None):
    """The body of a ``start_server`` fixture: yields ``start(config_text=..., env=..., **options)``, which starts a
    LiveServer (on ``default_config`` unless given one; ``env`` added to ``base_env``), then stops all it started."""
    servers: list[LiveServer] = []

    def start(config_text: str = default_config, *, env: dict[str, str] | None = None, **options) -> LiveServer:
        server_env = {**(base_env or {}), **(env or {})}
        server = LiveServer.start(tmp_path_factory.mktemp("server"), config_text, env=server_env, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def start_pair(start, config_text: str, **options) -> tuple[LiveServer, LiveServer]:
    """Two instances of one deployment, started with ``start`` (a ``start_server`` fixture): the first prepares
    the database and syncs the channels, the second serves the same database as it is."""
    first = start(config_text, **options)
    return first, start(config_text, database_path=first.database_path, sync=False, **options)


def served_by(driver: str, start, config_text: str, tmp_path_factory, **options):
    """For a fixture parametrized ``"memory"`` / ``"redis"``: ``yield from served_by(request.param, start, ...)``
    yields a server of ``config_text`` under that driver, REDIS on a private redis-server (``server.redis``),
    both stopped when the fixture ends."""
    if driver == "memory":
        yield start(config_text, **options)
        return
    redis_server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    live = start(on_redis(config_text, redis_server.url), **options)
    live.redis = redis_server
    try:
        yield live
    finally:
        live.stop()
        redis_server.stop()
