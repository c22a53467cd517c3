"""The server probes see through middleware that wraps ``send``, under daphne and under uvicorn; the
close reply waits for the connection's release under both."""

import asyncio
import functools
import logging
import subprocess
import sys
from types import SimpleNamespace

import pytest
import uvicorn
import websockets

from channels_app.adapters import servers as transport
from channels_app.adapters.application_queue import ApplicationQueue
from channels_app.adapters.servers import (
    CLOSE_FRAME_EVENT,
    asgi_close_code_allowed,
    connection_aborter,
    hold_close_reply,
    websocket_close_frame_sender,
    write_buffer_watch,
)
from channels_app.adapters.uvicorn_ws import WebSocketProtocol
from channels_app.http.security import SecurityHeadersMiddleware
from tests.support.liveserver import UVICORN_OPTIONS
from tests.support.processes import ROOT, free_port
from tests.support.waiting import wait_until


def _daphne_like_send():
    transport = SimpleNamespace(dataBuffer=b"x" * 100, offset=40, _tempDataLen=7, abortConnection=lambda: None)

    async def handle_reply(protocol, message):
        return None

    return functools.partial(handle_reply, SimpleNamespace(transport=transport)), transport


class _BufferingTransport(asyncio.WriteTransport):
    """An asyncio transport holding ``buffered`` unsent bytes, as uvicorn's connections have."""

    def __init__(self, buffered: int):
        super().__init__()
        self.buffered = buffered
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def abort(self) -> None:
        self.aborted = True


class _UvicornLikeProtocol:
    """uvicorn hands its protocol's (WebSocket) or request cycle's (HTTP) bound ``send`` to the application."""

    def __init__(self, transport):
        self.transport = transport

    async def send(self, message):
        return None


async def _seen_through_middleware(send) -> dict:
    seen = {}

    async def application(scope, receive, wrapped_send):
        seen["probe"] = write_buffer_watch(wrapped_send)[0]
        seen["abort"] = connection_aborter(wrapped_send)
        seen["close_frame"] = websocket_close_frame_sender(wrapped_send)

    await SecurityHeadersMiddleware(application)({"type": "http"}, None, send)
    return seen


async def test_probes_reach_the_server_through_the_security_headers_middleware():
    send, transport = _daphne_like_send()
    seen = await _seen_through_middleware(send)
    assert seen["probe"]() == 100 - 40 + 7
    assert seen["abort"] is transport.abortConnection


async def test_probes_reach_uvicorns_asyncio_transport_through_the_middleware():
    transport = _BufferingTransport(buffered=70_000)
    seen = await _seen_through_middleware(_UvicornLikeProtocol(transport).send)
    assert seen["probe"]() == 70_000
    transport.buffered = 12
    assert seen["probe"]() == 12, "read at each call, not once"
    seen["abort"]()
    assert transport.aborted
    # uvicorn passes every close code on from websocket.close: no frame-level close is needed.
    assert seen["close_frame"] is None


def test_a_bound_send_without_an_asyncio_transport_is_unknown():
    protocol = _UvicornLikeProtocol(SimpleNamespace(get_write_buffer_size=lambda: 5))
    assert write_buffer_watch(protocol.send)[0]() == 0
    assert connection_aborter(protocol.send) is None


def test_unknown_servers_report_nothing_buffered():
    async def plain_send(message):
        return None

    assert write_buffer_watch(plain_send)[0]() == 0
    assert connection_aborter(plain_send) is None
    assert websocket_close_frame_sender(plain_send) is None


def test_close_codes_daphne_passes_on():
    assert asgi_close_code_allowed(1000) and asgi_close_code_allowed(4408)
    assert not asgi_close_code_allowed(1003) and not asgi_close_code_allowed(1009)


async def test_uvicorn_abort_resets_the_connection_and_drops_what_the_client_did_not_read():
    accepted: asyncio.Future = asyncio.get_running_loop().create_future()

    async def on_connect(reader, writer):
        accepted.set_result(writer)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, client_writer = await asyncio.open_connection("127.0.0.1", port)
    writer = await accepted
    writer.write(b"x" * 1_000_000)  # more than the client reads before the abort
    abort = connection_aborter(_UvicornLikeProtocol(writer.transport).send)
    abort()
    # A reset, not an orderly close: the client gets an error, not the megabyte and then EOF.
    with pytest.raises(ConnectionResetError):
        while await asyncio.wait_for(reader.read(65536), 5):
            pass
    client_writer.close()
    server.close()
    await server.wait_closed()


def test_one_object_per_daphne_connection_serves_the_probe_and_the_drain_wait():
    send, transport = _daphne_like_send()
    transport.producerPaused = False
    probe, drained = write_buffer_watch(send)
    assert probe() == 100 - 40 + 7
    assert probe.__self__ is drained.__self__


def test_only_daphne_needs_a_drain_wait():
    assert write_buffer_watch(_UvicornLikeProtocol(_BufferingTransport(buffered=0)).send)[1] is None
    send, _ = _daphne_like_send()  # a Twisted transport without producer support
    assert write_buffer_watch(send)[1] is None


# --------------------------------------------------------------------------------------------
# hold_close_reply: the client's close frame is answered once the connection is released
# --------------------------------------------------------------------------------------------


def test_uvicorn_loads_the_protocol_named_on_its_command_line():
    config = uvicorn.Config(lambda scope, receive, send: None, ws=UVICORN_OPTIONS[UVICORN_OPTIONS.index("--ws") + 1])
    config.load()
    assert config.ws_protocol_class is WebSocketProtocol


