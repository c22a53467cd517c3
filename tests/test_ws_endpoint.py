"""The WebSocket endpoint of WS channels, end to end with ``websockets`` clients, under daphne and under uvicorn."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import httpx
import pytest
import websockets

from tests.support.auth import API_KEY
from tests.support.clients import closed_with, connected, connections, recv_json
from tests.support.configs import memory_config
from tests.support.liveserver import PING_INTERVAL, PING_TIMEOUT, SHORT_PINGS
from tests.support.processes import resident_kib
from tests.support.waiting import wait_until
from tests.support.wire import frame, handshake, read_until_close

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")

CONFIG = (
    memory_config(publish_rate=100000, publish_burst=100000)
    + """
  envelope: {id: "envelope-1", type: "WS"}
  echo: {id: "echo-1", type: "WS"}
  verbatim: {id: "verbatim-1", type: "WS"}
  named: {id: "named-1", type: "WS"}
  anonymous: {id: "anonymous-1", type: "WS"}
  leak-a: {id: "leak-a-1", type: "WS"}
  leak-b: {id: "leak-b-1", type: "WS"}
  ids: {id: "ids-1", type: "WS"}
  taken: {id: "taken-1", type: "WS"}
  feed: {id: "feed-1", type: "SSE"}
  binary: {id: "binary-1", type: "WS"}
  size: {id: "size-1", type: "WS"}
  limited: {id: "limited-1", type: "WS", max_of_channel_connections: 2}
  abrupt: {id: "abrupt-1", type: "WS", max_of_channel_connections: 1}
  order: {id: "order-1", type: "WS"}
  closing: {id: "closing-1", type: "WS"}
"""
)

RATE_CONFIG = (
    memory_config(publish_rate=0.001, publish_burst=3)
    + """
  rated: {id: "rated-1", type: "WS"}
"""
)

SLOW_CONFIG = (
    memory_config(publish_rate=100000, publish_burst=100000, max_pending_bytes=65536)
    + """
  slow: {id: "slow-1", type: "WS"}
