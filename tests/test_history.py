"""Positions, then resume with ``?since=`` / ``Last-Event-ID`` on a real server, across a restart and a re-created
channel, for clients far behind and clients that never read. The stores themselves: tests/test_history_contract.py."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from urllib.parse import urlencode

import httpx
import pytest
import websockets
from hypothesis import given
from hypothesis import strategies as st

from channels_app.errors import ApplicationError
from channels_app.messages import Position, position_parse
from tests.support.auth import API_KEY, AUTH
from tests.support.clients import connections, recv_json
from tests.support.configs import memory_config
from tests.support.liveserver import SHORT_PINGS
from tests.support.processes import resident_kib
from tests.support.strategies import any_text, query_text
from tests.support.waiting import wait_until
from tests.support.wire import handshake


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("abc123-42", Position(epoch="abc123", offset=42)),
        ("42", Position(offset=42)),
        (" 7 ", Position(offset=7)),
        ("0F0E0D0C-0B0A-4908-8706-050403020100", Position(message_id="0f0e0d0c-0b0a-4908-8706-050403020100")),
        ("", None),
        (None, None),
    ],
)
def test_position_parse_accepts_positions_offsets_and_message_ids(raw, expected):
    assert position_parse(raw) == expected


@pytest.mark.parametrize("raw", ["yesterday", "e1-", "-5", "e1-5-6", "e!-1", "1" * 19])
def test_position_parse_refuses_anything_else_with_400(raw):
    with pytest.raises(ApplicationError) as refused:
        position_parse(raw)
    assert refused.value.status == 400
    assert refused.value.close_code == 4400
    assert refused.value.extra == {"field": "since"}


CONFIG = (
    memory_config(publish_rate=100000, publish_burst=100000)
    + """
  resume: {id: "resume-1", type: "WS"}
  resume-id: {id: "resume-id-1", type: "WS"}
  gap: {id: "gap-1", type: "WS", history_size: 3}
  restart: {id: "restart-1", type: "WS"}
  restart-feed: {id: "restart-feed-1", type: "SSE"}
