"""Hooks over HTTP (core/http_hooks.py, server.hooks): a real local backend (a ThreadingHTTPServer in a thread)
checks every request's signature with the helper docs/hooks.md shows, and answers allow, deny, a replacement,
garbage, 500 or too late; a real daphne asks it on connect (WebSocket and SSE, MEMORY and REDIS) and on publish,
and sends it occupied/added/removed/vacated batches, retried after a 500, the last ones while it drains. Also the
signature, the concurrency bound, the events queue's bounds and the start-up error of a URL without a secret.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import websockets

from channels_app.channel import ChannelInfo
from channels_app.config import HooksConfig
from channels_app.core.http_hooks import HookEvents, HttpHooks, signature, signed_headers
from channels_app.hooks import ConnectEvent, HookFailure
from channels_app.stats import Stats
from tests.support.clients import closed_with, open_stream, opened, recv_json
from tests.support.configs import memory_config
from tests.support.documents import code_blocks
from tests.support.liveserver import served_by
from tests.support.processes import ROOT, base_environment, manage
from tests.support.waiting import wait_until

SECRET = "test-hooks-secret-0123456789"
HOOK_TIMEOUT = 1.0
SLOW_SECONDS = 3.0


def documented_verifier():
    """``verify_signature`` exactly as docs/hooks.md shows it to backends."""
    for _, code in code_blocks([ROOT / "docs" / "hooks.md"], "py"):
        if "def verify_signature" in code:
            namespace: dict = {}
            exec(code, namespace)  # noqa: S102 - the documented snippet, run as written
            return namespace["verify_signature"]
    raise AssertionError("docs/hooks.md shows no verify_signature")


verify_signature = documented_verifier()


class Backend(ThreadingHTTPServer):
    """The backend a test's service asks: records every request and answers by what the request holds."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[tuple[str, dict]] = []
        self.bad_signatures = 0
        self.events_failures_left = 0
        self.events_answered_500 = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def bodies(self, path: str) -> list[dict]:
        with self.lock:
            return [body for where, body in self.requests if where == path]

    def events(self, channel_id: str) -> list[tuple[str, str | None]]:
        """(name, clientId) of the events received for one channel, in order."""
        return [
            (event["name"], event.get("clientId"))
            for batch in self.bodies("/events")
            for event in batch["events"]
            if event["channel"]["id"] == channel_id
        ]


class Handler(BaseHTTPRequestHandler):
    server: Backend

    def log_message(self, *args):  # quiet
        pass

    def answer(self, status: int, body: object) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802 - http.server's name
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        if not verify_signature(SECRET, self.headers, raw):
            with self.server.lock:
                self.server.bad_signatures += 1
            return self.answer(401, {"error": "bad signature"})
        body = json.loads(raw)
        if self.path == "/events":
            with self.server.lock:
                failing = self.server.events_failures_left > 0
                if failing:  # not received: the service must send the batch again
                    self.server.events_failures_left -= 1
                    self.server.events_answered_500 += 1
                else:
                    self.server.requests.append((self.path, body))
            return self.answer(500, {"error": "down"}) if failing else self.answer(204, b"")
        with self.server.lock:
            self.server.requests.append((self.path, body))
        key = body["clientId"] if self.path == "/connect" else body["payload"]
        verb, _, rest = key.partition("-") if self.path == "/connect" else key.partition(":")
        if verb == "deny":
            return self.answer(200, {"allow": False, "code": 4451, "reason": f"no {rest}"})
        if verb == "slow":
            time.sleep(SLOW_SECONDS)
        if verb == "fail":
            return self.answer(500, {"allow": True})
        if verb == "garbage":
            return self.answer(200, b"<html>not json</html>")
        if verb == "huge":  # valid, but past what the service reads (6 x max_message_size + 64 KiB)
            return self.answer(200, {"allow": True, "padding": "x" * 1_000_000})
        if verb == "badcode":
            return self.answer(200, {"allow": False, "code": 403})
        if verb == "info":
            return self.answer(200, {"allow": True, "info": {"name": rest}})
        if verb == "upper":
            return self.answer(200, {"allow": True, "payload": rest.upper()})
        return self.answer(200, {"allow": True})


