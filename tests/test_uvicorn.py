"""What depends on the server when uvicorn (``REALTIME_SERVER=uvicorn``) serves the project.

The endpoint tests (test_ws_endpoint.py, test_sse_endpoint.py) run under both servers, and
test_deploy.py starts ``scripts/entrypoint.sh`` under both; this file covers what uvicorn does
differently: how ``channels_app/adapters/servers.py`` finds its connections, backpressure on a client that
never reads, its own message limit, SIGTERM beside uvicorn's signal handling, and the setting.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import subprocess

import httpx
import pytest
import uvicorn
import websockets

from channels_app.adapters.servers import (
    connection_aborter,
    websocket_close_frame_sender,
    write_buffer_watch,
)
from channels_app.adapters.uvicorn_ws import WebSocketProtocol
from channels_app.http.security import SecurityHeadersMiddleware
from tests.support.clients import connections
from tests.support.configs import memory_config
from tests.support.liveserver import UVICORN_OPTIONS
from tests.support.processes import ROOT, base_environment, free_port, resident_kib
from tests.support.waiting import wait_until
from tests.support.wire import handshake
from tests.test_ws_endpoint import SLOW_CONFIG

LARGE_CONFIG = (
    memory_config(max_message_size=1572864)
    + """
  large: {id: "large-1", type: "WS"}
"""
)

CLOSE_OPCODE = 0x8


# --------------------------------------------------------------------------------------------
# adapters/servers.py sees uvicorn's connections
# --------------------------------------------------------------------------------------------


async def test_transport_helpers_find_uvicorns_websocket_and_http_connections():
    """A real in-process uvicorn: the helpers reach its asyncio transport through our middleware."""
    seen: dict[str, tuple] = {}

    async def application(scope, receive, send):
        probe, abort = write_buffer_watch(send)[0], connection_aborter(send)
        seen[scope["type"]] = (probe(), abort is not None, websocket_close_frame_sender(send))
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
        elif scope["type"] == "http":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    port = free_port()
    config = uvicorn.Config(
        SecurityHeadersMiddleware(application),
        host="127.0.0.1",
        port=port,
        ws=WebSocketProtocol,
        lifespan="off",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, no event
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/")).status_code == 204
        async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
            await ws.wait_closed()
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
    # Nothing buffered on an idle connection, but known (an int from the transport), abortable,
    # and no frame-level close: uvicorn passes every close code on from websocket.close.
    assert seen == {"http": (0, True, None), "websocket": (0, True, None)}


# --------------------------------------------------------------------------------------------
# A WebSocket client that never reads
# --------------------------------------------------------------------------------------------


def _stalled_websocket(server, path: str) -> socket.socket:
    """A WebSocket client that completes the handshake and then does not read."""
    return handshake(server, path, rcvbuf=4096)


def _read_until_close_frame(sock: socket.socket, within: float = 20) -> list[tuple[int, bytes]]:
    """Every (opcode, payload) the server sent, up to and including its close frame."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # reading 4 KiB at a time takes minutes
    sock.settimeout(within)
    data, frames, offset = b"", [], 0
    while True:
        chunk = sock.recv(1 << 20)
        assert chunk, f"connection ended before a close frame, after {len(frames)} frames"
        data += chunk
        while True:
            if len(data) - offset < 2:
                break
            opcode, length, start = data[offset] & 0x0F, data[offset + 1] & 0x7F, offset + 2
            if length == 126:
                (length,), start = struct.unpack_from(">H", data, start), start + 2
            elif length == 127:
                (length,), start = struct.unpack_from(">Q", data, start), start + 8
            if len(data) < start + length:
                break
            frames.append((opcode, data[start : start + length]))
            offset = start + length
            if opcode == CLOSE_OPCODE:
                return frames


async def _flood(server, count: int, size: int) -> None:
    async with websockets.connect(server.channel_url("slow-1", clientId="publisher"), compression=None) as publisher:
        for index in range(count):
            await publisher.send(f"{index:05d}" + "x" * size)
        # The publisher is a subscriber too: still counted until it leaves.
        await wait_until(lambda: connections(server, "slow-1") == 1, message="the stalled client kept its slot")


async def test_client_that_never_reads_is_cut_off_with_4408_and_memory_stays_bounded(start_server):
    server = start_server(SLOW_CONFIG, server="uvicorn")
    stalled = await asyncio.to_thread(_stalled_websocket, server, "/api/v1/channels/slow-1?clientId=stalled")
    try:
        before = resident_kib(server.process.pid)
        count, size = 1500, 16 * 1024  # 24 MiB for a client that reads none of it
        await asyncio.wait_for(_flood(server, count, size), 60)
        grown = resident_kib(server.process.pid) - before
        # Held for the stalled client: its outbox (max_pending_bytes, 64 KiB) and uvicorn's
        # transport buffer (64 KiB high-water mark); the kernel holds a few MiB more.
        assert grown < 8 * 1024, f"the server grew by {grown} KiB for a client that does not read"

        # When it reads at last: what was buffered, then our close frame and the close code 4408.
        frames = await asyncio.to_thread(_read_until_close_frame, stalled)
    finally:
        stalled.close()
    messages = [json.loads(payload) for opcode, payload in frames[:-2]]
    body, (close_opcode, close_payload) = json.loads(frames[-2][1]), frames[-1]
    assert [m["payload"][:5] for m in messages] == [f"{i:05d}" for i in range(len(messages))]
    assert len(messages) < count / 4, "cut off long before the end"
    assert body["code"] == 4408 and body["error"] == "slow_consumer"
    assert close_opcode == CLOSE_OPCODE and struct.unpack(">H", close_payload[:2])[0] == 4408


