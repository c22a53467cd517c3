"""What the ASGI server below ``send`` lets us see and do, where ASGI itself has no word for it.

daphne hands each application ``functools.partial(server.handle_reply, protocol)`` as ``send``;
from the protocol we read its Twisted transport's write buffer and reach WebSocket close codes
that daphne's ``websocket.close`` refuses. uvicorn hands a bound method of the connection's
protocol (``--ws channels_app.adapters.uvicorn_ws:WebSocketProtocol``) or request cycle (HTTP), whose
``transport`` is an asyncio transport: we read its write buffer and can abort it. Under other
servers these helpers report "unknown" and callers fall back to plain ASGI.

ASGI also has no word for "answer the client's close frame only once I am done": both servers
answer it at once (autobahn's ``onCloseFrame`` under daphne, uvicorn's ``handle_close``), so a
client that reconnects the moment its close completes could find its clientId still taken.
``hold_close_reply`` defers that answer until the application has released the connection, which
it does in turn, after the frames the client sent before its close frame (they are published).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

# The longest a client's close frame waits for its connection's release before it is answered
# anyway: a release is a Redis round trip or less (well under 10 ms) once the frames before the
# close are taken, so this bounds a stuck Redis or a long run of frames; the release follows.
CLOSE_REPLY_HOLD_SECONDS = 1.0
# The ASGI event a held close frame queues behind the client's frames: ``{"type", "release",
# "released"}``; the application awaits ``release()``, then resolves the future ``released``.
CLOSE_FRAME_EVENT = "realtime.close_frame"


def _unwrap(send):
    # Middleware that wraps ``send`` exposes the wrapped callable as ``__wrapped__``.
    while not _is_server_send(send) and getattr(send, "__wrapped__", None) is not None:
        send = send.__wrapped__
    return send


def _is_server_send(send) -> bool:
    return isinstance(send, functools.partial) or getattr(send, "__self__", None) is not None


def _protocol(send):
    """daphne's Twisted protocol below ``send``, or None."""
    send = _unwrap(send)
    if not isinstance(send, functools.partial) or not send.args:
        return None
    return send.args[0]


def _asyncio_transport(send) -> asyncio.WriteTransport | None:
    """The asyncio transport of the connection below ``send`` (uvicorn), or None."""
    owner = getattr(_unwrap(send), "__self__", None)
    transport = getattr(owner, "transport", None)
    return transport if isinstance(transport, asyncio.WriteTransport) else None


def write_buffer_watch(send) -> tuple[Callable[[], int], Callable[[], Awaitable[None]] | None]:
    """``(bytes buffered, wait for drain)`` for the connection below ``send``: one object serves both.

    The first returns the bytes queued in the server, or 0 when unknown. ASGI gives no
    backpressure signal: daphne's ``send`` returns at once and Twisted buffers without bound, so a
    client that stops reading would grow the server's memory forever. uvicorn's ``send`` waits
    while its transport is above the high-water mark (64 KiB), so the per-connection outbox
    fills; counting the transport's bytes too cuts the client off by the same byte bound under
    both servers.

    The second returns once daphne's write buffer has drained (at once when it holds at most
    64 KiB); it is None under servers whose ``send`` itself waits for the socket.
    """
    transport = getattr(_protocol(send), "transport", None)
    if transport is not None and hasattr(transport, "_tempDataLen"):
        buffer = _TwistedWriteBuffer(transport)
        return buffer.buffered, (buffer.drained if hasattr(transport, "producerPaused") else None)
    asyncio_transport = _asyncio_transport(send)
    if asyncio_transport is not None:
        return asyncio_transport.get_write_buffer_size, None
    return _unknown, None


def asgi_close_code_allowed(code: int) -> bool:
    """Whether daphne passes ``code`` on from a ``websocket.close``.

    daphne closes through autobahn's ``sendClose``, which raises for anything but 1000 and
    3000-4999, so 1003 (unsupported data) and 1009 (message too big) never reach the client.
    uvicorn passes every valid code on; for it ``websocket_close_frame_sender`` returns None, so
    callers use ``websocket.close`` whatever this answers.
    """
    return code == 1000 or 3000 <= code <= 4999


def websocket_close_frame_sender(send) -> Callable[[int], None] | None:
    """A callable that sends a WebSocket close frame with any code under daphne; None elsewhere."""
    protocol = _protocol(send)
    send_close_frame = getattr(protocol, "sendCloseFrame", None)
    if send_close_frame is None:
        return None

    def close(code: int) -> None:
        send_close_frame(code=code, isReply=False)

    return close


