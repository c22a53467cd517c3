"""uvicorn's WebSocket protocol for this service: ``uvicorn --ws channels_app.adapters.uvicorn_ws:WebSocketProtocol``.

uvicorn's ``websockets-sansio`` implementation, except that a client's close frame is answered
only once the application has released the connection (``transport.hold_close_reply``), and that
the keep-alive pings and their pong deadlines (``--ws-ping-interval``, ``--ws-ping-timeout``) are
kept in one wheel for the process (core/timewheel.py) instead of two timers per connection. A module of
its own because importing uvicorn's modules is what tells ``ops/shutdown.py`` that uvicorn serves: only
uvicorn imports this one (its ``--ws`` option loads the class by name).
"""

from __future__ import annotations

import functools
import random
import struct
from collections.abc import Awaitable, Callable

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from ..core.timewheel import TimingWheel
from .servers import HeldReply, reply_after


def _keepalive_due(protocol: WebSocketProtocol) -> None:
    protocol.keepalive_due()


# Every connection's next ping or pong deadline in this process (one event loop per uvicorn process).
KEEPALIVES = TimingWheel(_keepalive_due)


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol, answering a client's close frame once the
    application has released the connection."""

    # Set by transport.hold_close_reply once the application holds a slot.
    close_reply_hold: Callable[[], Awaitable[None]] | None = None
    held_reply: HeldReply | None = None
    # This connection's place in KEEPALIVES, and whether what is due there is a pong's deadline.
    wheel_slot: set | None = None
    awaiting_pong = False

    def handle_close(self, event) -> None:
        """Like uvicorn's, but a held close frame is answered (and ``websocket.disconnect`` queued)
        only after the release: neither can the application end, nor uvicorn close the transport, first."""
        release, self.close_reply_hold = self.close_reply_hold, None
        if release is None or self.close_sent or self.transport.is_closing():
            super().handle_close(event)
            return
        # websockets has the reply ready in its output buffer; no ping may follow it meanwhile.
        self.stop_keepalive()
        self.held_reply = reply_after(release, functools.partial(WebSocketsSansIOProtocol.handle_close, self, event))

    def shutdown(self) -> None:
        """uvicorn's, except that a held reply is sent at once (websockets refuses a second close frame)."""
        held = self.held_reply
        if held is not None and held.reply is not None:
            held.send()
            return
        super().shutdown()

    def schedule_ping(self) -> None:
        """uvicorn's: the next ping one interval (less the last round trip) from now, in the wheel."""
        self.awaiting_pong = False
        KEEPALIVES.schedule(self, max(0.0, self.ping_interval - self.last_ping_rtt))

    def keepalive_due(self) -> None:
        """The wheel's call: send the next ping, or fail the connection whose pong did not come in time."""
        if self.awaiting_pong:
            self.awaiting_pong = False
            self.keepalive_timeout()
        else:
            self.send_keepalive_ping()

    def send_keepalive_ping(self) -> None:
        """uvicorn's, with the pong deadline in the wheel."""
        if self.close_sent or self.transport.is_closing():
            return
        # A random payload tells this ping's pong from stale or unsolicited ones (handle_pong).
        self.pending_ping_payload = struct.pack("!I", random.getrandbits(32))
        self.ping_sent_at = self.loop.time()
        self.conn.send_ping(self.pending_ping_payload)
        self.transport.write(b"".join(self.conn.data_to_send()))
        if self.ping_timeout is not None:
            self.awaiting_pong = True
            KEEPALIVES.schedule(self, self.ping_timeout)
        else:
            self.schedule_ping()

    def handle_pong(self, event) -> None:
        """uvicorn's: the pong of the ping in flight lifts its deadline and sets the next ping."""
        if self.pending_ping_payload is None or bytes(event.data) != self.pending_ping_payload:
            return
        self.last_ping_rtt = self.loop.time() - self.ping_sent_at
        self.pending_ping_payload = None
        if self.awaiting_pong:
            self.schedule_ping()

    def stop_keepalive(self) -> None:
        """uvicorn's, and the connection leaves the wheel."""
        KEEPALIVES.cancel(self)
        self.awaiting_pong = False
        super().stop_keepalive()
