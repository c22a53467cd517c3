"""Real servers for the client's end-to-end tests, started with the service's own test helpers.

The repository root is on ``sys.path`` (the root pyproject.toml's ``pythonpath``), so
``tests.liveserver`` starts daphne or uvicorn exactly as the service's tests do.
"""

from __future__ import annotations

import pytest
from client_helpers import CONFIG, ENV

from tests.support.liveserver import SERVERS, LiveServer
from tests.support.redisserver import RedisServer


def _servers(tmp_path_factory):
    servers: list[LiveServer] = []

    def start(config: str = CONFIG, *, env: dict[str, str] | None = None, **options) -> LiveServer:
        server = LiveServer.start(tmp_path_factory.mktemp("server"), config, env={**ENV, **(env or {})}, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def start_server(tmp_path_factory):
    """Start servers (``start(config, env=..., server=..., database_path=..., sync=...)``); all stop afterwards."""
    yield from _servers(tmp_path_factory)


@pytest.fixture(scope="module")
def start_module_server(tmp_path_factory):
    """Like ``start_server``, for servers that serve a whole module."""
    yield from _servers(tmp_path_factory)


@pytest.fixture(scope="module")
def memory_server(start_module_server):
    """One daphne on CONFIG for a whole module (its tests use distinct payloads)."""
    return start_module_server()


@pytest.fixture(params=SERVERS)
def asgi_server(request) -> str:
    """``"daphne"``, then ``"uvicorn"``."""
    return request.param


@pytest.fixture
def redis_server(tmp_path_factory):
    """A private redis-server, stopped by PID afterwards."""
    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()
