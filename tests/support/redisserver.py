"""A private ``redis-server`` per test, on a free loopback port, stopped by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.support.processes import free_port


@dataclass
class RedisServer:
    """One redis-server process the test owns."""

    port: int
    work_dir: Path
    extra_args: tuple[str, ...] = ()
    pid: int | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls, work_dir: Path, *extra_args: str) -> RedisServer:
        """Start a server that keeps nothing on disk."""
        server = cls(port=free_port(), work_dir=work_dir, extra_args=extra_args)
        server.run()
        return server

    def run(self) -> None:
        """Start (or restart) redis-server on the same port and wait until it answers."""
        pidfile = self.work_dir / f"redis-{self.port}.pid"
        pidfile.unlink(missing_ok=True)
        subprocess.run(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "yes", "--pidfile", str(pidfile), "--dir", str(self.work_dir),
                "--logfile", str(self.work_dir / f"redis-{self.port}.log"), *self.extra_args,
            ],
            check=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        while time.monotonic() < deadline:
            try:
                if client.ping() and pidfile.exists():
                    self.pid = int(pidfile.read_text())
                    return
            except (redis.ConnectionError, ValueError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def client(self) -> redis.Redis:
        """A synchronous client for assertions."""
        return redis.Redis(port=self.port, socket_connect_timeout=1)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server by PID and wait until it is gone."""
        if self.pid is None:
            return
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            self.pid = None
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        self.pid = None
