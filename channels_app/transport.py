"""What the ASGI server below ``send`` lets us see and do, where ASGI itself has no word for it.

daphne hands each application ``functools.partial(server.handle_reply, protocol)`` as ``send``;
from the protocol we read its Twisted transport's write buffer and reach WebSocket close codes
that daphne's ``websocket.close`` refuses. Under other servers these helpers report "unknown"
and callers fall back to plain ASGI.
"""

from __future__ import annotations

import functools
from collections.abc import Callable


def _protocol(send):
    # Middleware that wraps ``send`` exposes the wrapped callable as ``__wrapped__``.
    while not isinstance(send, functools.partial) and getattr(send, "__wrapped__", None) is not None:
        send = send.__wrapped__
    if not isinstance(send, functools.partial) or not send.args:
        return None
    return send.args[0]


def write_buffer_probe(send) -> Callable[[], int]:
    """A callable returning the bytes queued in the server below ``send``, or 0 when unknown.

    ASGI gives no backpressure signal: daphne's ``send`` returns at once and Twisted buffers
    without bound, so a client that stops reading would grow the server's memory forever. Under
    servers whose ``send`` waits for the socket (uvicorn) the per-connection outbox fills instead.
    """
    transport = getattr(_protocol(send), "transport", None)
    if transport is None or not hasattr(transport, "_tempDataLen"):
        return _unknown

    def buffered() -> int:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen

    return buffered


def asgi_close_code_allowed(code: int) -> bool:
    """Whether daphne passes ``code`` on from a ``websocket.close``.

    daphne closes through autobahn's ``sendClose``, which raises for anything but 1000 and
    3000-4999, so 1003 (unsupported data) and 1009 (message too big) never reach the client.
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
    return abort


def _unknown() -> int:
    return 0
