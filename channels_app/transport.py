"""How many bytes the server still holds for a connection, where the server lets us see it.

ASGI gives no backpressure signal: daphne's ``send`` returns at once and Twisted buffers
without bound, so a client that stops reading would grow the server's memory forever.
daphne hands each application ``functools.partial(server.handle_reply, protocol)`` as ``send``;
from the protocol we read its Twisted transport's write buffer. Under servers whose ``send``
waits for the socket (uvicorn) the per-connection outbox fills instead, and this probe reports 0.
"""

from __future__ import annotations

import functools
from collections.abc import Callable


def write_buffer_probe(send) -> Callable[[], int]:
    """A callable returning the bytes queued in the server below ``send``, or 0 when unknown."""
    if not isinstance(send, functools.partial) or not send.args:
        return _unknown
    transport = getattr(send.args[0], "transport", None)
    if transport is None or not hasattr(transport, "_tempDataLen"):
        return _unknown

    def buffered() -> int:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen

    return buffered


def _unknown() -> int:
    return 0
