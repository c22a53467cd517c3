"""The server probes see through middleware that wraps ``send``, under daphne and under uvicorn."""

import asyncio
import functools
from types import SimpleNamespace

import pytest

from channels_app.security import SecurityHeadersMiddleware
from channels_app.transport import (
    asgi_close_code_allowed,
    connection_aborter,
    websocket_close_frame_sender,
    write_buffer_watch,
)


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