@pytest.fixture(scope="module")
def backend():
    server = Backend()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def hooks_config(backend: Backend, **server: object) -> str:
    return memory_config(
        **server,
        hooks={
            "connect_url": f"{backend.url}/connect",
            "publish_url": f"{backend.url}/publish",
            "events_url": f"{backend.url}/events",
            "timeout": HOOK_TIMEOUT,
        },
    ) + (
        '\n  room: {id: "room-1", type: "WS"}'
        '\n  talk: {id: "talk-1", type: "WS"}'
        '\n  watched: {id: "watched-1", type: "WS"}'
        '\n  retried: {id: "retried-1", type: "WS"}'
        '\n  drained: {id: "drained-1", type: "WS"}'
        '\n  replaced: {id: "replaced-1", type: "WS"}'
        '\n  feed: {id: "feed-1", type: "SSE"}\n'
    )


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request, backend, start_module_server, tmp_path_factory):
    env = {"REALTIME_HOOKS_SECRET": SECRET}
    config = hooks_config(backend)
    with backend.lock:
        backend.requests.clear()  # what the previous driver's server sent
    yield from served_by(request.param, start_module_server, config, tmp_path_factory, env=env)


def metric(server, name: str, labels: str) -> float:
    """A sample's value now (0 when the series is absent)."""
    for line in httpx.get(f"{server.http}/metrics", timeout=5).text.splitlines():
        if line.startswith(f"{name}{{{labels}}} " if labels else f"{name} "):
            return float(line.split()[-1])
    return 0.0


def channel(channel_id: str = "room-1") -> ChannelInfo:
    return ChannelInfo(id=channel_id, name=channel_id, type="WS", max_connections=10, history_size=0, history_ttl=60)


# Without a server.


def test_requests_are_signed_over_the_timestamp_and_the_body_and_the_documented_helper_checks_that():
    body = b'{"event":"connect"}'
    headers = signed_headers(SECRET, body, now=1_700_000_000)
    assert headers["X-Realtime-Timestamp"] == "1700000000"
    assert headers["X-Realtime-Signature"] == signature(SECRET, "1700000000", body)
    assert headers["X-Realtime-Signature"].startswith("sha256=") and len(headers["X-Realtime-Signature"]) == 71

    fresh = signed_headers(SECRET, body)
    assert verify_signature(SECRET, fresh, body)
    assert not verify_signature(SECRET, fresh, body + b" ")  # tampered body
    assert not verify_signature("another secret", fresh, body)
    assert not verify_signature(SECRET, {**fresh, "X-Realtime-Timestamp": str(int(time.time()) + 1)}, body)
    assert not verify_signature(SECRET, headers, body)  # signed long ago: a replay


async def test_past_max_concurrency_a_request_is_refused_at_once_as_busy(backend):
    config = HooksConfig(
        connect_url=f"{backend.url}/connect", publish_url="", events_url="", timeout=5.0, max_concurrency=1
    )
    http_hooks = HttpHooks(config, SECRET, stats=Stats())
    try:
        stalled = asyncio.create_task(http_hooks.connect(ConnectEvent(channel(), "slow-one", "WS", None)))
        await wait_until(lambda: http_hooks.in_flight == 1, within=5)
        started = time.monotonic()
        with pytest.raises(HookFailure) as failure:
            await http_hooks.connect(ConnectEvent(channel(), "ada", "WS", None))
        assert failure.value.reason == "busy" and time.monotonic() - started < 0.5
        await stalled
        event = ConnectEvent(channel(), "info-Ada", "WS", None)
        await http_hooks.connect(event)
        assert event.info == {"name": "Ada"} and http_hooks.in_flight == 0
    finally:
        await http_hooks.aclose()
    with pytest.raises(ValueError, match="REALTIME_HOOKS_SECRET"):
        HttpHooks(config, "", stats=Stats())


async def test_events_past_the_queue_bound_or_every_attempt_are_dropped_and_counted(backend):
    config = HooksConfig(
        connect_url="", publish_url="", events_url=f"{backend.url}/events", timeout=1.0, max_concurrency=4
    )
    stats = Stats()
    http_hooks = HttpHooks(config, SECRET, stats=stats)
    events = HookEvents(http_hooks, batch_seconds=0.05, capacity=2, attempts=2, backoff=0.01)
    with backend.lock:
        backend.events_failures_left, backend.events_answered_500 = 2, 0
    try:
        for client_id in ("a", "b", "c"):  # the third finds the queue full: never waits, dropped
            events.add("member_added", channel("bounded-1"), client_id)
        assert len(events.queue) == 2 and stats.counters()["hook_events_dropped_overflow"] == 1
        await wait_until(lambda: stats.counters().get("hook_events_dropped_undelivered") == 2, within=5)
        assert backend.events_answered_500 == 2 and stats.counters()["hook_failures_events_url:error"] == 2
        events.add("member_removed", channel("bounded-1"), "a")  # the sender kept running
        await events.stop(within=5)  # and sends what is queued before it stops
        assert backend.events("bounded-1") == [("member_removed", "a")]
        assert stats.counters()["hook_events_sent"] == 1
    finally:
        await http_hooks.aclose()