"""
)


def ws_url(server, channel_id: str, **query: str) -> str:
    return f"{server.ws}/api/v1/channels/{channel_id}?{urlencode(query)}"


@pytest.fixture(scope="module")
def server(start_module_server):
    return start_module_server(CONFIG)


async def publish_all(server, channel_id: str, payloads: list[str]) -> list[dict]:
    """Publish from one connection and return the envelopes as a subscriber saw them."""
    async with (
        websockets.connect(ws_url(server, channel_id, clientId="publisher")) as publisher,
        websockets.connect(ws_url(server, channel_id, clientId="witness")) as witness,
    ):
        for payload in payloads:
            await publisher.send(payload)
        return [await recv_json(witness) for _ in payloads]


async def resume_then_live(server, channel_id: str, since: str, live_payload: str) -> tuple[list[str], dict]:
    """Reconnect ``since`` a position while another client publishes ``live_payload``: the two payloads
    replayed first, then the live message as the returning client got it."""
    async with (
        websockets.connect(ws_url(server, channel_id, clientId="returning", since=since)) as returning,
        websockets.connect(ws_url(server, channel_id, clientId="live")) as live,
    ):
        missed = [(await recv_json(returning))["payload"] for _ in range(2)]
        await live.send(live_payload)
        return missed, await recv_json(returning)


async def test_websocket_since_a_position_delivers_exactly_the_missed_messages(server):
    seen = await publish_all(server, "resume-1", ["a", "b", "c", "d"])
    since = f"{seen[1]['epoch']}-{seen[1]['offset']}"
    missed, after = await resume_then_live(server, "resume-1", since, "e")
    assert missed == ["c", "d"]
    assert after["payload"] == "e"


async def test_websocket_since_a_message_id_delivers_what_followed_it(server):
    seen = await publish_all(server, "resume-id-1", ["a", "b", "c"])
    missed, after = await resume_then_live(server, "resume-id-1", seen[0]["id"], "d")
    assert missed == ["b", "c"]
    assert after["payload"] == "d"


async def test_websocket_gap_frame_when_history_no_longer_covers_the_position(server):
    seen = await publish_all(server, "gap-1", [f"m{i}" for i in range(6)])
    since = f"{seen[0]['epoch']}-{seen[0]['offset']}"
    async with websockets.connect(ws_url(server, "gap-1", clientId="late", since=since)) as late:
        gap = await recv_json(late)
        kept = [(await recv_json(late))["payload"] for _ in range(3)]
    assert gap["control"] == "gap"
    assert gap["reason"] == "expired"
    assert gap["requested"] == since
    assert gap["earliest"] == f"{seen[3]['epoch']}-{seen[3]['offset']}"
    assert kept == ["m3", "m4", "m5"]


async def test_restart_of_a_memory_instance_is_a_gap_never_a_wrong_offset(start_server):
    server = start_server(CONFIG)
    seen = await publish_all(server, "restart-1", ["before-1", "before-2", "before-3"])
    old_position = f"{seen[1]['epoch']}-{seen[1]['offset']}"

    await asyncio.to_thread(server.stop)
    await asyncio.to_thread(server.run)  # same database, same channels, history gone

    # Nothing was published since the restart: the client hears of the gap and of nothing else.
    async with websockets.connect(ws_url(server, "restart-1", clientId="early", since=old_position)) as early:
        gap = await recv_json(early)
        async with websockets.connect(ws_url(server, "restart-1", clientId="talker")) as talker:
            await talker.send("after restart")
            first_live = await recv_json(early)
    assert gap["control"] == "gap"
    assert gap["reason"] == "epoch_changed"
    assert gap["requested"] == old_position
    assert first_live["payload"] == "after restart"
    assert first_live["epoch"] != seen[0]["epoch"]
    assert first_live["offset"] == 1

    # Messages published after the restart are all newer than the old position: none is skipped
    # because its new offset happens to be lower than the old one.
    await publish_all(server, "restart-1", ["after-2", "after-3"])
    async with websockets.connect(ws_url(server, "restart-1", clientId="late", since=old_position)) as late:
        gap = await recv_json(late)
        replayed = [(await recv_json(late))["payload"] for _ in range(3)]
    assert gap["reason"] == "epoch_changed"
    assert replayed == ["after restart", "after-2", "after-3"]

    # An SSE client resuming with an old Last-Event-ID gets a gap event first.
    url = f"{server.http}/api/v1/channels/restart-feed-1"
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client,
        client.stream("GET", url, headers={"Last-Event-ID": f"{seen[0]['epoch']}-7"}) as response,
    ):
        lines = response.aiter_lines()
        while await asyncio.wait_for(anext(lines), 5) != "event: gap":
            pass
        data = json.loads((await asyncio.wait_for(anext(lines), 5)).removeprefix("data: "))
    assert data["reason"] == "epoch_changed"
    assert data["requested"] == f"{seen[0]['epoch']}-7"


INCARNATIONS_CONFIG = (
    memory_config(allow_create_new_channels=True, publish_rate=100000, publish_burst=100000)
    + """
  neighbour: {id: "neighbour-1", type: "WS"}
