"""Keep-alives on idle connections under both servers, with short intervals: WebSocket pings go out on
time to every live client, a peer that never answers is dropped within interval + timeout and its
slot freed, and event streams get their comments at the configured pace.

The timing lives in one wheel per process (core/timewheel.py) under uvicorn and in daphne's checks as
adapters/daphne_checks.py narrows them; these tests hold both to the behaviour the intervals promise.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from tests.support.clients import connected, connections, open_stream, opened
from tests.support.configs import memory_config
from tests.support.liveserver import PING_INTERVAL, PING_TIMEOUT, SHORT_PINGS
from tests.support.waiting import wait_until
from tests.support.wire import handshake

KEEPALIVE_SECONDS = 0.4
CONFIG = (
    memory_config(sse_keepalive=KEEPALIVE_SECONDS)
    + """
  live: {id: "live-1", type: "WS"}
  silent: {id: "silent-1", type: "WS", max_of_channel_connections: 2}
  stream: {id: "stream-1", type: "SSE"}
"""
)
# The same short pings under uvicorn as SHORT_PINGS gives daphne (the later options win).
UVICORN_SHORT_PINGS = ("--ws-ping-interval", str(PING_INTERVAL), "--ws-ping-timeout", str(PING_TIMEOUT))
PING, PONG = 0x9, 0xA


@pytest.fixture(scope="module")
def server(start_module_server, asgi_server):
    short_pings = SHORT_PINGS if asgi_server == "daphne" else UVICORN_SHORT_PINGS
    return start_module_server(CONFIG, server=asgi_server, extra_args=list(short_pings))


def _masked_pong(payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    return bytes([0x80 | PONG, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _answer_pings_for(sock: socket.socket, seconds: float) -> list[float]:
    """Read for ``seconds``, answering every ping with its pong; the times the pings came (fails on a close)."""
    pings, buffer, ends = [], b"", time.monotonic() + seconds
    while (left := ends - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        assert chunk, "the server dropped a client that answers its pings"
        buffer += chunk
        while len(buffer) >= 2 and len(buffer) >= 2 + (buffer[1] & 0x7F):
            opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
            payload, buffer = buffer[2 : 2 + length], buffer[2 + length :]
            assert opcode != 0x8, f"the server closed a client that answers its pings: {payload[:2].hex()}"
            if opcode == PING:
                pings.append(time.monotonic())
                sock.sendall(_masked_pong(payload))
    return pings


async def test_a_client_that_answers_gets_a_ping_every_interval_and_stays(server):
    sock = await asyncio.to_thread(handshake, server, "/api/v1/channels/live-1?clientId=answers")
    try:
        # Long enough for a missed pong to have closed it twice over.
        watched = 2 * (PING_INTERVAL + PING_TIMEOUT) + 1
        pings = await asyncio.to_thread(_answer_pings_for, sock, watched)
        assert await connected(server, "live-1") == 1
    finally:
        sock.close()
    # One per interval, late by at most a tick of the server's checks (daphne: 2 s; the wheel: 1 s).
    assert len(pings) >= watched / (PING_INTERVAL + 2) - 1
    gaps = [later - earlier for earlier, later in zip(pings, pings[1:], strict=False)]
    assert all(PING_INTERVAL * 0.5 <= gap <= PING_INTERVAL + 2.5 for gap in gaps), gaps


async def test_a_peer_that_never_answers_is_dropped_and_frees_its_slot(server):
    silent = [
        await asyncio.to_thread(handshake, server, f"/api/v1/channels/silent-1?clientId=silent{index}", rcvbuf=4096)
        for index in range(2)
    ]
    try:
        assert await connected(server, "silent-1") == 2
        started = time.monotonic()
        await wait_until(lambda: connections(server, "silent-1") == 0, within=PING_INTERVAL + PING_TIMEOUT + 8)
        # Not before a ping went unanswered for the whole timeout.
        assert time.monotonic() - started >= PING_TIMEOUT - 0.5
    finally:
        for sock in silent:
            sock.close()


async def test_event_streams_get_keepalive_comments_at_the_configured_pace(server):
    async with open_stream(server.channel_url("stream-1", scheme="http", clientId="quiet")) as (_, events):
        await opened(events)
        arrivals = []
        for _ in range(4):
            block = await events.block(within=KEEPALIVE_SECONDS + 2)
            assert block == {"comments": ["keep-alive"]}
            arrivals.append(time.monotonic())
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:], strict=False)]
    # Never early (the wheel's tick is a fifth of the interval), never more than a tick or so late.
    assert all(KEEPALIVE_SECONDS * 0.7 <= gap <= KEEPALIVE_SECONDS * 2 + 0.3 for gap in gaps), gaps
