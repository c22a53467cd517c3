"""Health, readiness, metrics and graceful shutdown against a real daphne process."""

from __future__ import annotations

import ast
import asyncio
import json
import signal
import time
from pathlib import Path

import httpx
import pytest
import websockets

from channels_app import counters
from tests.conftest import redis_config
from tests.support.auth import API_KEY, AUTH
from tests.support.clients import lines_after_opening

SOURCE = Path(__file__).resolve().parent.parent / "channels_app"


def metric(text: str, name: str, labels: str = "") -> float:
    """One sample's value from Prometheus text (0 when absent)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


def test_health_and_readiness(daphne_server):
    assert httpx.get(f"{daphne_server.http}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{daphne_server.http}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok"}


def test_metrics_move_when_messages_flow(start_server):
    server = start_server(env={"REALTIME_API_KEYS": API_KEY})

    async def scenario():
        async with (
            websockets.connect(server.channel_url("chat-1", clientId="a")) as first,
            websockets.connect(server.channel_url("chat-1", clientId="b")) as second,
            httpx.AsyncClient(base_url=server.http) as client,
        ):
            during = (await client.get("/metrics")).text
            await first.send("hello")
            await asyncio.wait_for(second.recv(), 5)
            await client.post("/api/v1/channels/chat-1/messages", json={"payload": "push"}, headers=AUTH)
            await asyncio.wait_for(first.recv(), 5)
            await asyncio.wait_for(second.recv(), 5)
        async with websockets.connect(server.channel_url("nope")) as refused:
            await asyncio.wait_for(refused.recv(), 5)
        async with httpx.AsyncClient(base_url=server.http) as client:
            return during, (await client.get("/metrics")).text

    during, after = asyncio.run(scenario())
    assert metric(during, "realtime_connections", 'channel="chat-1",channel_name="chat",transport="WS"') == 2
    assert metric(after, "realtime_messages_published_total") == 2
    assert metric(after, "realtime_publish_runs_total") == 2
    assert metric(after, "realtime_deliveries_total") == 3
    assert metric(after, "realtime_refusals_total", 'reason="channel_not_found"') == 1
    assert metric(after, "realtime_connections_opened_total", 'transport="ws"') == 2
    assert metric(after, "realtime_publish_to_deliver_seconds_count") == 2
    assert metric(after, "realtime_connections", 'channel="chat-1",channel_name="chat",transport="WS"') == 0


def declared_counters() -> set[str]:
    """Every counter name counters.py declares (a name ending in "_" is a labelled counter's prefix)."""
    return {value for name, value in vars(counters).items() if name.isupper()}


def exported_metric(counter: str) -> str:
    """The Prometheus metric a counter is exported as."""
    return f"realtime_{counter.rstrip('_')}_total"


def incremented_counters() -> list[tuple[str, str]]:
    """``(where, counter name or prefix)`` for every ``.incr(...)`` call in channels_app."""
    found = []
    for path in SOURCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "incr"):
                continue
            where, name = f"{path.relative_to(SOURCE.parent)}:{node.lineno}", node.args[0]
            if isinstance(name, ast.Constant):
                found.append((where, name.value))
            elif isinstance(name, ast.JoinedStr) and isinstance(name.values[0], ast.Constant):
                # f"refusals_{error.code}": the literal start is the labelled counter's prefix.
                found.append((where, name.values[0].value))
            elif isinstance(name, ast.Attribute) and isinstance(name.value, ast.Name) and name.value.id == "counters":
                found.append((where, getattr(counters, name.attr)))
            else:
                raise AssertionError(f"{where}: cannot tell which counter {ast.unparse(name)} names")
    return found


def test_every_counter_incremented_anywhere_is_declared():
    declared = declared_counters()
    prefixes = {name for name in declared if name.endswith("_")}
    found = incremented_counters()
    assert len(found) > 30
    for where, name in found:
        assert name in declared or name.startswith(tuple(prefixes)), f"{where}: counter {name!r} is not in counters.py"


def test_metrics_export_every_declared_counter_with_its_help(daphne_server):
    text = httpx.get(f"{daphne_server.http}/metrics").text
    helps = {line.split()[2]: line for line in text.splitlines() if line.startswith("# HELP ")}
    for counter in declared_counters():
        metric = exported_metric(counter)
        assert metric in helps, f"counter {counter!r} is not exported as {metric}"
        assert len(helps[metric].split(maxsplit=3)) == 4, f"{metric} has no HELP text"


