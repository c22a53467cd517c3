"""Hooks (channels_app/hooks.py, core/hook_calls.py): the decorators and the matching of channels, then a real
daphne whose project registers tests/hooks_example.py and tests/chatlog/hooks.py, under both drivers: each hook
admitting, refusing, rewriting, timing out and failing, over WebSocket and SSE; order kept behind a slow hook;
a sync hook using the ORM; on_disconnect after the slot is free; every rejection and failure in /metrics.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import struct
import types

import httpx
import pytest
import websockets

from channels_app import hooks
from channels_app.channel import ChannelInfo
from tests.support.clients import closed_with, connected, connections, open_stream, opened, recv_json
from tests.support.configs import memory_config
from tests.support.documents import code_blocks
from tests.support.liveserver import served_by
from tests.support.processes import ROOT, base_environment, manage
from tests.support.waiting import wait_until
from tests.support.wire import frame, handshake

HOOK_TIMEOUT = 1.0


def channel(channel_id: str, name: str | None = None) -> ChannelInfo:
    """A channel to match hooks against."""
    return ChannelInfo(
        id=channel_id, name=name or channel_id, type="WS", max_connections=10, history_size=10, history_ttl=60
    )


# Decorators and matching (no server).


def test_the_decorators_mark_bare_or_with_channels_and_return_the_function():
    def bare(event): ...

    def limited(event): ...

    module = types.ModuleType("project_hooks")
    module.bare = hooks.on_connect(bare)
    module.limited = hooks.on_publish(channels=["chat-*", "lobby"])(limited)
    module.called = hooks.on_disconnect()(bare)
    assert module.bare is bare and module.limited is limited

    found = hooks.hooks_collect(module)
    assert [(hook.kind, hook.function, hook.channels) for hook in found] == [
        ("on_connect", bare, ()),
        ("on_disconnect", bare, ()),
        ("on_publish", limited, ("chat-*", "lobby")),
    ]
    runtime_hooks = hooks.Hooks(found)
    assert [hook.function for hook in runtime_hooks.on_publish] == [limited]
    assert hooks.Hooks().on_connect == hooks.Hooks().on_publish == hooks.Hooks().on_disconnect == ()


def test_a_hook_is_limited_to_the_channels_whose_id_or_name_matches():
    hook = hooks.Hook("on_publish", print, ("chat-*", "lobby"))
    assert hook.applies_to(channel("chat-1"))
    assert hook.applies_to(channel("3f2a", name="chat-room"))
    assert hook.applies_to(channel("lobby"))
    assert not hook.applies_to(channel("lobby-2"))
    assert not hook.applies_to(channel("CHAT-1"))  # case counts, on every platform
    assert hooks.Hook("on_publish", print).applies_to(channel("anything"))
    assert hooks.Hooks([hook]).matching("on_publish", channel("news")) == ()


def test_mistakes_in_a_hooks_declaration_say_what_to_fix():
    with pytest.raises(TypeError, match=r"channels=\['chat-\*'\]"):
        hooks.on_publish(channels="chat-*")
    with pytest.raises(ValueError, match="4000 to 4999"):
        hooks.Reject(code=403)
    with pytest.raises(ImportError, match="REALTIME_HOOKS names 'no_such.hooks_module'"):
        hooks.hooks_load("no_such.hooks_module")


def test_a_rejection_refuses_an_event_stream_with_the_matching_status():
    assert hooks.Reject(4403).status == 403
    assert hooks.Reject(4429, "slow down").status == 429
    assert hooks.Reject(4000).status == 403  # no HTTP status 0: forbidden


def test_info_is_a_small_json_object():
    assert hooks.info_check(None) is None
    assert hooks.info_check({"name": "Ada"}) == {"name": "Ada"}
    for bad in (["a list"], {"x": object()}, {"x": float("nan")}, {"x": "y" * hooks.MAX_INFO_BYTES}):
        with pytest.raises(ValueError, match="event.info"):
            hooks.info_check(bad)


def test_hooks_load_collects_from_several_modules_in_order():
    # (tests.chatlog.hooks needs its app installed: the live server's settings install it.)
    loaded = hooks.hooks_load("tests.hooks_example, channels_app.hooks, tests.hooks_example", timeout=1.5)
    assert loaded.timeout == 1.5
    assert [hook.function.__name__ for hook in loaded.on_publish] == ["check", "stall_the_first"]
    assert [hook.kind for hook in loaded.hooks] == ["on_connect", "on_publish", "on_publish", "on_disconnect"]


def test_the_docs_example_is_the_tested_chatlog_app():
    blocks = dict(code_blocks([ROOT / "docs" / "hooks.md"], "py"))
    shown = "\n".join(blocks.values())
    for module in ("hooks.py", "models.py"):
        assert (ROOT / "tests" / "chatlog" / module).read_text() in shown, f"docs/hooks.md does not show {module}"


# A real server with hooks.

CONFIG = memory_config(publish_rate=100000, publish_burst=100000) + (
    '\n  hooked: {id: "hooked-1", type: "WS"}'
    '\n  ordered: {id: "ordered-1", type: "WS"}'
    '\n  chat: {id: "chat-9", type: "WS"}'
    '\n  json-hooked: {id: "hooked-json", type: "WS", payload_format: "json"}'
    '\n  left: {id: "hooks-left", type: "WS"}'
    '\n  plain: {id: "plain-1", type: "WS"}'
    '\n  feed: {id: "feed-1", type: "SSE"}\n'
)


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request, start_module_server, tmp_path_factory):
    """daphne with the hooks of tests/hooks_example.py and tests/chatlog (its table migrated), per driver."""
    database = tmp_path_factory.mktemp("hooks-db") / "db.sqlite3"
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.hooks_settings",
        "REALTIME_HOOKS": "tests.hooks_example,tests.chatlog.hooks",
        "REALTIME_HOOK_TIMEOUT_SECONDS": str(HOOK_TIMEOUT),
    }
    manage("migrate", "--noinput", env=base_environment(DATABASE_URL=f"sqlite:///{database}", **env))
    yield from served_by(request.param, start_module_server, CONFIG, tmp_path_factory, env=env, database_path=database)


async def test_a_close_behind_slow_hooks_is_answered_and_later_messages_raise_no_error(server):
    """Eighteen frames whose hook times out (1 s each, one at a time), then a close frame, while the
    channel carries other messages: the close is answered after CLOSE_REPLY_HOLD_SECONDS though the
    frames are still being judged, the connection is released after them, and the messages it can
    no longer be sent raise nothing into the server's log."""
    timeouts = 'hook="on_publish",reason="timeout"'
    before = metric(metrics(server), "realtime_hook_failures_total", timeouts)
    closer = await asyncio.to_thread(handshake, server, "/api/v1/channels/hooked-1?clientId=last-words")
    try:
        async with websockets.connect(server.channel_url("hooked-1", clientId="ticker")) as ticker:
            closer.sendall(b"".join(frame(0x1, b"slow:") for _ in range(18)) + frame(0x8, struct.pack("!H", 1000)))
            for index in range(60):
                await ticker.send(f"tick {index}")
                await asyncio.sleep(0.05)
        await wait_until(lambda: connections(server, "hooked-1") == 0, within=30)
        # Every frame was still judged (each hook call timed out), one after the other.
        await wait_until(
            lambda: metric(metrics(server), "realtime_hook_failures_total", timeouts) == before + 18, within=30
        )
    finally:
        closer.close()
    log = server.log()
    assert "WebSocket close frame(s) after" in log
    assert "never retrieved" not in log and "Disconnected" not in log