"""
)


@pytest.fixture(scope="module")
def server(start_module_server, asgi_server):
    return start_module_server(CONFIG, server=asgi_server)


def ws_url(server, channel: str, **query: str) -> str:
    url = f"{server.ws}/api/v1/channels/{channel}"
    return f"{url}?{urlencode(query)}" if query else url


async def refusal(url: str, **connect_kwargs) -> tuple[dict, int]:
    """Open a WebSocket the server refuses: its final JSON frame and the close code."""
    async with websockets.connect(url, **connect_kwargs) as ws:
        body = await recv_json(ws)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    return body, closed.value.rcvd.code


async def test_message_envelope_reaches_others_but_not_sender(server):
    async with (
        websockets.connect(ws_url(server, "envelope-1", clientId="alice")) as alice,
        websockets.connect(ws_url(server, "envelope-1", clientId="bob")) as bob,
    ):
        await alice.send("hello")
        received = await recv_json(bob)
        await bob.send("hi alice")
        # Alice's first frame is Bob's message: her own never came back.
        first_for_alice = await recv_json(alice)

    assert set(received) == {"id", "channelId", "clientId", "payload", "createdAt", "offset", "epoch"}
    assert received["payload"] == "hello"
    assert received["clientId"] == "alice"
    assert received["channelId"] == "envelope-1"
    assert UUID.match(received["id"])
    assert RFC3339_UTC.match(received["createdAt"])
    created = datetime.fromisoformat(received["createdAt"])
    assert created.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=1)
    assert isinstance(received["offset"], int) and received["offset"] >= 1
    assert isinstance(received["epoch"], str) and received["epoch"]
    assert first_for_alice["payload"] == "hi alice"
    assert first_for_alice["clientId"] == "bob"
    assert first_for_alice["offset"] == received["offset"] + 1


async def test_echo_opt_in_returns_the_senders_own_message(server):
    async with (
        websockets.connect(ws_url(server, "echo-1", clientId="self", echo="1")) as sender,
        websockets.connect(ws_url(server, "echo-1", clientId="other")) as other,
    ):
        await sender.send("mine")
        echoed = await recv_json(sender)
        seen = await recv_json(other)
    assert echoed["payload"] == "mine"
    assert echoed["clientId"] == "self"
    assert echoed["id"] == seen["id"]


@pytest.mark.parametrize(
    "text",
    ["", "  spaced  ", "line one\nline two\r\n", '{"looks": "like json"}', "émoji 🎉 and 中文", "\u2028\u2029"],
)
async def test_payload_is_the_frame_text_as_sent(server, text):
    async with (
        websockets.connect(ws_url(server, "verbatim-1")) as sender,
        websockets.connect(ws_url(server, "verbatim-1")) as receiver,
    ):
        await sender.send(text)
        received = await recv_json(receiver)
    assert received["payload"] == text


async def test_channel_is_reachable_by_id_and_by_name(server):
    async with (
        websockets.connect(ws_url(server, "named", clientId="by-name")) as by_name,
        websockets.connect(ws_url(server, "named-1", clientId="by-id")) as by_id,
        websockets.connect(f"{server.ws}/api/v1/channels/named-1/?clientId=slash") as with_slash,
    ):
        await by_name.send("via name")
        received = await recv_json(by_id)
        assert (await recv_json(with_slash))["id"] == received["id"]
    assert received["channelId"] == "named-1"
    assert received["payload"] == "via name"


async def test_client_id_is_generated_when_absent(server):
    async with (
        websockets.connect(ws_url(server, "anonymous-1")) as first,
        websockets.connect(ws_url(server, "anonymous-1")) as second,
    ):
        await first.send("from first")
        from_first = await recv_json(second)
        await second.send("from second")
        from_second = await recv_json(first)
    assert re.match(r"^client-[0-9a-f]{32}$", from_first["clientId"])
    assert re.match(r"^client-[0-9a-f]{32}$", from_second["clientId"])
    assert from_first["clientId"] != from_second["clientId"]


async def test_messages_never_leak_to_another_channel(server):
    async with (
        websockets.connect(ws_url(server, "leak-a-1", clientId="a-sender")) as a_sender,
        websockets.connect(ws_url(server, "leak-a-1", clientId="a-listener")) as a_listener,
        websockets.connect(ws_url(server, "leak-b-1", clientId="b-sender")) as b_sender,
        websockets.connect(ws_url(server, "leak-b-1", clientId="b-listener")) as b_listener,
    ):
        for index in range(5):
            await a_sender.send(f"for a {index}")
        for index in range(5):
            assert (await recv_json(a_listener))["payload"] == f"for a {index}"
        await b_sender.send("for b")
        first_on_b = await recv_json(b_listener)
    assert first_on_b["payload"] == "for b"
    assert first_on_b["channelId"] == "leak-b-1"


@pytest.mark.parametrize(
    "client_id", ["", "x" * 129, "has space", "slash/", "é", "semi;colon", "a+b", "server-message"]
)
async def test_malformed_client_id_is_refused_with_4400(server, client_id):
    body, code = await refusal(ws_url(server, "ids-1", clientId=client_id))
    assert code == 4400
    assert body["control"] == "close"
    assert body["code"] == 4400
    assert body["error"] == "bad_request"
    assert body["field"] == "clientId"
    assert "clientId" in body["message"]


async def test_longest_and_widest_client_id_is_accepted(server):
    client_id = ("Az09._:@-" * 15)[:128]
    async with (
        websockets.connect(ws_url(server, "ids-1", clientId=client_id)) as sender,
        websockets.connect(ws_url(server, "ids-1", clientId="listener")) as listener,
    ):
        await sender.send("ok")
        received = await recv_json(listener)
    assert received["clientId"] == client_id


async def test_unknown_channel_is_refused_with_4404(server):
    body, code = await refusal(ws_url(server, "no-such-channel", clientId="x"))
    assert code == 4404
    assert body["error"] == "channel_not_found"
    assert body["code"] == 4404


async def test_client_id_already_connected_is_refused_with_4409(server):
    async with websockets.connect(ws_url(server, "taken-1", clientId="dup")) as first:
        body, code = await refusal(ws_url(server, "taken-1", clientId="dup"))
        # The refusal took nothing from the connection that holds the id.
        async with websockets.connect(ws_url(server, "taken-1", clientId="peer")) as peer:
            await peer.send("still there?")
            assert (await recv_json(first))["payload"] == "still there?"
    assert code == 4409
    assert body["error"] == "client_id_taken"


async def test_sse_channel_over_websocket_is_refused_with_4400(server):
    body, code = await refusal(ws_url(server, "feed-1", clientId="x"))
    assert code == 4400
    assert body["error"] == "wrong_transport"
    assert "EventSource" in body["message"]


async def test_malformed_since_is_refused_with_4400(server):
    body, code = await refusal(ws_url(server, "envelope-1", clientId="since", since="not a position"))
    assert code == 4400
    assert body["field"] == "since"


async def test_binary_frame_closes_with_1003(server):
    async with (
        websockets.connect(ws_url(server, "binary-1", clientId="binary")) as ws,
        websockets.connect(ws_url(server, "binary-1", clientId="witness")) as witness,
    ):
        await ws.send(b"\x00\x01")
        body, code = await closed_with(ws)
        await wait_until(lambda: connections(server, "binary-1") == 1)
        async with websockets.connect(ws_url(server, "binary-1", clientId="other")) as other:
            await other.send("after")
            # The binary frame was never published.
            assert (await recv_json(witness))["payload"] == "after"
    assert code == 1003
    assert body == {
        "control": "close",
        "code": 1003,
        "error": "binary_frame",
        "message": "Binary frames are not supported: send text frames.",
    }


async def test_frame_over_max_message_size_closes_with_1009(server):
    limit = 64 * 1024
    async with (
        websockets.connect(ws_url(server, "size-1", clientId="big")) as ws,
        websockets.connect(ws_url(server, "size-1", clientId="witness")) as witness,
    ):
        largest = "é" * (limit // 2)  # exactly the limit in UTF-8 bytes
        await ws.send(largest)
        assert (await recv_json(witness))["payload"] == largest
        await ws.send(largest + "x")
        body, code = await closed_with(ws)
    assert code == 1009
    assert body["error"] == "payload_too_large"
    assert body["limit"] == limit


async def test_limit_counts_live_connections_only(server):
    async with (
        websockets.connect(ws_url(server, "limited-1", clientId="one")) as one,
        websockets.connect(ws_url(server, "limited-1", clientId="two")),
    ):
        body, code = await refusal(ws_url(server, "limited-1", clientId="three"))
        assert code == 4422
        assert body["error"] == "channel_full"
        # The refused connection took no slot: closing one lets exactly one more in.
        await one.close()
        await wait_until(lambda: connections(server, "limited-1") == 1)
        async with websockets.connect(ws_url(server, "limited-1", clientId="three")) as three:
            await three.send("in")
            _, code_again = await refusal(ws_url(server, "limited-1", clientId="four"))
    assert code_again == 4422


async def test_abrupt_tcp_close_frees_the_slot(server):
    ws = await websockets.connect(ws_url(server, "abrupt-1", clientId="vanishing"))
    assert await connected(server, "abrupt-1") == 1
    _, code = await refusal(ws_url(server, "abrupt-1", clientId="waiting"))
    assert code == 4422
    ws.transport.abort()  # no close frame: the TCP connection just drops
    await wait_until(lambda: connections(server, "abrupt-1") == 0)
    async with websockets.connect(ws_url(server, "abrupt-1", clientId="vanishing")) as back:
        assert await connected(server, "abrupt-1") == 1
        await back.send("reconnected with the same clientId")


async def test_frames_sent_just_before_a_close_are_all_published(server):
    """A client that sends and closes at once loses nothing: the frames the server read before the
    close frame are published before the connection is released (they used to be dropped)."""
    async with websockets.connect(ws_url(server, "closing-1", clientId="reader")) as reader:
        async with websockets.connect(ws_url(server, "closing-1", clientId="writer")) as writer:
            for index in range(300):
                await writer.send(f"{index:05d}")
        received = [(await recv_json(reader))["payload"] for _ in range(300)]
    assert received == [f"{index:05d}" for index in range(300)]


async def test_messages_arrive_in_publish_order_exactly_once(server):
    count = 300
    async with (
        websockets.connect(ws_url(server, "order-1", clientId="p1")) as p1,
        websockets.connect(ws_url(server, "order-1", clientId="p2")) as p2,
        websockets.connect(ws_url(server, "order-1", clientId="r1")) as r1,
        websockets.connect(ws_url(server, "order-1", clientId="r2")) as r2,
    ):

        async def publish(ws, name):
            for index in range(count):
                await ws.send(f"{name}:{index}")

        async def receive(ws, expected):
            return [await recv_json(ws) for _ in range(expected)]

        _, _, got_r1, got_r2, got_p1, got_p2 = await asyncio.gather(
            publish(p1, "p1"),
            publish(p2, "p2"),
            receive(r1, 2 * count),
            receive(r2, 2 * count),
            receive(p1, count),
            receive(p2, count),
        )
    for received in (got_r1, got_r2):
        assert [m["payload"] for m in received if m["clientId"] == "p1"] == [f"p1:{i}" for i in range(count)]
        assert [m["payload"] for m in received if m["clientId"] == "p2"] == [f"p2:{i}" for i in range(count)]
        offsets = [m["offset"] for m in received]
        assert offsets == sorted(set(offsets))
        assert len({m["id"] for m in received}) == 2 * count
    assert [m["payload"] for m in got_p1] == [f"p2:{i}" for i in range(count)]
    assert [m["payload"] for m in got_p2] == [f"p1:{i}" for i in range(count)]
    assert [m["id"] for m in got_r1] == [m["id"] for m in got_r2]


async def test_publishing_too_fast_is_refused_with_4429_and_not_published(start_module_server, asgi_server):
    server = start_module_server(RATE_CONFIG, server=asgi_server)
    async with (
        websockets.connect(ws_url(server, "rated-1", clientId="fast")) as fast,
        websockets.connect(ws_url(server, "rated-1", clientId="listener")) as listener,
        websockets.connect(ws_url(server, "rated-1", clientId="marker")) as marker,
    ):
        for index in range(5):
            await fast.send(f"burst {index}")
        errors = [await recv_json(fast), await recv_json(fast)]
        received = [(await recv_json(listener))["payload"] for _ in range(3)]
        await marker.send("marker")
        after = await recv_json(listener)
        # The refused connection stays open and still receives.
        assert (await recv_json(fast))["payload"] == "marker"
    assert received == ["burst 0", "burst 1", "burst 2"]
    assert after["payload"] == "marker"
    for error in errors:
        assert error["control"] == "error"
        assert error["code"] == 4429
        assert error["error"] == "rate_limited"


async def test_slow_consumer_is_cut_off_without_slowing_others(start_module_server, asgi_server):
    server = start_module_server(SLOW_CONFIG, server=asgi_server)
    count, size = 400, 16 * 1024  # well past what the kernel buffers on loopback (~4 MiB)
    stalled = await asyncio.to_thread(handshake, server, "/api/v1/channels/slow-1?clientId=stalled", rcvbuf=4096)
    try:
        async with (
            websockets.connect(ws_url(server, "slow-1", clientId="publisher")) as publisher,
            websockets.connect(ws_url(server, "slow-1", clientId="reader")) as reader,
        ):
            assert await connected(server, "slow-1") == 3

            async def publish():
                for index in range(count):
                    await publisher.send(f"{index:05d}" + "x" * size)

            async def read():
                return [await recv_json(reader, within=10) for _ in range(count)]

            _, received = await asyncio.wait_for(asyncio.gather(publish(), read()), 60)
            assert [m["payload"][:5] for m in received] == [f"{i:05d}" for i in range(count)]
            # The stalled client lost its slot; its clientId may connect again.
            await wait_until(lambda: connections(server, "slow-1") == 2)
            async with websockets.connect(ws_url(server, "slow-1", clientId="stalled")):
                assert await connected(server, "slow-1") == 3
    finally:
        stalled.close()


# --- Hostile frames, ping floods, silent peers, unfinished handshakes (moved from test_hardening_websocket.py) ---

FRAMES_CONFIG = (
    memory_config(
        publish_rate=100000, publish_burst=100000, max_message_size=65536, max_pending_bytes=1048576, history_size=1000
    )
    + """
  utf8: {id: "utf8-1", type: "WS"}
  fragments: {id: "fragments-1", type: "WS"}
  pings: {id: "pings-1", type: "WS"}
  halfopen: {id: "halfopen-1", type: "WS", max_of_channel_connections: 3}