async def _application(queue, taken: list) -> None:
    """An application reading its events as the consumers do: a close frame's event runs its release."""
    while True:
        event = await queue.get()
        taken.append(event["type"])
        if event["type"] == CLOSE_FRAME_EVENT:
            await event["release"]()
            event["released"].set_result(None)


def _daphne_connection():
    """A daphne WebSocket protocol, open, whose original close-frame handling is recorded, with an
    application reading its queue (``protocol.application_task``, its events in ``protocol.taken``)."""
    from daphne.ws_protocol import WebSocketProtocol as DaphneProtocol

    protocol = DaphneProtocol()
    protocol.state = protocol.STATE_OPEN
    protocol.application_queue = ApplicationQueue()
    protocol.taken = []
    protocol.application_task = asyncio.ensure_future(_application(protocol.application_queue, protocol.taken))
    replies = []
    protocol.onCloseFrame = lambda code, reason: replies.append((code, reason))

    async def handle_reply(protocol, message):
        return None

    return functools.partial(handle_reply, protocol), protocol, replies


async def test_daphne_answers_a_close_frame_once_the_release_is_done():
    send, protocol, replies = _daphne_connection()
    released = asyncio.Event()

    async def release():
        await asyncio.sleep(0.05)
        released.set()

    assert hold_close_reply(send, release)
    # A frame the client sent before its close frame is taken by the application before the release.
    protocol.application_queue.put_nowait({"type": "websocket.receive", "text": "last words"})
    assert protocol.onCloseFrame(1000, b"bye") is None  # autobahn goes on reading
    assert replies == [] and not released.is_set()
    await released.wait()
    await asyncio.sleep(0)
    assert replies == [(1000, b"bye")]
    assert protocol.taken == ["websocket.receive", CLOSE_FRAME_EVENT]
    protocol.application_task.cancel()


async def test_daphne_answers_at_once_when_it_started_the_close_and_after_the_hold_when_the_release_hangs(
    monkeypatch,
):
    send, protocol, replies = _daphne_connection()
    hold_close_reply(send, asyncio.Event().wait)
    protocol.state = protocol.STATE_CLOSING  # the server's close frame went first: this is the answer
    protocol.onCloseFrame(1000, None)
    assert replies == [(1000, None)]

    protocol.application_task.cancel()

    monkeypatch.setattr(transport, "CLOSE_REPLY_HOLD_SECONDS", 0.05)
    send, protocol, replies = _daphne_connection()
    hold_close_reply(send, asyncio.Event().wait)
    protocol.onCloseFrame(4000, None)
    await wait_until(lambda: replies == [(4000, None)], within=2)
    protocol.application_task.cancel()


async def test_uvicorn_answers_a_close_frame_once_the_release_is_done_or_when_it_shuts_down():
    releases: list[asyncio.Event] = []

    async def application(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        release = asyncio.Event()
        releases.append(release)
        hold_close_reply(send, release.wait)
        while (event := await receive())["type"] != "websocket.disconnect":
            if event["type"] == CLOSE_FRAME_EVENT:
                await event["release"]()
                event["released"].set_result(None)

    port = free_port()
    config = uvicorn.Config(application, host="127.0.0.1", port=port, ws=WebSocketProtocol, lifespan="off")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, no event
            await asyncio.sleep(0.02)
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/")
        closing = asyncio.create_task(ws.close())
        await asyncio.sleep(0.2)
        assert not closing.done(), "answered before the release"
        releases[0].set()
        await asyncio.wait_for(closing, 2)
        assert ws.close_code == 1000
        # A reply still held when uvicorn shuts down goes out at once.
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/")
        closing = asyncio.create_task(ws.close())
        await asyncio.sleep(0.1)
        assert not closing.done()
        server.should_exit = True
        await asyncio.wait_for(closing, 2)
        assert ws.close_code == 1000
    finally:
        server.should_exit = True
        for release in releases:
            release.set()  # the application waits for its release, as the consumers do
        await asyncio.wait_for(serving, 10)


def test_importing_the_transport_adapter_loads_no_uvicorn_module():
    """ops/shutdown.py tells the servers apart by whether uvicorn's modules are loaded: under daphne,
    importing them (as adapters/uvicorn_ws.py does) would install the wrong SIGTERM drain."""
    check = (
        "import sys, channels_app.adapters.servers; print(sorted(m for m in sys.modules if m.startswith('uvicorn')))"
    )
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_plain_websockets_sansio_cannot_hold_and_says_so_once(caplog):
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    transport._warn_once_without_hold.cache_clear()
    plain = object.__new__(WebSocketsSansIOProtocol)  # as uvicorn --ws websockets-sansio builds it
    assert not hold_close_reply(plain.send, asyncio.Event().wait)
    assert not hold_close_reply(plain.send, asyncio.Event().wait)
    warnings = [
        record for record in caplog.records if "channels_app.adapters.uvicorn_ws:WebSocketProtocol" in record.message
    ]
    assert len(warnings) == 1
    ours = object.__new__(WebSocketProtocol)
    ours.queue = asyncio.Queue()
    assert hold_close_reply(ours.send, asyncio.Event().wait)
    assert ours.close_reply_hold is not None


async def test_close_frames_answered_before_their_release_are_warned_of_in_one_line_per_interval(caplog):
    """A burst of them is one warning at once and one with the rest at the end of the interval."""
    unheld = transport._UnheldReplies(interval=0.2)
    with caplog.at_level(logging.WARNING, logger="channels_app.adapters.servers"):
        for _ in range(1000):
            unheld.note()
        assert [record.getMessage() for record in caplog.records] == [
            "answered 1 WebSocket close frame(s) after 1.0s without their release; the releases follow"
        ]
        await asyncio.sleep(0.3)
    assert [record.getMessage()[:12] for record in caplog.records] == ["answered 1 W", "answered 999"]
