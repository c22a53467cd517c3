"""The channel registry (channels_app/registry/cache.py).

In this process, on the test database: the bounded LRU evicts the least recently used channel, misses that
come together share one query, unknown names are remembered for a second, and invalidation drops exactly
the channel changed (by row, id and name). Across two daphnes on one database with Redis: a channel
cached, evicted or known missing on one instance is seen as it is now right after the other changes it.
Against a real daphne on PostgreSQL while the database is away: existing channels keep serving from the
cache, writes fail clearly (503 ``database_unavailable``), readiness says so, and all is back once the
database returns (moved from test_hardening_faults.py).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import httpx
import pytest
import websockets

from channels_app.channel import ChannelInfo
from channels_app.errors import ApplicationError
from channels_app.registry import cache
from channels_app.registry.cache import ChannelRegistry
from tests.conftest import psql as psql_on
from tests.support.auth import API_KEY
from tests.support.configs import memory_config, on_redis
from tests.support.liveserver import LiveServer, start_pair
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


# --- the bounded lazy cache, in this process -------------------------------------------------------------


async def _create(*names: str):
    from channels_app.models import Channel

    return [await Channel.objects.acreate(name=name, public_id=f"{name}-id", type="WS", source="api") for name in names]


@pytest.fixture
def fetches(monkeypatch):
    """The reference lists the registry asked the database for, one list per query (the real query runs)."""
    asked: list[list[str]] = []
    real = cache._fetch

    def counted(references):
        asked.append(list(references))
        return real(references)

    monkeypatch.setattr(cache, "_fetch", counted)
    return asked


async def _missing(registry: ChannelRegistry, reference: str) -> bool:
    try:
        await registry.resolve(reference)
    except ApplicationError as error:
        assert error.code == "channel_not_found"
        return True
    return False


@pytest.mark.django_db(transaction=True)
async def test_a_registry_larger_than_the_cache_keeps_the_most_recently_used_channels(fetches):
    rows = await _create("one", "two", "three")
    registry = ChannelRegistry(capacity=2)
    assert (await registry.resolve("one-id")) == ChannelInfo.from_model(rows[0])
    await registry.resolve("two")  # by name
    await registry.resolve("one-id")  # "one" is now the most recently used, "two" the least
    await registry.resolve("three-id")
    assert len(registry) == 2
    asked = len(fetches)
    await registry.resolve("one-id")
    await registry.resolve("three-id")
    assert len(fetches) == asked, "cached channels were asked for again"
    await registry.resolve("two")
    assert fetches[-1] == ["two"], "the evicted channel was served from memory"


@pytest.mark.django_db(transaction=True)
async def test_a_registry_within_the_cache_is_loaded_whole_and_asks_nothing_more(fetches):
    await _create("one", "two")
    registry = ChannelRegistry(capacity=10)
    for reference in ("one", "one-id", "two", "two-id"):
        await registry.resolve(reference)
    assert fetches == [] and len(registry) == 2


@pytest.mark.django_db(transaction=True)
async def test_misses_that_come_together_share_one_query(fetches):
    await _create(*(f"c{index}" for index in range(40)))
    registry = ChannelRegistry(capacity=5)
    await registry.resolve("c0")
    fetches.clear()
    references = [f"c{index}-id" for index in range(1, 40)] + ["c1-id", "nobody"]
    found = await asyncio.gather(*(registry.resolve(reference) for reference in references[:-1]))
    assert [channel.id for channel in found] == references[:-1]
    # The first miss leaves at once; the 38 others arrive while it runs and go together.
    assert len(fetches) <= 2 and sorted(sum(fetches, [])) == sorted(set(references[:-2]))
    assert await registry.find(["c3-id", "nobody", "c4-id"]) == {
        "c3-id": found[2],
        "c4-id": found[3],
    }


@pytest.mark.django_db(transaction=True)
async def test_an_unknown_name_is_asked_for_once_a_second(fetches, monkeypatch):
    await _create("one", "two")
    registry = ChannelRegistry(capacity=1)
    await registry.resolve("one")
    fetches.clear()
    for _ in range(50):
        assert await _missing(registry, "nobody")
    assert fetches == [["nobody"]]
    monkeypatch.setattr(cache, "NEGATIVE_SECONDS", 0.0)
    assert await _missing(registry, "other")
    assert await _missing(registry, "other")
    assert fetches[1:] == [["other"], ["other"]]
    # Longer than any id or name can be: refused without a query.
    assert await _missing(registry, "x" * 101) and len(fetches) == 3


@pytest.mark.django_db(transaction=True)
async def test_invalidation_drops_exactly_the_changed_channel_cached_evicted_or_known_missing(fetches):
    one, two, three = await _create("one", "two", "three")
    registry = ChannelRegistry(capacity=2)
    await registry.resolve("one")
    await registry.resolve("two-id")
    assert await _missing(registry, "four")
    # Renamed (as the signal reports it: the row, its id and its new name): the old name goes with the row.
    one.name = "uno"
    await one.asave()
    registry.invalidate(pk=one.pk, references=(one.public_id, one.name))
    assert await _missing(registry, "one")
    assert (await registry.resolve("uno")).name == "uno"
    # Known missing, then created: found at once, not a second later.
    (four,) = await _create("four")
    registry.invalidate(pk=four.pk, references=(four.public_id, four.name))
    assert (await registry.resolve("four")).id == "four-id"
    # Evicted, then deleted: asked for again, and gone.
    assert "three-id" not in registry._pk_by_reference
    await three.adelete()
    assert await _missing(registry, "three-id")
    # Only the changed channel is dropped: "four" is still served from memory.
    fetches.clear()
    registry.invalidate(pk=two.pk, references=(two.public_id, two.name))
    await registry.resolve("four")
    assert fetches == []
    # Everything, from a change the registry cannot pin down.
    registry.invalidate()
    assert (await registry.resolve("four")).id == "four-id"
    assert fetches == [["four"]] and len(registry) == 1


@pytest.mark.django_db(transaction=True)
async def test_an_invalidation_during_a_lookup_is_not_undone_by_its_answer(fetches, monkeypatch):
    (one,) = await _create("one")
    await _create("two", "three")
    registry = ChannelRegistry(capacity=1)
    await registry.resolve("two")
    real = cache._fetch

    def changed_meanwhile(references):
        found = real(references)
        registry.invalidate(pk=one.pk, references=("one-id", "one"))
        return found

    monkeypatch.setattr(cache, "_fetch", changed_meanwhile)
    assert (await registry.resolve("one")).name == "one"
    monkeypatch.setattr(cache, "_fetch", real)
    assert "one" not in registry._pk_by_reference, "an answer older than the change was kept"


@pytest.mark.django_db(transaction=True)
async def test_a_change_made_by_another_process_is_noticed_by_the_fingerprint(monkeypatch):
    from django.utils import timezone

    from channels_app.models import Channel

    async def checked():
        # A hit starts the check off the hot path; wait for it.
        await registry.resolve("one")
        if registry._revalidation is not None:
            await registry._revalidation

    monkeypatch.setattr(cache, "REVALIDATE_SECONDS", 0.0)
    monkeypatch.setattr(cache, "REVALIDATE_COST_FACTOR", 0)
    one, two = await _create("one", "two")
    registry = ChannelRegistry(capacity=10)
    await checked()
    # Saved as another process would (its signal reaches only that process's registry).
    await Channel.objects.filter(pk=one.pk).aupdate(max_connections=7, updated_at=timezone.now())
    await checked()
    assert (await registry.resolve("one")).max_connections == 7
    await Channel.objects.filter(pk=two.pk).adelete()
    await checked()
    assert await _missing(registry, "two")


# --- two instances with Redis ------------------------------------------------------------------------------

TWO_INSTANCES = memory_config(allow_create_new_channels=True) + '\n  y: {id: "y", type: "WS"}\n'


async def _outcome(server: LiveServer, channel: str) -> str:
    """``accepted`` or the close code a subscriber to ``channel`` gets."""
    async with websockets.connect(server.channel_url(channel, clientId="probe"), open_timeout=10) as socket:
        try:
            frame = await asyncio.wait_for(socket.recv(), 0.3)
        except TimeoutError:
            return "accepted"
        except websockets.ConnectionClosed as closed:
            return str(closed.rcvd.code if closed.rcvd else None)
        body = json.loads(frame)
        return str(body["code"]) if body.get("control") == "close" else "accepted"


async def _changes_heard(server: LiveServer) -> int:
    """The registry changes ``server``'s hub has heard of through the layer (its /metrics counter)."""
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{server.http}/metrics")).text
    for line in text.splitlines():
        if line.startswith("realtime_registry_changes_heard_total "):
            return int(float(line.split()[1]))
    raise AssertionError("realtime_registry_changes_heard_total is missing from /metrics")


