"""Under daphne, a write to a TCP connection with nothing buffered goes to the socket at once.

Twisted buffers every write and asks the reactor to watch the socket for writability; the next
loop turn sends it and stops watching. On asyncio's reactor that is two ``epoll_ctl`` calls and a
loop turn per write, for every ping, keep-alive and delivered message: most of an idle daphne's
CPU at 20,000 connections. When nothing is queued ahead, sending at once keeps the order and
drops that cost; whatever the socket does not take goes through Twisted's own buffer as before.
"""

from __future__ import annotations

import errno
import logging

from twisted.internet import tcp

logger = logging.getLogger(__name__)

_WOULD_BLOCK = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS})


def _nothing_buffered(transport) -> bool:
    return not transport._tempDataBuffer and transport.offset == len(transport.dataBuffer)


def eager(buffered_write):
    """``tcp.Server.write`` sending at once when nothing waits ahead, else ``buffered_write``."""

    def write(self, data):
        if type(data) is not bytes or not data or self.TLS or not self.connected or self._writeDisconnected:
            return buffered_write(self, data)
        if self._aborting or not _nothing_buffered(self):
            # An aborted connection sends nothing more: Twisted's buffer is dropped with it.
            return buffered_write(self, data)
        try:
            sent = self.socket.send(data)
        except OSError as exc:
            if exc.errno not in _WOULD_BLOCK:
                # Twisted's own write finds the connection lost on its next send and closes it.
                return buffered_write(self, data)
            sent = 0
        if sent < len(data):
            buffered_write(self, data[sent:])

    write.realtime_eager = True
    write.__wrapped__ = buffered_write
    return write


def install() -> None:
    """Make daphne's TCP connections send unbuffered writes at once (idempotent)."""
    if getattr(tcp.Server.write, "realtime_eager", False):
        return
    tcp.Server.write = eager(tcp.Server.write)
    logger.debug("Twisted TCP writes go to the socket at once when nothing is buffered")