"""
)


async def resume_from(server, channel_id: str, since: str, count: int) -> list[dict]:
    async with websockets.connect(ws_url(server, channel_id, clientId="resumer", since=since)) as ws:
        return [await recv_json(ws) for _ in range(count)]


async def test_a_position_from_a_deleted_channel_or_from_another_channel_gets_a_gap(start_server, asgi_server):
    """MEMORY mode: each incarnation of a channel's history has its own epoch, as under REDIS."""
    server = start_server(INCARNATIONS_CONFIG, env={"REALTIME_API_KEYS": API_KEY}, server=asgi_server)
    async with httpx.AsyncClient(base_url=server.http, headers=AUTH, timeout=10) as client:
        created = await client.post("/api/v1/channels", json={"id": "reborn", "type": "WS"})
        assert created.status_code == 201, created.text
        old = await publish_all(server, "reborn", ["old1", "old2", "old3"])
        assert (await client.delete("/api/v1/channels/reborn")).status_code == 200
        assert (await client.post("/api/v1/channels", json={"id": "reborn", "type": "WS"})).status_code == 201
        new = await publish_all(server, "reborn", [f"new{index}" for index in range(1, 8)])
        neighbour = await publish_all(server, "neighbour-1", ["n1", "n2"])
    stale = await resume_from(server, "reborn", f"{old[-1]['epoch']}-{old[-1]['offset']}", 8)
    assert (stale[0]["control"], stale[0]["reason"]) == ("gap", "epoch_changed")
    assert [frame["payload"] for frame in stale[1:]] == [f"new{index}" for index in range(1, 8)]
    assert new[0]["epoch"] != old[0]["epoch"]
    foreign = await resume_from(server, "reborn", f"{neighbour[0]['epoch']}-{neighbour[0]['offset']}", 8)
    assert (foreign[0]["control"], foreign[0]["reason"]) == ("gap", "epoch_changed")
    assert [frame["payload"] for frame in foreign[1:]] == [f"new{index}" for index in range(1, 8)]


# --- Any position parses or is refused with 400 (hypothesis) (moved from test_hardening_properties.py) ---


@given(st.one_of(query_text, any_text, st.from_regex(r"\A[A-Za-z0-9]{1,32}-[0-9]{1,18}\Z")))
def test_position_parse_returns_a_position_or_a_400(raw):
    try:
        position = position_parse(raw)
    except ApplicationError as error:
        assert error.status == 400 and error.extra["field"] == "since"
        return
    if raw == "":
        assert position is None
        return
    assert isinstance(position, Position)
    if position.message_id is None:
        assert isinstance(position.offset, int) and 0 <= position.offset < 10**18
        assert position.epoch is None or (position.epoch.isascii() and position.epoch.isalnum())
        epoch, _, offset = raw.strip().rpartition("-")
        assert (position.epoch or "", position.offset) == (epoch, int(offset)) and offset.isascii()


@pytest.mark.parametrize("raw", ["²", "12³", "١٢", "ep-١٢", "ep-²", "\u0660", "1\n2", "ep-1\nx"])
def test_non_ascii_digits_are_not_offsets(raw):
    with pytest.raises(ApplicationError):
        position_parse(raw)


@given(st.uuids())
def test_message_ids_are_accepted_in_any_spelling(message_id):
    canonical = str(message_id)
    for spelling in (canonical, canonical.upper(), canonical.replace("-", "")):
        assert position_parse(spelling) == Position(message_id=canonical)


# --- Clients that never read: cut off, then resumed in full, paced (moved from test_hardening_websocket.py) ---

STALLED_CONFIG = (
    memory_config(
        publish_rate=100000, publish_burst=100000, max_message_size=65536, max_pending_bytes=1048576, history_size=1000
    )
    + """
  stalled: {id: "stalled-1", type: "WS", max_of_channel_connections: 50}
  stalled-feed: {id: "stalled-feed-1", type: "SSE", max_of_channel_connections: 50}
"""
)


@pytest.fixture(scope="module")
def stalled_server(start_module_server):
    """A daphne with 1 s keep-alive pings (ping timeout 2 s) and a 1 MiB bound per connection."""
    return start_module_server(STALLED_CONFIG, env={"REALTIME_API_KEYS": API_KEY}, extra_args=SHORT_PINGS)


