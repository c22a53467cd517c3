"""Hostile WebSocket and event-stream clients against a real daphne, beyond test_ws_endpoint.py and
test_sse_endpoint.py (which cover one binary frame, one oversized frame and one client that never reads).

Frames are written by hand where the ``websockets`` client would refuse to (invalid UTF-8,
unfinished fragments, ping floods). Each test checks that the offending connection is closed
with the documented code, publishes nothing, gives its slot back, and that the others are served.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest
import websockets

from tests.support.auth import API_KEY, AUTH
from tests.support.clients import connections, recv_json
from tests.support.processes import resident_kib
from tests.support.waiting import wait_until
from tests.support.wire import frame, handshake, read_until_close

CONFIG = """
server:
  publish_rate: 100000
  publish_burst: 100000
  max_message_size: 65536
  max_pending_bytes: 1048576
  history_size: 1000
pubsub:
  driver: "MEMORY"
channels:
  utf8: {id: "utf8-1", type: "WS"}
  fragments: {id: "fragments-1", type: "WS"}
  pings: {id: "pings-1", type: "WS"}
  halfopen: {id: "halfopen-1", type: "WS", max_of_channel_connections: 3}
  stalled: {id: "stalled-1", type: "WS", max_of_channel_connections: 50}
  stalled-feed: {id: "stalled-feed-1", type: "SSE", max_of_channel_connections: 50}
