"""The channel registry (channels_app/registry/cache.py) while the database is away, against a real daphne on
PostgreSQL: existing channels keep serving from the cache, writes fail clearly (503 ``database_unavailable``),
readiness says so, and all is back once the database returns. Moved from test_hardening_faults.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import time

import httpx
import pytest

from tests.conftest import psql as psql_on
from tests.support.auth import API_KEY
from tests.support.liveserver import LiveServer
from tests.support.processes import base_environment, free_port, manage


def psql(*args: str) -> subprocess.CompletedProcess:
    """psql on the maintenance database, where databases are renamed and dropped."""
    return psql_on("-d", "postgres", *args)


@pytest.fixture
def postgres_server(tmp_path, postgres_database):
    """A daphne on a fresh PostgreSQL database (skipped when PostgreSQL is not reachable)."""
    name = postgres_database
    config_path = tmp_path / "realtime.config.yaml"
    config_path.write_text(
        'server:\n  allow_create_new_channels: true\npubsub:\n  driver: "MEMORY"\n'
        'channels:\n  chat: {id: "chat-1", type: "WS"}\n  feed: {id: "feed-1", type: "SSE"}\n'
    )
    env = base_environment(
        CONFIG_FOLDER_PATH=str(config_path),
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{name}",
        REALTIME_API_KEYS=API_KEY,
    )
    manage("migrate", "--noinput", env=env)
    manage("sync_channels", env=env)
    server = LiveServer(port=free_port(), config_path=config_path, database_path=tmp_path / "unused", env=env)
    server.run()
    yield server, name
    server.stop()
    psql("-c", f"ALTER DATABASE {name}_away RENAME TO {name}")  # if the test left it away; then dropped


@pytest.mark.e2e  # postgres_server starts daphne itself
@pytest.mark.timeout(90)
def test_database_unavailable_keeps_existing_channels_serving_and_fails_writes_clearly(postgres_server):
    server, name = postgres_server
    auth = {"Authorization": f"Bearer {API_KEY}"}

    async def scenario():
        async with httpx.AsyncClient(base_url=server.http, headers=auth, timeout=10) as client:
            assert (
                await client.post("/api/v1/channels/chat-1/messages", json={"payload": "before"})
            ).status_code == 201
            # The database disappears: every connection is cut and it cannot be reached by its name.
            terminated = psql(
                "-c", f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
                "-c", f"ALTER DATABASE {name} RENAME TO {name}_away",
            )  # fmt: skip
            assert terminated.returncode == 0, terminated.stderr
            await asyncio.sleep(2.5)  # past the registry's revalidation interval
            outcomes = {
                "ready": await client.get("/readyz"),
                "push existing": await client.post("/api/v1/channels/chat-1/messages", json={"payload": "during"}),
                "push by name": await client.post("/api/v1/channels/chat/messages", json={"payload": "by name"}),
                "preflight": await client.get("/api/v1/channels/feed-1?upgrade=0"),
                "history": await client.get("/api/v1/channels/chat-1/messages"),
                "create": await client.post("/api/v1/channels", json={"id": "during-outage", "type": "WS"}),
                "delete": await client.delete("/api/v1/channels/chat-1"),
                "unknown": await client.post("/api/v1/channels/nope/messages", json={"payload": "x"}),
            }
            outcomes["push existing after unknown"] = await client.post(
                "/api/v1/channels/chat-1/messages", json={"payload": "after unknown"}
            )
            # The database comes back: writes work again.
            assert psql("-c", f"ALTER DATABASE {name}_away RENAME TO {name}").returncode == 0
            deadline = time.monotonic() + 15
            while (
                created := await client.post("/api/v1/channels", json={"id": "after-outage", "type": "WS"})
            ).status_code != 201:
                assert time.monotonic() < deadline, created.text
                await asyncio.sleep(0.5)
            outcomes["ready again"] = await client.get("/readyz")
            return outcomes

    outcomes = asyncio.run(scenario())
    shown = {key: (response.status_code, response.text[:160]) for key, response in outcomes.items()}
    print(f"database outage: {shown}")
    assert outcomes["ready"].status_code == 503 and outcomes["ready"].json()["checks"]["database"].startswith("failing")
    # Existing channels keep serving from the cached registry.
    for key in ("push existing", "push by name", "preflight", "history"):
        assert outcomes[key].status_code in (200, 201), shown[key]
    # Writes fail clearly: a 503 JSON error naming the cause, not a stack trace.
    for key in ("create", "delete"):
        assert outcomes[key].status_code == 503, shown[key]
        assert outcomes[key].json()["error"] == "database_unavailable", shown[key]
        assert "Traceback" not in outcomes[key].text
    assert outcomes["ready again"].status_code == 200
    assert "Traceback" not in server.log().split("database_unavailable")[0][-200:]


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_an_unknown_channel_during_a_database_outage_does_not_take_the_others_down(postgres_server):
    server, name = postgres_server
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.http, headers=auth, timeout=10) as client:
        assert client.post("/api/v1/channels/chat-1/messages", json={"payload": "before"}).status_code == 201
        psql(
            "-c", f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
            "-c", f"ALTER DATABASE {name} RENAME TO {name}_away",
        )  # fmt: skip
        time.sleep(1.2)
        assert client.post("/api/v1/channels/nope/messages", json={"payload": "x"}).status_code in (404, 503)
        after = client.post("/api/v1/channels/chat-1/messages", json={"payload": "after"})
    assert after.status_code == 201, after.text