async def test_many_clients_that_never_read_are_cut_off_and_resume_everything(stalled_server):
    """10 WebSockets and 10 event streams stop reading while 400 messages of 16 KiB flow: each is cut
    off (counted), the reader is not slowed, and each resumes from its last position with nothing lost."""
    # Enough to overflow the kernel's socket buffers as well as max_pending_bytes (1 MiB).
    count, size = 400, 16 * 1024
    stalled_ws = [
        await asyncio.to_thread(
            handshake, stalled_server, f"/api/v1/channels/stalled-1?clientId=sw{index}", rcvbuf=4096
        )
        for index in range(10)
    ]
    stalled_sse = []
    for index in range(10):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", stalled_server.port))
        request = (
            f"GET /api/v1/channels/stalled-feed-1?clientId=ss{index} HTTP/1.1\r\nHost: 127.0.0.1:{stalled_server.port}"
        )
        sock.sendall(request.encode() + b"\r\n\r\n")
        stalled_sse.append(sock)
    await wait_until(lambda: connections(stalled_server, "stalled-feed-1") == 10)
    metrics_before = (await asyncio.to_thread(httpx.get, f"{stalled_server.http}/metrics")).text
    async with (
        websockets.connect(f"{stalled_server.ws}/api/v1/channels/stalled-1?clientId=reader") as reader,
        websockets.connect(f"{stalled_server.ws}/api/v1/channels/stalled-1?clientId=writer") as writer,
        httpx.AsyncClient(base_url=stalled_server.http, headers=AUTH) as api,
    ):

        async def publish():
            for index in range(count):
                await writer.send(f"{index:05d}" + "w" * size)
                response = await api.post(
                    "/api/v1/channels/stalled-feed-1/messages", json={"payload": f"{index:05d}" + "s" * size}
                )
                assert response.status_code == 201

        async def read():
            return [await recv_json(reader, within=15) for _ in range(count)]

        _, received = await asyncio.wait_for(asyncio.gather(publish(), read()), 90)
        assert [message["payload"][:5] for message in received] == [f"{index:05d}" for index in range(count)]
        await wait_until(lambda: connections(stalled_server, "stalled-1") == 2)
        await wait_until(lambda: connections(stalled_server, "stalled-feed-1") == 0)
        metrics_after = (await asyncio.to_thread(httpx.get, f"{stalled_server.http}/metrics")).text

        def slow_cut(text: str) -> float:
            return float(
                next(line.split()[-1] for line in text.splitlines() if line.startswith("realtime_slow_consumer"))
            )

        assert slow_cut(metrics_after) - slow_cut(metrics_before) == 20
        # Resume: the last 50 messages (800 KiB, within max_pending_bytes as docs/protocol.md asks of a
        # replay) arrive in order, once, on both transports.
        tail = received[-50]
        since = f"{tail['epoch']}-{tail['offset'] - 1}"
        replay, attempts = await resume_websocket(stalled_server, "stalled-1", "sw0", 50, since=since)
        assert [message["payload"][:5] for message in replay] == [f"{index:05d}" for index in range(count - 50, count)]
        history = (await api.get("/api/v1/channels/stalled-feed-1/messages", params={"limit": 1})).json()
        first = history["messages"][0]
        sse_since = f"{first['epoch']}-{count - 50}"
        payloads, sse_attempts = await resume_stream(api, "stalled-feed-1", "ss0", 50, since=sse_since)
        assert payloads == [f"{index:05d}" for index in range(count - 50, count)]
        assert attempts == sse_attempts == 1
    for sock in stalled_ws + stalled_sse:
        sock.close()


async def resume_websocket(
    server, channel: str, client_id: str, count: int, *, since: str = "0", attempts: int = 30
) -> tuple[list[dict], int]:
    """Connect with ``since``, read until cut off, resume from the last position; return what arrived."""
    received: list[dict] = []
    for attempt in range(1, attempts + 1):
        since = f"{received[-1]['epoch']}-{received[-1]['offset']}" if received else since
        async with websockets.connect(
            f"{server.ws}/api/v1/channels/{channel}?clientId={client_id}&since={since}", max_size=None
        ) as ws:
            try:
                while len(received) < count:
                    message = await recv_json(ws)
                    if "control" not in message:
                        received.append(message)
            except websockets.ConnectionClosed:
                pass
        if len(received) >= count:
            return received, attempt
    raise AssertionError(f"resumed {len(received)} of {count}")