def connection_aborter(send) -> Callable[[], None] | None:
    """A callable that drops the TCP connection below ``send`` at once, discarding unsent data; None if unknown."""
    transport = getattr(_protocol(send), "transport", None)
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        return abort
    asyncio_transport = _asyncio_transport(send)
    if asyncio_transport is None:
        return None

    def reset() -> None:
        # asyncio's abort() closes the socket normally: the kernel would keep the megabytes the
        # client did not read and go on sending them. A zero linger makes the close a reset, as
        # Twisted's abortConnection does, so the kernel drops them too.
        sock = asyncio_transport.get_extra_info("socket")
        if sock is not None and sock.fileno() != -1:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        asyncio_transport.abort()

    return reset


def is_send_on_closed_websocket(error: Exception) -> bool:
    """Whether ``error``, raised by a WebSocket send, is daphne's (autobahn's ``Disconnected``) for a
    connection whose closing handshake has begun: the connection is going, like an ``OSError``."""
    autobahn = sys.modules.get("autobahn.exception")
    return autobahn is not None and isinstance(error, autobahn.Disconnected)


def hold_close_reply(send, release: Callable[[], Awaitable[None]]) -> bool:
    """Have the server below ``send`` answer the client's close frame only once ``release()`` is done.

    When the client's close frame arrives on the open connection, a ``CLOSE_FRAME_EVENT`` is queued
    for the application behind the frames before it; the application handles it by calling
    ``release`` (once). The reply close frame follows when that is done, or after
    ``CLOSE_REPLY_HOLD_SECONDS``. Closes the server starts, and connections that drop, are not
    held. Returns False under a server that cannot hold it (the release then runs on
    ``websocket.disconnect``, after the reply).
    """
    protocol = _protocol(send)
    if protocol is not None and hasattr(protocol, "onCloseFrame") and hasattr(protocol, "STATE_OPEN"):
        _DaphneCloseHold(protocol, _release_in_turn(protocol.application_queue, release))
        return True
    owner = getattr(_unwrap(send), "__self__", None)
    if hasattr(owner, "close_reply_hold"):
        # channels_app.adapters.uvicorn_ws.WebSocketProtocol
        owner.close_reply_hold = _release_in_turn(owner.queue, release)
        return True
    # Not imported here: under daphne, uvicorn's modules in sys.modules would mean "uvicorn serves".
    sansio = sys.modules.get("uvicorn.protocols.websockets.websockets_sansio_impl")
    if sansio is not None and isinstance(owner, sansio.WebSocketsSansIOProtocol):
        _warn_once_without_hold()
    return False