def test_a_hook_url_without_the_secret_stops_the_start_naming_the_variable(backend, tmp_path):
    config = tmp_path / "realtime.yaml"
    config.write_text(hooks_config(backend))
    env = base_environment(CONFIG_FOLDER_PATH=str(config))
    env.pop("REALTIME_HOOKS_SECRET", None)
    run = manage("check", env=env, check=False)
    assert run.returncode == 2
    assert "server.hooks.connect_url, server.hooks.publish_url, server.hooks.events_url" in run.stderr
    assert "REALTIME_HOOKS_SECRET is not" in run.stderr
    assert manage("check", env={**env, "REALTIME_HOOKS_SECRET": SECRET}, check=False).returncode == 0


# A real daphne asking the backend.


async def refused(server, channel_id: str, client_id: str) -> tuple[dict | None, int]:
    async with websockets.connect(server.channel_url(channel_id, clientId=client_id)) as ws:
        return await closed_with(ws)


async def test_connect_url_admits_refuses_times_out_and_fails_over_websocket(server, backend):
    failures = "realtime_hook_failures_total", 'hook="connect_url",reason="{}"'
    before = {reason: metric(server, failures[0], failures[1].format(reason)) for reason in ("error", "timeout")}
    rejections = metric(server, "realtime_hook_rejections_total", 'hook="connect_url"')

    async with websockets.connect(
        server.channel_url("room-1", clientId="ada", echo="1"), additional_headers={"Cookie": "session=s1"}
    ) as ws:
        await ws.send("hi")  # admitted (and the publish hook lets the frame through)
        assert (await recv_json(ws))["payload"] == "hi"
    asked = [body for body in backend.bodies("/connect") if body["clientId"] == "ada"][-1]
    assert asked["event"] == "connect" and asked["channel"] == {"id": "room-1", "name": "room"}
    assert (asked["transport"], asked["tokenClaims"], asked["headers"]["cookie"]) == ("WS", None, "session=s1")

    body, code = await refused(server, "room-1", "deny-entry")
    assert code == 4451
    assert body == {"control": "close", "code": 4451, "error": "hook_rejected", "message": "no entry"}
    body, code = await refused(server, "room-1", "slow-ws")
    assert (code, body["error"], body["hook"], body["reason"]) == (4500, "hook_failed", "on_connect", "timeout")
    for client_id in ("fail-ws", "garbage-ws", "badcode-ws", "huge-ws"):
        body, code = await refused(server, "room-1", client_id)
        assert (code, body["error"], body["reason"]) == (4500, "hook_failed", "error"), client_id

    assert metric(server, "realtime_hook_rejections_total", 'hook="connect_url"') - rejections == 1
    assert metric(server, failures[0], failures[1].format("timeout")) - before["timeout"] == 1
    assert metric(server, failures[0], failures[1].format("error")) - before["error"] == 4
    assert backend.bad_signatures == 0


async def test_connect_url_admits_refuses_times_out_and_fails_an_event_stream(server, backend):
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.get(server.channel_url("feed-1", scheme="http", clientId="deny-stream"))
        assert answer.status_code == 451
        assert answer.json() == {"error": "hook_rejected", "message": "no stream"}
        for client_id, reason in (("slow-sse", "timeout"), ("fail-sse", "error")):
            answer = await client.get(server.channel_url("feed-1", scheme="http", clientId=client_id))
            assert answer.status_code == 500
            assert (answer.json()["error"], answer.json()["reason"]) == ("hook_failed", reason)
    async with open_stream(server.channel_url("feed-1", scheme="http", clientId="info-Grace")) as (_, events):
        assert (await opened(events))["clientId"] == "info-Grace"
    asked = [body for body in backend.bodies("/connect") if body["clientId"] == "info-Grace"][-1]
    assert (asked["transport"], asked["channel"]["id"]) == ("SSE", "feed-1")


async def test_publish_url_passes_rewrites_refuses_times_out_and_fails_and_the_connection_stays(server, backend):
    errors = metric(server, "realtime_hook_failures_total", 'hook="publish_url",reason="error"')
    url = server.channel_url("talk-1", clientId="bob", echo="1")
    async with websockets.connect(url) as ws:
        await ws.send("plain words")
        assert (await recv_json(ws))["payload"] == "plain words"
        await ws.send("upper:hello")
        assert (await recv_json(ws))["payload"] == "HELLO"
        await ws.send("deny:spam")
        assert await recv_json(ws) == {"control": "error", "code": 4451, "error": "hook_rejected", "message": "no spam"}
        await ws.send("slow:")
        error = await recv_json(ws, within=10)
        assert (error["code"], error["error"], error["hook"], error["reason"]) == (
            4500,
            "hook_failed",
            "on_publish",
            "timeout",
        )
        for frame in ("fail:", "garbage:"):
            await ws.send(frame)
            error = await recv_json(ws)
            assert (error["code"], error["reason"]) == (4500, "error"), frame
        await ws.send("still open")
        assert (await recv_json(ws))["payload"] == "still open"
    asked = [body for body in backend.bodies("/publish") if body["payload"] == "upper:hello"][-1]
    assert asked == {
        "event": "publish",
        "channel": {"id": "talk-1", "name": "talk"},
        "clientId": "bob",
        "transport": "WS",
        "tokenClaims": None,
        "info": None,
        "payloadFormat": "text",
        "payload": "upper:hello",
    }
    assert metric(server, "realtime_hook_failures_total", 'hook="publish_url",reason="error"') - errors == 2