async def _until_heard(server: LiveServer, count: int) -> float:
    """Wait until ``server`` has heard of ``count`` registry changes; the seconds it took."""
    started = time.monotonic()
    while await _changes_heard(server) < count:
        assert time.monotonic() - started < 5, "the registry change never reached the other instance"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_two_instances_see_each_others_changes_at_once(start_server, redis_server):
    env = {"REALTIME_API_KEYS": API_KEY, "REALTIME_REGISTRY_CACHE_SIZE": "2"}
    first, second = start_pair(start_server, on_redis(TWO_INSTANCES, redis_server.url), env=env)
    auth = {"Authorization": f"Bearer {API_KEY}"}

    async def scenario() -> tuple[dict[str, str], list[float]]:
        seen: dict[str, str] = {}
        delays: list[float] = []

        async def change(request) -> None:
            # The broadcast is sent before the API answers but heard asynchronously: a connect that
            # raced it would test the scheduler, so each check waits for the second instance to hear it.
            heard = await _changes_heard(second)
            assert (await request).status_code in (200, 201, 204)
            delays.append(await _until_heard(second, heard + 1))

        async with httpx.AsyncClient(base_url=first.http, headers=auth, timeout=10) as api:
            # Known missing on the second instance, then created on the first.
            seen["unknown"] = await _outcome(second, "late")
            await change(api.post("/api/v1/channels", json={"id": "late", "type": "WS"}))
            seen["created"] = await _outcome(second, "late")
            for channel in ("a", "b", "c"):
                await change(api.post("/api/v1/channels", json={"id": channel, "type": "WS"}))
            # Cached on the second instance, then deleted on the first.
            seen["cached"] = await _outcome(second, "a")
            await change(api.delete("/api/v1/channels/a"))
            seen["deleted while cached"] = await _outcome(second, "a")
            # Evicted on the second instance (its cache holds two channels), then deleted on the first.
            seen["b"] = await _outcome(second, "b")
            await _outcome(second, "late")
            await _outcome(second, "c")
            await change(api.delete("/api/v1/channels/b"))
            seen["deleted while evicted"] = await _outcome(second, "b")
        return seen, delays

    started = time.monotonic()
    seen, delays = asyncio.run(scenario())
    # Well within the fingerprint check's interval and the unknown names' second: the broadcast did it.
    assert time.monotonic() - started < 2 * cache.REVALIDATE_SECONDS + 2, (seen, delays)
    assert max(delays) < cache.NEGATIVE_SECONDS, delays
    assert seen == {
        "unknown": "4404",
        "created": "accepted",
        "cached": "accepted",
        "deleted while cached": "4404",
        "b": "accepted",
        "deleted while evicted": "4404",
    }