def _release_in_turn(queue, release: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """``release`` run by the application itself once it has taken every frame the client sent before
    its close frame, which the server has queued for it already: a ``CLOSE_FRAME_EVENT`` queued
    behind them carries it, and the future returned is resolved when it has run."""

    def queued() -> Awaitable[None]:
        released = asyncio.get_running_loop().create_future()
        queue.put_nowait({"type": CLOSE_FRAME_EVENT, "release": release, "released": released})
        return released

    return queued


class _DaphneCloseHold:
    """Stands in for autobahn's ``onCloseFrame`` on one daphne connection (an instance attribute,
    so other connections are untouched): a close frame arriving while the connection is open is
    answered by the original method once the release is done."""

    __slots__ = ("original", "protocol", "release")

    def __init__(self, protocol, release: Callable[[], Awaitable[None]]):
        self.protocol = protocol
        self.original = protocol.onCloseFrame
        self.release = release
        protocol.onCloseFrame = self.on_close_frame

    def on_close_frame(self, code, reason_raw):
        """autobahn's close-frame callback: hold the reply of a close the client started."""
        protocol = self.protocol
        # One close frame is held at most; the instance attribute goes and the class method is back.
        del protocol.onCloseFrame
        if protocol.state != protocol.STATE_OPEN:
            return self.original(code, reason_raw)
        # While held the connection stays OPEN for autobahn, so frames the client sends after its close
        # frame (RFC 6455 allows none) are dropped here: a ping would otherwise be answered with a pong.
        protocol.processData = functools.partial(_drop_frames_after_close, protocol)
        reply_after(self.release, functools.partial(self._reply, code, reason_raw))
        return None

    def _reply(self, code, reason_raw) -> None:
        del self.protocol.processData
        self.original(code, reason_raw)


def _drop_frames_after_close(protocol) -> bool:
    """autobahn's ``processData`` while a client's close frame waits for its reply: drop what follows."""
    protocol.data = b""
    return False


class _UnheldReplies:
    """The warning for close frames answered before their release, at most once per ``interval``
    with the number since the last one: when every client of a busy process closes at once,
    thousands of releases wait their turn past ``CLOSE_REPLY_HOLD_SECONDS``, and one line each would
    flood the log."""

    __slots__ = ("flush_timer", "interval", "last", "unreported")

    def __init__(self, interval: float = 10.0):
        self.interval = interval
        self.last = float("-inf")
        self.unreported = 0
        self.flush_timer: asyncio.TimerHandle | None = None

    def note(self) -> None:
        """Count one: warn now, or at the end of the interval if a warning was just given."""
        self.unreported += 1
        wait = self.last + self.interval - time.monotonic()
        if wait <= 0:
            self.flush()
        elif self.flush_timer is None:
            self.flush_timer = asyncio.get_running_loop().call_later(wait, self.flush)

    def flush(self) -> None:
        """Warn of the close frames not reported yet, if any."""
        self.flush_timer = None
        if not self.unreported:
            return
        logger.warning(
            "answered %d WebSocket close frame(s) after %ss without their release; the releases follow",
            self.unreported,
            CLOSE_REPLY_HOLD_SECONDS,
        )
        self.last, self.unreported = time.monotonic(), 0


# Per process, as the log is: only what the warning above has not reported yet.
UNHELD_REPLIES = _UnheldReplies()


class HeldReply:
    """Sends a held close reply once: when the release is done or when the hold times out."""

    __slots__ = ("reply", "timer")

    def __init__(self, reply: Callable[[], object]):
        self.reply: Callable[[], object] | None = reply
        self.timer: asyncio.TimerHandle | None = None

    def released(self, done: asyncio.Future) -> None:
        """The release is done (or failed): reply."""
        if not done.cancelled():
            # The application's own wait for the release reports a failure; this one only sends.
            done.exception()
        self.send()

    def timed_out(self) -> None:
        """The release takes too long: reply anyway."""
        UNHELD_REPLIES.note()
        self.timer = None
        self.send()

    def send(self) -> None:
        """Reply now, unless that was done already."""
        reply, self.reply = self.reply, None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if reply is not None:
            reply()


def reply_after(release: Callable[[], Awaitable[None]], reply: Callable[[], object]) -> HeldReply:
    """Start ``release()`` and call ``reply()`` once, when it is done or after ``CLOSE_REPLY_HOLD_SECONDS``."""
    held = HeldReply(reply)
    held.timer = asyncio.get_running_loop().call_later(CLOSE_REPLY_HOLD_SECONDS, held.timed_out)
    asyncio.ensure_future(release()).add_done_callback(held.released)
    return held


@functools.cache
def _warn_once_without_hold() -> None:
    logger.warning(
        "uvicorn runs without --ws channels_app.adapters.uvicorn_ws:WebSocketProtocol: a client that reconnects "
        "the moment its close completes may find its clientId still taken (4409)"
    )


def _unknown() -> int:
    return 0


class _DrainSignal:
    """Stands in for the push producer registered on a Twisted transport (daphne's HTTPChannel,
    still registered after the WebSocket upgrade), forwarding to it, to learn when the transport's
    write buffer is empty: Twisted calls ``resumeProducing`` then, once it had called
    ``pauseProducing`` for a buffer over its ``bufferSize`` (64 KiB)."""

    __slots__ = ("producer", "waiter")

    def __init__(self, producer):
        self.producer = producer
        self.waiter: asyncio.Future | None = None

    def pauseProducing(self) -> None:
        if self.producer is not None:
            self.producer.pauseProducing()

    def resumeProducing(self) -> None:
        if self.producer is not None:
            self.producer.resumeProducing()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def stopProducing(self) -> None:
        if self.producer is not None:
            self.producer.stopProducing()


class _TwistedWriteBuffer:
    """What a Twisted transport buffers, and a wait for it to drain.

    A small object with slots rather than closures: one exists per connection, and its bound
    methods cost less memory than a function with its cells.
    """

    __slots__ = ("signal", "transport")

    def __init__(self, transport):
        self.transport = transport
        self.signal: _DrainSignal | None = None

    def buffered(self) -> int:
        """Bytes written to the transport and not yet sent."""
        transport = self.transport
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen

    async def drained(self) -> None:
        """Return once the transport's buffer has drained below Twisted's mark."""
        transport, signal = self.transport, self.signal
        if signal is None:
            # Installed on first use only: connections that never page a replay are untouched.
            signal = self.signal = _DrainSignal(transport.producer)
            if transport.producer is None:
                transport.registerProducer(signal, True)
            else:
                transport.producer = signal
        if transport.producerPaused and not transport.disconnected:
            waiter = signal.waiter = asyncio.get_running_loop().create_future()
            await waiter
