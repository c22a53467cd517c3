"""Shared fixtures: real servers (daphne, or uvicorn on request), and a fresh in-process runtime for unit tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from tests.support.configs import memory_config, on_redis
from tests.support.liveserver import SERVERS, LiveServer, started_servers

POSTGRES_SERVER = "postgres://postgres@127.0.0.1:5432"

# Examples per property for every hypothesis test (``HYPOTHESIS_PROFILE=thorough`` runs ten times more);
# docs/reliability.md reports how many inputs a CI run tries.
hypothesis_settings.register_profile(
    "ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
hypothesis_settings.register_profile(
    "thorough", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Fixtures that start the service; a test using one of them, or a fixture built on one, is ``e2e``.
SERVER_FIXTURES = frozenset({"start_server", "start_module_server", "daphne_server", "any_server"})

TEST_CONFIG = (
    memory_config(allow_create_new_channels=True, allow_push_server_messages=True)
    + """
  chat:
    id: "chat-1"
    type: "WS"
    max_of_channel_connections: 5
  other-chat:
    id: "chat-2"
    type: "WS"
    max_of_channel_connections: 5
  feed:
    id: "feed-1"
    type: "SSE"
    max_of_channel_connections: 5
"""
)


def pytest_collection_modifyitems(items):
    """Mark each test with its tiers from what it uses: ``e2e`` when a fixture it depends on (directly or
    through others) starts the service, ``redis`` when it uses ``redis_server`` or a fixture parametrized
    ``"redis"``. Modules that start processes otherwise, drive a browser or soak mark themselves."""
    for item in items:
        fixtures = set(item.fixturenames)
        if fixtures & SERVER_FIXTURES:
            item.add_marker(pytest.mark.e2e)
        callspec = getattr(item, "callspec", None)
        if "redis_server" in fixtures or (callspec is not None and "redis" in callspec.params.values()):
            item.add_marker(pytest.mark.redis)


@pytest.fixture
def start_server(tmp_path_factory):
    """Start real servers: ``start_server(config_text=..., env=..., server="uvicorn")`` (daphne by default); all stop
    at teardown."""
    yield from started_servers(tmp_path_factory, TEST_CONFIG)


@pytest.fixture
def daphne_server(start_server) -> LiveServer:
    """One daphne serving TEST_CONFIG."""
    return start_server()


@pytest.fixture(scope="module", params=SERVERS)
def asgi_server(request) -> str:
    """``"daphne"``, then ``"uvicorn"``: a test (or a module's server fixture) using it runs under both.

    Module-scoped, so pytest runs a module's tests under one server, then under the other, and a
    module-scoped server fixture built on it starts once per server.
    """
    return request.param


@pytest.fixture
def any_server(start_server, asgi_server) -> LiveServer:
    """TEST_CONFIG served by daphne, then by uvicorn (the test runs once with each)."""
    return start_server(server=asgi_server)


@pytest.fixture(autouse=True)
def fresh_process():
    """What the composition root built for this process (its runtime binds to the test's event loop)
    is dropped after each test."""
    yield
    from channels_app.composition import forget_process_runtime

    forget_process_runtime()


@pytest.fixture(scope="module")
def start_module_server(tmp_path_factory):
    """Like ``start_server``, but the servers serve a whole test module (its tests use distinct channels)."""
    yield from started_servers(tmp_path_factory, TEST_CONFIG)


def memory_runtime(*, layer=None, history=None, presence=None, registry=None, **server):
    """A ``Runtime`` of the test's own: the given stores, registry and layer (memory ones by default),
    and the settings' configuration with the given ``server`` keys."""
    from channels.layers import InMemoryChannelLayer
    from django.conf import settings

    from channels_app.core.runtime import Runtime
    from channels_app.state.history import MemoryHistory
    from channels_app.state.presence import MemoryPresence

    return Runtime(
        config=replace(settings.REALTIME, server=replace(settings.REALTIME.server, **server)),
        layer=layer if layer is not None else InMemoryChannelLayer(),
        history=history or MemoryHistory(),
        presence=presence or MemoryPresence(),
        registry=registry,
    )


@dataclass
class InProcess:
    """The service built in this test's process: its runtime and its ASGI application."""

    runtime: object
    application: object


@pytest.fixture
async def inprocess():
    """``await inprocess(history=..., presence=..., **server)``: the service built in this process around
    a ``Runtime`` of the test's own: the given stores (memory ones by default), the settings' channel
    layer, and the settings' configuration with the given ``server`` keys. Its hub is stopped and the
    layer flushed afterwards: the layer outlives the test's event loop, so a hub left running (or its
    channel left in a group) would break the next test's ``group_send``.
    """
    from channels.layers import get_channel_layer
    from django.core.handlers.asgi import ASGIHandler

    from channels_app.composition import build_application

    built = []

    async def build(*, history=None, presence=None, **server) -> InProcess:
        runtime = memory_runtime(layer=get_channel_layer(), history=history, presence=presence, **server)
        built.append(runtime)
        # ASGIHandler, not get_asgi_application(): that sets Django up again, which re-configures logging
        # and drops the handlers pytest's caplog installed.
        return InProcess(runtime, build_application(ASGIHandler(), runtime))

    yield build
    for runtime in built:
        await runtime.hub.stop()
        await runtime.layer.flush()


@pytest.fixture
def redis_server(tmp_path_factory):
    """A private redis-server on a free port; killed by PID at teardown."""
    from tests.support.redisserver import RedisServer

    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


def redis_config(url: str, *, prefix: str = "rt") -> str:
    """TEST_CONFIG with the REDIS driver pointed at ``url``."""
    return on_redis(TEST_CONFIG, url, prefix=prefix)


def psql(*args: str) -> subprocess.CompletedProcess:
    """Run psql as the postgres user against the local server (``-d`` picks the database)."""
    return subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-tA", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def postgres_database():
    """A fresh, empty PostgreSQL database, dropped at teardown; skips if PostgreSQL is not reachable."""
    if shutil.which("psql") is None:
        pytest.skip("psql is not installed, so PostgreSQL at 127.0.0.1:5432 cannot be reached")
    probe = psql("-d", "postgres", "-c", "SELECT 1")
    if probe.returncode != 0:
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_SERVER}: {probe.stderr.strip()}")
    name = f"realtime_test_{uuid.uuid4().hex[:12]}"
    created = psql("-d", "postgres", "-c", f"CREATE DATABASE {name}")
    assert created.returncode == 0, created.stderr
    yield name
    psql("-d", "postgres", "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def chromium():
    """The system Chromium, for one module.

    pytest-playwright's session-wide fixtures would keep Playwright's event loop running in the
    main thread after the browser tests, and later asyncio tests would fail; this one stops with
    the module.
    """
    from playwright.sync_api import sync_playwright

    from tests.support.browser import launch_chromium

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


@pytest.fixture
def pages(chromium):
    """``pages.open(url)``: each page in a fresh context; ``pages.problems`` lists CSP violations, uncaught
    errors and dialogs."""
    from tests.support.browser import Pages

    opened = Pages(chromium)
    yield opened
    opened.close()