def test_an_event_of_unknown_type_is_counted_and_exported(start_server, redis_server):
    from channels_redis.pubsub import RedisPubSubChannelLayer

    from channels_app.naming import channel_group

    server = start_server(redis_config(redis_server.url))

    async def scenario():
        layer = RedisPubSubChannelLayer(hosts=[{"address": redis_server.url}], prefix="rt")
        async with websockets.connect(server.channel_url("chat-1", clientId="a")):
            await layer.group_send(channel_group("chat-1"), {"type": "realtime.no_such_event"})
            async with httpx.AsyncClient(base_url=server.http) as client:
                deadline = time.monotonic() + 5
                text = (await client.get("/metrics")).text
                while not metric(text, "realtime_hub_unknown_events_total") and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                    text = (await client.get("/metrics")).text
        await layer.flush()
        return text

    assert metric(asyncio.run(scenario()), "realtime_hub_unknown_events_total") == 1
    assert "hub ignored a channel-layer event of unknown type 'realtime.no_such_event'" in server.log()


def test_metrics_can_require_a_token(start_server):
    server = start_server(env={"METRICS_TOKEN": "scrape-secret"})
    assert httpx.get(f"{server.http}/metrics").status_code == 401
    assert httpx.get(f"{server.http}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    scraped = httpx.get(f"{server.http}/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert scraped.status_code == 200
    assert "realtime_messages_published_total" in scraped.text


@pytest.mark.timeout(60)
def test_sigterm_drains_clients_and_exits_within_the_grace_period(start_server, asgi_server):
    grace = 3
    server = start_server(
        server=asgi_server, env={"REALTIME_API_KEYS": API_KEY, "REALTIME_SHUTDOWN_GRACE_SECONDS": str(grace)}
    )

    async def scenario():
        async with (
            websockets.connect(server.channel_url("chat-1", clientId="ws-client")) as ws,
            httpx.AsyncClient(timeout=10) as client,
            client.stream("GET", server.channel_url("feed-1", scheme="http", clientId="sse-client")) as stream,
        ):
            lines = await lines_after_opening(stream)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            control = json.loads(await asyncio.wait_for(ws.recv(), 5))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            remaining = [line async for line in lines]
            return signalled, control, closed.value.rcvd.code, remaining

    signalled, control, close_code, remaining = asyncio.run(scenario())
    returncode = server.process.wait(timeout=grace + 5)
    elapsed = time.monotonic() - signalled
    # Our drain ran first (under uvicorn: not its own 1012 "service restart"), then the server's shutdown.
    assert control == {
        "control": "close",
        "code": 1001,
        "error": "going_away",
        "message": "This instance is shutting down; reconnect (with ?since=) to resume elsewhere.",
    }
    assert close_code == 1001
    assert "event: stream-error" in remaining
    assert elapsed < grace + 1, f"exited {elapsed:.1f}s after SIGTERM"
    log = server.log()
    assert "SIGTERM: draining" in log and "drained in" in log
    if asgi_server == "uvicorn":
        # uvicorn re-raises the signal it handled once it has shut down.
        assert returncode == -signal.SIGTERM
        assert "Finished server process" in log


def test_json_logs_carry_request_ids_and_no_secrets(start_server):
    server = start_server(env={"LOG_FORMAT": "json", "REALTIME_API_KEYS": API_KEY})

    async def scenario():
        async with websockets.connect(
            server.channel_url("chat-1", clientId="logged"), additional_headers={"X-Request-ID": "req-abc.1"}
        ) as ws:
            await ws.send("hi")
        async with websockets.connect(server.channel_url("nope", token="secret-token-value")) as refused:
            await asyncio.wait_for(refused.recv(), 5)

    asyncio.run(scenario())
    httpx.post(f"{server.http}/api/v1/channels/chat-1/messages", json={"payload": "x"}, headers=AUTH)
    deadline = time.monotonic() + 5
    while "left channel" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    entries = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    joined = next(entry for entry in entries if "logged joined channel chat-1" in entry["message"])
    assert joined["request_id"] == "req-abc.1"
    assert {"time", "level", "logger", "message"} <= set(joined)
    refused = next(entry for entry in entries if "refused a WebSocket subscriber" in entry["message"])
    assert refused["request_id"] not in ("-", "req-abc.1")
    assert "secret-token-value" not in server.log()
    assert API_KEY not in server.log()