def metrics(server) -> str:
    return httpx.get(f"{server.http}/metrics", timeout=5).text


def metric(text: str, name: str, labels: str) -> float:
    """A sample's value (0 when the series is absent)."""
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[-1])
    return 0.0


async def refused(server, channel_id: str, client_id: str) -> tuple[dict | None, int]:
    async with websockets.connect(server.channel_url(channel_id, clientId=client_id)) as ws:
        return await closed_with(ws)


async def test_on_connect_admits_refuses_times_out_and_fails_over_websocket(server):
    before = metrics(server)
    body, code = await refused(server, "plain-1", "refuse-ws")
    assert code == 4403
    assert body == {
        "control": "close",
        "code": 4403,
        "error": "hook_rejected",
        "message": "refuse-ws may not subscribe",
    }

    # A stalled hook delays its own connection only: another is admitted meanwhile.
    stalled = asyncio.create_task(refused(server, "plain-1", "slow-ws"))
    async with websockets.connect(server.channel_url("plain-1", clientId="eve")):
        assert not stalled.done()
    body, code = await stalled
    assert (code, body["error"], body["hook"], body["reason"]) == (4500, "hook_failed", "on_connect", "timeout")

    body, code = await refused(server, "plain-1", "broken-ws")
    assert (code, body["error"], body["reason"]) == (4500, "hook_failed", "error")
    assert "broke" not in body["message"]  # the exception stays in the server's log

    body, code = await refused(server, "plain-1", "badinfo-ws")
    assert (code, body["reason"]) == (4500, "error")

    # None of the refused ones holds a slot; an admitted one does.
    assert await connected(server, "plain-1") == 0
    async with websockets.connect(server.channel_url("plain-1", clientId="ada")):
        assert await connected(server, "plain-1") == 1

    after = metrics(server)
    for name, labels, added in [
        ("realtime_hook_rejections_total", 'hook="on_connect"', 1),
        ("realtime_hook_failures_total", 'hook="on_connect",reason="timeout"', 1),
        ("realtime_hook_failures_total", 'hook="on_connect",reason="error"', 2),
        ("realtime_refusals_total", 'reason="hook_failed"', 3),
    ]:
        assert metric(after, name, labels) - metric(before, name, labels) == added, (name, labels)


