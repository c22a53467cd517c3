"""Real servers for the client's end-to-end tests, started with the service's own test helpers.

The repository root is on ``sys.path`` (the root pyproject.toml's ``pythonpath``), so
``tests.liveserver`` starts daphne or uvicorn exactly as the service's tests do.
"""

from __future__ import annotations

import pytest
from client_helpers import CONFIG, ENV

from tests.support.liveserver import SERVERS, started_servers
from tests.support.redisserver import RedisServer


@pytest.fixture
def start_server(tmp_path_factory):
    """Start servers (``start(config, env=..., server=..., database_path=..., sync=...)``); all stop afterwards."""
    yield from started_servers(tmp_path_factory, CONFIG, ENV)


@pytest.fixture(scope="module")
def start_module_server(tmp_path_factory):
    """Like ``start_server``, for servers that serve a whole module."""
    yield from started_servers(tmp_path_factory, CONFIG, ENV)


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