"""
PING_INTERVAL, PING_TIMEOUT = 1, 2


@pytest.fixture(scope="module")
def server(start_module_server):
    server = start_module_server(CONFIG, env={"REALTIME_API_KEYS": API_KEY})
    # Short keep-alive pings so that a silent peer is noticed within seconds.
    server.stop()
    server.extra_args = ["--ping-interval", str(PING_INTERVAL), "--ping-timeout", str(PING_TIMEOUT)]
    server.run()
    return server


async def test_invalid_utf8_closes_with_1007_and_publishes_nothing(server):
    async with websockets.connect(f"{server.ws}/api/v1/channels/utf8-1?clientId=witness") as witness:
        for payload in (
            b"\xff\xfe",
            b"ok \xed\xa0\x80",
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80",
        ):
            sock = await asyncio.to_thread(handshake, server, "/api/v1/channels/utf8-1?clientId=bad")
            sock.sendall(frame(0x1, payload))
            # autobahn fails the connection: a 1007 close frame, or (its default) dropping the TCP connection.
            assert await asyncio.to_thread(read_until_close, sock) in (1007, None)
            sock.close()
            await wait_until(lambda: connections(server, "utf8-1") == 1)
        # Invalid UTF-8 split across fragments is caught too, before the message completes.
        sock = await asyncio.to_thread(handshake, server, "/api/v1/channels/utf8-1?clientId=bad")
        sock.sendall(frame(0x1, b"valid start \xce", fin=False) + frame(0x0, b"\xff end"))
        assert await asyncio.to_thread(read_until_close, sock) in (1007, None)
        sock.close()
        async with websockets.connect(f"{server.ws}/api/v1/channels/utf8-1?clientId=after") as after:
            await after.send("after")
            assert (await recv_json(witness))["payload"] == "after"


async def test_fragmented_messages_are_published_whole_and_limited_whole(server):
    async with (
        websockets.connect(f"{server.ws}/api/v1/channels/fragments-1?clientId=reader") as reader,
        websockets.connect(f"{server.ws}/api/v1/channels/fragments-1?clientId=writer") as writer,
    ):
        await writer.send(["frag", "ment", "ed é"])  # three frames, one message
        assert (await recv_json(reader))["payload"] == "fragmented é"
        # Fragments interleaved with pings (allowed by RFC 6455) still make one message.
        sock = await asyncio.to_thread(handshake, server, "/api/v1/channels/fragments-1?clientId=raw")
        sock.sendall(frame(0x1, b"one ", fin=False) + frame(0x9, b"ping") + frame(0x0, b"message"))
        assert (await recv_json(reader))["payload"] == "one message"
        # 100 fragments of 1 KiB: over the 64 KiB limit as a whole, so refused as a whole (1009).
        parts = [frame(0x1, b"x" * 1024, fin=False)] + [frame(0x0, b"x" * 1024, fin=False) for _ in range(98)]
        sock.sendall(b"".join(parts) + frame(0x0, b"x" * 1024))
        assert await asyncio.to_thread(read_until_close, sock) == 1009
        sock.close()
        # A message that never ends is cut off by daphne at 1 MiB, whatever server.max_message_size says.
        sock = await asyncio.to_thread(handshake, server, "/api/v1/channels/fragments-1?clientId=endless")
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
    await wait_until(lambda: connections(server, "fragments-1") == 0)


async def test_ping_floods_neither_stall_others_nor_hold_memory(server):
    rss_before = resident_kib(server.process.pid)
    async with (
        websockets.connect(f"{server.ws}/api/v1/channels/pings-1?clientId=reader") as reader,
        websockets.connect(f"{server.ws}/api/v1/channels/pings-1?clientId=writer") as writer,
    ):
        flooders = [
            await asyncio.to_thread(handshake, server, f"/api/v1/channels/pings-1?clientId=flood{index}", rcvbuf=4096)
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
        rss_during = resident_kib(server.process.pid)
        for sock in flooders:
            sock.close()
    await wait_until(lambda: connections(server, "pings-1") == 0)
    await asyncio.sleep(1)
    rss_after = resident_kib(server.process.pid)
    print(
        f"ping flood: {pings_sent} pings; p100 latency {max(latencies) * 1000:.0f} ms; "
        f"RSS {rss_before} -> {rss_during} -> {rss_after} KiB"
    )
    assert max(latencies) < 2.0
    assert rss_during - rss_before < 200_000


async def test_silent_peers_are_dropped_by_keepalive_pings_and_free_their_slots(server):
    """Half-open connections: the peer vanished (no FIN ever arrives) or just never answers."""
    silent = [
        await asyncio.to_thread(handshake, server, f"/api/v1/channels/halfopen-1?clientId=silent{index}", rcvbuf=4096)
        for index in range(3)
    ]
    assert connections(server, "halfopen-1") == 3
    # The channel is full while they hold their slots...
    async with websockets.connect(f"{server.ws}/api/v1/channels/halfopen-1?clientId=late") as late:
        assert (await recv_json(late))["error"] == "channel_full"
    # ...until daphne's pings go unanswered for ping-interval + ping-timeout seconds.
    freed_after = await wait_until(
        lambda: connections(server, "halfopen-1") == 0, within=PING_INTERVAL + PING_TIMEOUT + 8
    )
    for sock in silent:
        sock.close()
    assert freed_after < PING_INTERVAL + PING_TIMEOUT + 8
    async with websockets.connect(f"{server.ws}/api/v1/channels/halfopen-1?clientId=silent0"):
        pass


async def test_unfinished_handshakes_do_not_block_the_service(server):
    """Clients that open TCP connections and never finish the HTTP request (slowloris)."""
    held = []
    for index in range(100):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(f"GET /api/v1/channels/halfopen-1?clientId=slow{index} HTTP/1.1\r\nUpgrade: web".encode())
        held.append(sock)
    try:
        started = time.monotonic()
        async with websockets.connect(f"{server.ws}/api/v1/channels/halfopen-1?clientId=normal") as ws:
            await ws.ping()
        assert time.monotonic() - started < 2
        assert await asyncio.to_thread(lambda: httpx.get(f"{server.http}/healthz", timeout=5).status_code) == 200
    finally:
        for sock in held:
            sock.close()


async def test_many_clients_that_never_read_are_cut_off_and_resume_everything(server):
    """10 WebSockets and 10 event streams stop reading while 400 messages of 16 KiB flow: each is cut
    off (counted), the reader is not slowed, and each resumes from its last position with nothing lost."""
    # Enough to overflow the kernel's socket buffers as well as max_pending_bytes (1 MiB).
    count, size = 400, 16 * 1024
    stalled_ws = [
        await asyncio.to_thread(handshake, server, f"/api/v1/channels/stalled-1?clientId=sw{index}", rcvbuf=4096)
        for index in range(10)
    ]
    stalled_sse = []
    for index in range(10):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        request = f"GET /api/v1/channels/stalled-feed-1?clientId=ss{index} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}"
        sock.sendall(request.encode() + b"\r\n\r\n")
        stalled_sse.append(sock)
    await wait_until(lambda: connections(server, "stalled-feed-1") == 10)
    metrics_before = (await asyncio.to_thread(httpx.get, f"{server.http}/metrics")).text
    async with (
        websockets.connect(f"{server.ws}/api/v1/channels/stalled-1?clientId=reader") as reader,
        websockets.connect(f"{server.ws}/api/v1/channels/stalled-1?clientId=writer") as writer,
        httpx.AsyncClient(base_url=server.http, headers=AUTH) as api,
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
        await wait_until(lambda: connections(server, "stalled-1") == 2)
        await wait_until(lambda: connections(server, "stalled-feed-1") == 0)
        metrics_after = (await asyncio.to_thread(httpx.get, f"{server.http}/metrics")).text

        def slow_cut(text: str) -> float:
            return float(
                next(line.split()[-1] for line in text.splitlines() if line.startswith("realtime_slow_consumer"))
            )

        assert slow_cut(metrics_after) - slow_cut(metrics_before) == 20
        # Resume: the last 50 messages (800 KiB, within max_pending_bytes as docs/protocol.md asks of a
        # replay) arrive in order, once, on both transports.
        tail = received[-50]
        since = f"{tail['epoch']}-{tail['offset'] - 1}"
        replay, attempts = await resume_websocket(server, "stalled-1", "sw0", 50, since=since)
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


async def test_a_client_far_behind_catches_up_by_resuming(server):
    async with httpx.AsyncClient(base_url=server.http, headers=AUTH) as api:
        for _ in range(100):
            response = await api.post("/api/v1/channels/stalled-1/messages", json={"payload": "z" * 16 * 1024})
            assert response.status_code == 201
    # 100 x 16 KiB is over max_pending_bytes (1 MiB): the replay is paced to the client, in one go.
    received, attempts = await resume_websocket(server, "stalled-1", "far-behind", 100, attempts=5)
    assert len(received) == 100
    assert attempts == 1


async def test_an_event_stream_far_behind_catches_up_by_resuming(server):
    async with httpx.AsyncClient(base_url=server.http, headers=AUTH, timeout=30) as api:
        for index in range(100):
            payload = f"{index:05d}" + "z" * 16 * 1024
            response = await api.post("/api/v1/channels/stalled-feed-1/messages", json={"payload": payload})
            assert response.status_code == 201
        # 100 x 16 KiB is over max_pending_bytes (1 MiB): the replay is paced to the stream, in one go.
        payloads, attempts = await resume_stream(api, "stalled-feed-1", "feed-far-behind", 100, attempts=5)
    assert payloads == [f"{index:05d}" for index in range(100)]
    assert attempts == 1


async def test_a_resuming_client_that_never_reads_is_still_cut_off(server):
    """Its paced replay waits for it, but live messages held meanwhile have their own bound."""
    async with httpx.AsyncClient(base_url=server.http, headers=AUTH) as api:
        # 4.8 MiB of history: more than the kernel's socket buffers absorb.
        for _ in range(300):
            response = await api.post("/api/v1/channels/stalled-1/messages", json={"payload": "h" * 16 * 1024})
            assert response.status_code == 201
        before = connections(server, "stalled-1")
        metrics_before = (await api.get("/metrics")).text
        rss_before = resident_kib(server.process.pid)
        sock = await asyncio.to_thread(
            handshake, server, "/api/v1/channels/stalled-1?clientId=never-reads&since=0", rcvbuf=4096
        )
        await wait_until(lambda: connections(server, "stalled-1") == before + 1)
        started = time.monotonic()
        # 1.25 MiB of live messages while its replay waits for it: over max_pending_bytes (1 MiB).
        for _ in range(80):
            response = await api.post("/api/v1/channels/stalled-1/messages", json={"payload": "l" * 16 * 1024})
            assert response.status_code == 201
        await wait_until(lambda: connections(server, "stalled-1") == before)
        cut_after = time.monotonic() - started
        metrics_after = (await api.get("/metrics")).text
    rss_after = resident_kib(server.process.pid)
    sock.close()

    def slow_cut(text: str) -> float:
        return float(next(line.split()[-1] for line in text.splitlines() if line.startswith("realtime_slow_consumer")))

    print(f"never-reading resume: cut off after {cut_after:.2f} s; RSS {rss_before} -> {rss_after} KiB")
    assert slow_cut(metrics_after) - slow_cut(metrics_before) == 1
    assert rss_after - rss_before < 50_000