async def test_on_connect_admits_refuses_times_out_and_fails_an_event_stream(server):
    async with httpx.AsyncClient(timeout=5) as client:
        answer = await client.get(server.channel_url("feed-1", scheme="http", clientId="refuse-sse"))
        assert answer.status_code == 403
        assert answer.json() == {"error": "hook_rejected", "message": "refuse-sse may not subscribe"}
        for client_id, reason in (("slow-sse", "timeout"), ("broken-sse", "error")):
            answer = await client.get(server.channel_url("feed-1", scheme="http", clientId=client_id))
            assert answer.status_code == 500
            assert answer.json()["error"] == "hook_failed" and answer.json()["reason"] == reason
    async with open_stream(server.channel_url("feed-1", scheme="http", clientId="grace")) as (_, events):
        assert (await opened(events))["clientId"] == "grace"


async def test_on_publish_rewrites_refuses_times_out_and_fails_and_the_connection_stays(server):
    before = metrics(server)
    url = server.channel_url("hooked-1", clientId="bob", echo="1", payload="text")
    async with websockets.connect(url) as ws:
        await ws.send("upper:hello")
        assert (await recv_json(ws))["payload"] == "HELLO"
        await ws.send("refuse:")
        assert await recv_json(ws) == {
            "control": "error",
            "code": 4451,
            "error": "hook_rejected",
            "message": "not this one",
        }
        await ws.send("slow:")
        error = await recv_json(ws)
        assert (error["code"], error["error"], error["hook"], error["reason"]) == (
            4500,
            "hook_failed",
            "on_publish",
            "timeout",
        )
        for frame in ("broken:", "number:"):
            await ws.send(frame)
            error = await recv_json(ws)
            assert (error["code"], error["reason"]) == (4500, "error"), frame
        await ws.send("unchanged")
        assert (await recv_json(ws))["payload"] == "unchanged"
        await ws.send("whoami:")
        info = json.loads((await recv_json(ws))["payload"])
        assert (info["name"], info["transport"]) == ("BOB", "WS") and "websockets" in info["agent"]
        await ws.send("orm:")  # a sync hook reads the Channel model
        assert (await recv_json(ws))["payload"] == "hooked"
    after = metrics(server)
    for labels, added in [('hook="on_publish",reason="timeout"', 1), ('hook="on_publish",reason="error"', 2)]:
        assert (
            metric(after, "realtime_hook_failures_total", labels)
            - metric(before, "realtime_hook_failures_total", labels)
            == added
        )
    assert metric(after, "realtime_hook_rejections_total", 'hook="on_publish"') > metric(
        before, "realtime_hook_rejections_total", 'hook="on_publish"'
    )