"""
)


@pytest.fixture(scope="module")
def pinging_server(start_module_server):
    """A daphne with 1 s keep-alive pings (ping timeout 2 s), for clients that misbehave."""
    return start_module_server(FRAMES_CONFIG, env={"REALTIME_API_KEYS": API_KEY}, extra_args=SHORT_PINGS)


async def test_invalid_utf8_closes_with_1007_and_publishes_nothing(pinging_server):
    async with websockets.connect(f"{pinging_server.ws}/api/v1/channels/utf8-1?clientId=witness") as witness:
        for payload in (
            b"\xff\xfe",
            b"ok \xed\xa0\x80",
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80",
        ):
            sock = await asyncio.to_thread(handshake, pinging_server, "/api/v1/channels/utf8-1?clientId=bad")
            sock.sendall(frame(0x1, payload))
            # autobahn fails the connection: a 1007 close frame, or (its default) dropping the TCP connection.
            assert await asyncio.to_thread(read_until_close, sock) in (1007, None)
            sock.close()
            await wait_until(lambda: connections(pinging_server, "utf8-1") == 1)
        # Invalid UTF-8 split across fragments is caught too, before the message completes.
        sock = await asyncio.to_thread(handshake, pinging_server, "/api/v1/channels/utf8-1?clientId=bad")
        sock.sendall(frame(0x1, b"valid start \xce", fin=False) + frame(0x0, b"\xff end"))
        assert await asyncio.to_thread(read_until_close, sock) in (1007, None)
        sock.close()
        async with websockets.connect(f"{pinging_server.ws}/api/v1/channels/utf8-1?clientId=after") as after:
            await after.send("after")
            assert (await recv_json(witness))["payload"] == "after"


async def test_fragmented_messages_are_published_whole_and_limited_whole(pinging_server):
    async with (
        websockets.connect(f"{pinging_server.ws}/api/v1/channels/fragments-1?clientId=reader") as reader,
        websockets.connect(f"{pinging_server.ws}/api/v1/channels/fragments-1?clientId=writer") as writer,
    ):
        await writer.send(["frag", "ment", "ed é"])  # three frames, one message
        assert (await recv_json(reader))["payload"] == "fragmented é"
        # Fragments interleaved with pings (allowed by RFC 6455) still make one message.
        sock = await asyncio.to_thread(handshake, pinging_server, "/api/v1/channels/fragments-1?clientId=raw")
        sock.sendall(frame(0x1, b"one ", fin=False) + frame(0x9, b"ping") + frame(0x0, b"message"))
        assert (await recv_json(reader))["payload"] == "one message"
        # 100 fragments of 1 KiB: over the 64 KiB limit as a whole, so refused as a whole (1009).
        parts = [frame(0x1, b"x" * 1024, fin=False)] + [frame(0x0, b"x" * 1024, fin=False) for _ in range(98)]
        sock.sendall(b"".join(parts) + frame(0x0, b"x" * 1024))
        assert await asyncio.to_thread(read_until_close, sock) == 1009
        sock.close()
        # A message that never ends is cut off by daphne at 1 MiB, whatever pinging_server.max_message_size says.
        sock = await asyncio.to_thread(handshake, pinging_server, "/api/v1/channels/fragments-1?clientId=endless")
        sock.sendall(frame(0x1, b"y" * 65536, fin=False))
        code = None
        for _ in range(40):
            try:
                sock.sendall(frame(0x0, b"y" * 65536, fin=False))
            except (BrokenPipeError, ConnectionResetError):
                break
        code = await asyncio.to_thread(read_until_close, sock)
        sock.close()
        assert code in (1009, None)
        await writer.send("still served")
        assert (await recv_json(reader))["payload"] == "still served"
    await wait_until(lambda: connections(pinging_server, "fragments-1") == 0)


async def test_ping_floods_neither_stall_others_nor_hold_memory(pinging_server):
    rss_before = resident_kib(pinging_server.process.pid)
    async with (
        websockets.connect(f"{pinging_server.ws}/api/v1/channels/pings-1?clientId=reader") as reader,
        websockets.connect(f"{pinging_server.ws}/api/v1/channels/pings-1?clientId=writer") as writer,
    ):
        flooders = [
            await asyncio.to_thread(
                handshake, pinging_server, f"/api/v1/channels/pings-1?clientId=flood{index}", rcvbuf=4096
            )
            for index in range(4)
        ]
        burst = frame(0x9, b"p" * 125) * 2000

        def flood(sock: socket.socket) -> int:
            sent = 0
            sock.settimeout(2)
            try:
                for _ in range(40):  # 80,000 pings of 125 bytes, never reading a pong
                    sock.sendall(burst)
                    sent += 2000
            except (TimeoutError, BrokenPipeError, ConnectionResetError):
                pass
            return sent

        flooding = asyncio.gather(*(asyncio.to_thread(flood, sock) for sock in flooders))
        latencies = []
        for index in range(20):
            started = time.monotonic()
            await writer.send(f"during flood {index}")
            assert (await recv_json(reader))["payload"] == f"during flood {index}"
            latencies.append(time.monotonic() - started)
        pings_sent = sum(await flooding)
        rss_during = resident_kib(pinging_server.process.pid)
        for sock in flooders:
            sock.close()
    await wait_until(lambda: connections(pinging_server, "pings-1") == 0)
    await asyncio.sleep(1)
    rss_after = resident_kib(pinging_server.process.pid)
    print(
        f"ping flood: {pings_sent} pings; p100 latency {max(latencies) * 1000:.0f} ms; "
        f"RSS {rss_before} -> {rss_during} -> {rss_after} KiB"
    )
    assert max(latencies) < 2.0
    assert rss_during - rss_before < 200_000


async def test_silent_peers_are_dropped_by_keepalive_pings_and_free_their_slots(pinging_server):
    """Half-open connections: the peer vanished (no FIN ever arrives) or just never answers."""
    silent = [
        await asyncio.to_thread(
            handshake, pinging_server, f"/api/v1/channels/halfopen-1?clientId=silent{index}", rcvbuf=4096
        )
        for index in range(3)
    ]
    assert connections(pinging_server, "halfopen-1") == 3
    # The channel is full while they hold their slots...
    async with websockets.connect(f"{pinging_server.ws}/api/v1/channels/halfopen-1?clientId=late") as late:
        assert (await recv_json(late))["error"] == "channel_full"
    # ...until daphne's pings go unanswered for ping-interval + ping-timeout seconds.
    freed_after = await wait_until(
        lambda: connections(pinging_server, "halfopen-1") == 0, within=PING_INTERVAL + PING_TIMEOUT + 8
    )
    for sock in silent:
        sock.close()
    assert freed_after < PING_INTERVAL + PING_TIMEOUT + 8
    async with websockets.connect(f"{pinging_server.ws}/api/v1/channels/halfopen-1?clientId=silent0"):
        pass


async def test_unfinished_handshakes_do_not_block_the_service(pinging_server):
    """Clients that open TCP connections and never finish the HTTP request (slowloris)."""
    held = []
    for index in range(100):
        sock = socket.create_connection(("127.0.0.1", pinging_server.port))
        sock.sendall(f"GET /api/v1/channels/halfopen-1?clientId=slow{index} HTTP/1.1\r\nUpgrade: web".encode())
        held.append(sock)
    try:
        started = time.monotonic()
        async with websockets.connect(f"{pinging_server.ws}/api/v1/channels/halfopen-1?clientId=normal") as ws:
            await ws.ping()
        assert time.monotonic() - started < 2
        assert (
            await asyncio.to_thread(lambda: httpx.get(f"{pinging_server.http}/healthz", timeout=5).status_code) == 200
        )
    finally:
        for sock in held:
            sock.close()