async def test_events_url_receives_occupied_added_removed_vacated_in_batches(server, backend):
    sent = metric(server, "realtime_hook_events_sent_total", "")
    first = await websockets.connect(server.channel_url("watched-1", clientId="one"))
    second = await websockets.connect(server.channel_url("watched-1", clientId="two"))
    await wait_until(lambda: len(backend.events("watched-1")) >= 3, within=10)
    await first.close()
    await wait_until(lambda: len(backend.events("watched-1")) >= 4, within=10)
    await second.close()
    await wait_until(lambda: len(backend.events("watched-1")) >= 6, within=10)
    assert backend.events("watched-1") == [
        ("channel_occupied", None),
        ("member_added", "one"),
        ("member_added", "two"),
        ("member_removed", "one"),
        ("member_removed", "two"),
        ("channel_vacated", None),
    ]
    batch = next(
        batch["events"]
        for batch in backend.bodies("/events")
        if any(
            event["name"] == "channel_occupied" and event["channel"]["id"] == "watched-1" for event in batch["events"]
        )
    )
    occupied, added = batch[batch.index(next(e for e in batch if e["channel"]["id"] == "watched-1")) :][:2]
    assert set(occupied) == {"name", "channel", "time"} and abs(occupied["time"] / 1000 - time.time()) < 60
    assert added["name"] == "member_added", "sent one by one, not batched"
    assert metric(server, "realtime_hook_events_sent_total", "") - sent >= 6


async def test_events_url_delivery_is_retried_after_a_500(server, backend):
    failures = metric(server, "realtime_hook_failures_total", 'hook="events_url",reason="error"')
    with backend.lock:
        backend.events_failures_left, backend.events_answered_500 = 1, 0
    async with websockets.connect(server.channel_url("retried-1", clientId="late")):
        await wait_until(lambda: backend.events("retried-1"), within=10)
    await wait_until(lambda: len(backend.events("retried-1")) >= 4, within=10)
    assert backend.events_answered_500 == 1
    assert backend.events("retried-1") == [
        ("channel_occupied", None),
        ("member_added", "late"),
        ("member_removed", "late"),
        ("channel_vacated", None),
    ]
    assert metric(server, "realtime_hook_failures_total", 'hook="events_url",reason="error"') - failures == 1


async def test_a_draining_instance_sends_its_last_events_before_it_exits(backend, start_server):
    live = start_server(config_text=hooks_config(backend), env={"REALTIME_HOOKS_SECRET": SECRET})
    async with websockets.connect(live.channel_url("drained-1", clientId="last")) as ws:
        await wait_until(lambda: len(backend.events("drained-1")) == 2, within=10)
        await asyncio.to_thread(live.stop)  # SIGTERM: the drain closes the WebSocket, then flushes the events
        _, code = await closed_with(ws)
    assert code == 1001
    assert backend.events("drained-1") == [
        ("channel_occupied", None),
        ("member_added", "last"),
        ("member_removed", "last"),
        ("channel_vacated", None),
    ]


async def test_a_connection_replacing_its_client_id_continues_the_same_member(backend, start_server):
    """``duplicate_client_id: replace``: the new connection takes the old one's slot, so the backend hears of
    one member_added and one member_removed, not a second join and a leave of a member still there."""
    config = hooks_config(backend, duplicate_client_id="replace")
    live = start_server(config_text=config, env={"REALTIME_HOOKS_SECRET": SECRET})
    async with websockets.connect(live.channel_url("replaced-1", clientId="same")) as old:
        await wait_until(lambda: len(backend.events("replaced-1")) == 2, within=10)
        async with websockets.connect(live.channel_url("replaced-1", clientId="same")):
            _, code = await closed_with(old)
            assert code == 4001
        await wait_until(lambda: len(backend.events("replaced-1")) >= 4, within=10)
    assert backend.events("replaced-1") == [
        ("channel_occupied", None),
        ("member_added", "same"),
        ("member_removed", "same"),
        ("channel_vacated", None),
    ]