async def test_a_replacement_is_checked_like_a_client_frame(server):
    async with websockets.connect(server.channel_url("hooked-json", clientId="jo", echo="1")) as ws:
        await ws.send('"upper:fine"')  # the frame is JSON; the hook's answer is not
        error = await recv_json(ws)
        assert (error["code"], error["error"], error["reason"]) == (4500, "hook_failed", "error")
        await ws.send('"whoami:"')  # a JSON object's text: published as a JSON value
        message = await recv_json(ws)
        assert message["payload"]["name"] == "JO"  # received as the JSON value


async def test_frames_that_pass_a_slow_hook_keep_their_order(server):
    url = server.channel_url("ordered-1", clientId="sender", echo="1")
    async with websockets.connect(url) as ws:
        for number in range(20):
            await ws.send(str(number))
        received = [(await recv_json(ws))["payload"] for _ in range(20)]
    assert received == [str(number) for number in range(20)]


async def test_the_chatlog_example_keeps_chat_messages_and_refuses_empty_ones(server):
    async with websockets.connect(server.channel_url("chat-9", clientId="writer", echo="1")) as ws:
        await ws.send("  hello there  ")
        assert (await recv_json(ws))["payload"] == "hello there"
        await ws.send("   ")
        error = await recv_json(ws)
        assert (error["code"], error["error"]) == (4422, "hook_rejected")
    with sqlite3.connect(server.database_path) as database:
        rows = database.execute("SELECT channel_id, client_id, text FROM chatlog_chatmessage").fetchall()
    assert rows == [("chat-9", "writer", "hello there")]


async def test_on_disconnect_runs_after_the_slot_is_free_and_its_failure_is_counted(server):
    before = metric(metrics(server), "realtime_hook_failures_total", 'hook="on_disconnect",reason="error"')
    async with websockets.connect(server.channel_url("hooks-left", clientId="watcher")) as watcher:
        async with websockets.connect(server.channel_url("plain-1", clientId="leaver")):
            pass
        assert (await recv_json(watcher))["payload"] == "leaver left plain-1 (WS)"
        async with open_stream(server.channel_url("feed-1", scheme="http", clientId="reader")) as (_, events):
            await opened(events)
        assert (await recv_json(watcher))["payload"] == "reader left feed-1 (SSE)"
        # A failing on_disconnect hook delays nothing: the client reconnects at once with its clientId.
        for _ in range(2):
            async with websockets.connect(server.channel_url("plain-1", clientId="leave-broken")):
                pass

    await wait_until(
        lambda: (
            metric(metrics(server), "realtime_hook_failures_total", 'hook="on_disconnect",reason="error"') >= before + 2
        ),
        within=5,
        message="the failing on_disconnect hooks were not counted",
    )


async def test_hooks_judge_each_channel_and_frame_of_a_multiplexed_socket(server):
    async with websockets.connect(f"{server.ws}/api/v1/connect?clientId=refuse-mux") as refused:
        assert json.loads(await refused.recv())["control"] == "connected"
        await refused.send(json.dumps({"subscribe": "plain", "ref": 1}))
        answer = json.loads(await asyncio.wait_for(refused.recv(), 5))
        assert (answer["code"], answer["error"], answer["channel"], answer["ref"]) == (
            4403,
            "hook_rejected",
            "plain",
            1,
        )
    async with (
        websockets.connect(f"{server.ws}/api/v1/connect?clientId=mux-writer") as writer,
        websockets.connect(server.channel_url("hooked-1", clientId="mux-reader")) as reader,
    ):
        assert json.loads(await writer.recv())["control"] == "connected"
        await writer.send(json.dumps({"subscribe": "hooked"}))
        assert json.loads(await asyncio.wait_for(writer.recv(), 5))["control"] == "subscribed"
        await writer.send(json.dumps({"publish": "hooked", "payload": "upper:shout", "ref": "u"}))
        ack = json.loads(await asyncio.wait_for(writer.recv(), 5))
        assert (ack["control"], ack["ref"]) == ("published", "u")
        assert json.loads(await asyncio.wait_for(reader.recv(), 5))["payload"] == "SHOUT"
        await writer.send(json.dumps({"publish": "hooked", "payload": "refuse:", "ref": "r"}))
        refusal = json.loads(await asyncio.wait_for(writer.recv(), 5))
        assert (refusal["code"], refusal["error"], refusal["ref"], refusal["channel"]) == (
            4451,
            "hook_rejected",
            "r",
            "hooked-1",
        )