def _server_side_connections(port: int, client_port: int) -> int:
    """Sockets of the server on ``port`` still connected to ``client_port`` (any TCP state)."""
    result = subprocess.run(
        ["ss", "-Htn", "state", "all", f"( sport = :{port} and dport = :{client_port} )"],
        capture_output=True,
        text=True,
        check=True,
    )
    return len(result.stdout.splitlines())


@pytest.mark.parametrize("asgi_server", ["daphne", "uvicorn"])
async def test_connection_of_a_client_that_never_reads_is_dropped_after_the_cut_off(start_server, asgi_server):
    server = start_server(SLOW_CONFIG, server=asgi_server)
    stalled = await asyncio.to_thread(_stalled_websocket, server, "/api/v1/channels/slow-1?clientId=stalled")
    client_port = stalled.getsockname()[1]
    try:
        await asyncio.wait_for(_flood(server, 400, 16 * 1024), 60)
        # The kernel and the server keep nothing for it: its socket is gone within a few seconds.
        await wait_until(
            lambda: _server_side_connections(server.port, client_port) == 0,
            within=8,
            message="the server still holds the connection of a client that was cut off",
        )
    finally:
        stalled.close()


# --------------------------------------------------------------------------------------------
# Message limits
# --------------------------------------------------------------------------------------------


async def _close_after_sending(url: str, text: str) -> tuple[dict | None, int | None]:
    """Send one frame; the last JSON frame before the close and the close code (each None if none came)."""
    body = None
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        # A server that drops the connection may do so while the frame is still being sent.
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.send(text)
            while True:
                body = json.loads(await asyncio.wait_for(ws.recv(), 10))
    return body, closed.value.rcvd.code if closed.value.rcvd else None


async def test_uvicorns_limit_follows_max_message_size_so_our_close_still_answers(start_server):
    server = start_server(LARGE_CONFIG, server="uvicorn")
    limit = 1572864  # above daphne's and uvicorn's 1 MiB: the entry point raises uvicorn's to 3 MiB
    body, code = await _close_after_sending(server.channel_url("large-1", clientId="big"), "x" * (limit + 1))
    assert code == 1009
    assert body["error"] == "payload_too_large" and body["limit"] == limit
    async with (
        websockets.connect(server.channel_url("large-1", clientId="sender"), max_size=None) as sender,
        websockets.connect(server.channel_url("large-1", clientId="receiver"), max_size=None) as receiver,
    ):
        await sender.send("y" * limit)
        assert len(json.loads(await asyncio.wait_for(receiver.recv(), 10))["payload"]) == limit


@pytest.mark.parametrize(("asgi_server", "close_code"), [("daphne", None), ("uvicorn", 1009)])
async def test_a_frame_over_the_servers_own_limit_is_refused_by_the_server(any_server, close_code):
    """Past 1 MiB (with the default max_message_size) the server refuses the frame before our check, without our
    JSON body: uvicorn closes with 1009, daphne drops the connection without a close frame (1006 for the client)."""
    body, code = await _close_after_sending(any_server.channel_url("chat-1", clientId="huge"), "x" * (2 << 20))
    assert code == close_code
    assert body is None


# --------------------------------------------------------------------------------------------
# The setting
# --------------------------------------------------------------------------------------------


def test_entrypoint_gives_uvicorn_the_options_the_tests_run_it_with():
    script = (ROOT / "scripts" / "entrypoint.sh").read_text()
    command = script[script.index("exec uvicorn ") :].split("\nfi\n")[0].replace("\\\n", " ")
    words = command.split()
    for option, value in zip(UVICORN_OPTIONS[::2], UVICORN_OPTIONS[1::2], strict=True):
        # The backlog is REALTIME_LISTEN_BACKLOG (default 2048, what the tests run with).
        expected = '"$backlog"' if option == "--backlog" else value
        assert words[words.index(option) + 1] == expected, option
    assert '--ws-max-size "${limits% *}"' in command and '--timeout-graceful-shutdown "${limits#* }"' in command


@pytest.mark.parametrize("script", ["scripts/entrypoint.sh", "scripts/run.sh"])
def test_an_unknown_server_is_refused_with_status_2(script, tmp_path):
    env = base_environment(REALTIME_SERVER="hypercorn", PORT=str(free_port()))
    result = subprocess.run(
        ["bash" if script.endswith("run.sh") else "sh", str(ROOT / script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "REALTIME_SERVER=hypercorn" in result.stderr
    assert "REALTIME_SERVER=daphne" in result.stderr and "REALTIME_SERVER=uvicorn" in result.stderr