async def resume_stream(
    api: httpx.AsyncClient, channel: str, client_id: str, count: int, *, since: str = "0", attempts: int = 30
) -> tuple[list[str], int]:
    """The same over an event stream, resuming with Last-Event-ID as EventSource does."""
    payloads: list[str] = []
    last_id = since
    for attempt in range(1, attempts + 1):
        url = f"/api/v1/channels/{channel}?clientId={client_id}"
        async with api.stream("GET", url, headers={"Last-Event-ID": last_id}) as stream:
            try:
                event_id = None
                async for line in stream.aiter_lines():
                    if line.startswith("id: "):
                        event_id = line[4:]
                    elif line.startswith("data: ") and '"payload"' in line:
                        # Only an event received whole moves the position on (an id without its
                        # data, cut off mid-event, would skip that message).
                        payloads.append(json.loads(line[6:])["payload"][:5])
                        last_id = event_id or last_id
                        if len(payloads) == count:
                            return payloads, attempt
            except httpx.HTTPError:
                pass
    raise AssertionError(f"resumed {len(payloads)} of {count}")


async def test_a_client_far_behind_catches_up_by_resuming(stalled_server):
    async with httpx.AsyncClient(base_url=stalled_server.http, headers=AUTH) as api:
        for _ in range(100):
            response = await api.post("/api/v1/channels/stalled-1/messages", json={"payload": "z" * 16 * 1024})
            assert response.status_code == 201
    # 100 x 16 KiB is over max_pending_bytes (1 MiB): the replay is paced to the client, in one go.
    received, attempts = await resume_websocket(stalled_server, "stalled-1", "far-behind", 100, attempts=5)
    assert len(received) == 100
    assert attempts == 1


async def test_an_event_stream_far_behind_catches_up_by_resuming(stalled_server):
    async with httpx.AsyncClient(base_url=stalled_server.http, headers=AUTH, timeout=30) as api:
        for index in range(100):
            payload = f"{index:05d}" + "z" * 16 * 1024
            response = await api.post("/api/v1/channels/stalled-feed-1/messages", json={"payload": payload})
            assert response.status_code == 201
        # 100 x 16 KiB is over max_pending_bytes (1 MiB): the replay is paced to the stream, in one go.
        payloads, attempts = await resume_stream(api, "stalled-feed-1", "feed-far-behind", 100, attempts=5)
    assert payloads == [f"{index:05d}" for index in range(100)]
    assert attempts == 1


async def test_a_resuming_client_that_never_reads_is_still_cut_off(stalled_server):
    """Its paced replay waits for it, but live messages held meanwhile have their own bound."""
    async with httpx.AsyncClient(base_url=stalled_server.http, headers=AUTH) as api:
        # 4.8 MiB of history: more than the kernel's socket buffers absorb.
        for _ in range(300):
            response = await api.post("/api/v1/channels/stalled-1/messages", json={"payload": "h" * 16 * 1024})
            assert response.status_code == 201
        before = connections(stalled_server, "stalled-1")
        metrics_before = (await api.get("/metrics")).text
        rss_before = resident_kib(stalled_server.process.pid)
        sock = await asyncio.to_thread(
            handshake, stalled_server, "/api/v1/channels/stalled-1?clientId=never-reads&since=0", rcvbuf=4096
        )
        await wait_until(lambda: connections(stalled_server, "stalled-1") == before + 1)
        started = time.monotonic()
        # 1.25 MiB of live messages while its replay waits for it: over max_pending_bytes (1 MiB).
        for _ in range(80):
            response = await api.post("/api/v1/channels/stalled-1/messages", json={"payload": "l" * 16 * 1024})
            assert response.status_code == 201
        await wait_until(lambda: connections(stalled_server, "stalled-1") == before)
        cut_after = time.monotonic() - started
        metrics_after = (await api.get("/metrics")).text
    rss_after = resident_kib(stalled_server.process.pid)
    sock.close()

    def slow_cut(text: str) -> float:
        return float(next(line.split()[-1] for line in text.splitlines() if line.startswith("realtime_slow_consumer")))

    print(f"never-reading resume: cut off after {cut_after:.2f} s; RSS {rss_before} -> {rss_after} KiB")
    assert slow_cut(metrics_after) - slow_cut(metrics_before) == 1
    assert rss_after - rss_before < 50_000
