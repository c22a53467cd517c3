"""uvicorn's WebSocket protocol for this service: ``uvicorn --ws channels_app.adapters.uvicorn_ws:WebSocketProtocol``.

uvicorn's ``websockets-sansio`` implementation, except that a client's close frame is answered
only once the application has released the connection (``transport.hold_close_reply``). A module of
its own because importing uvicorn's modules is what tells ``ops/shutdown.py`` that uvicorn serves: only
uvicorn imports this one (its ``--ws`` option loads the class by name).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from .servers import HeldReply, reply_after


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol, answering a client's close frame once the
    application has released the connection."""

    # Set by transport.hold_close_reply once the application holds a slot.
    close_reply_hold: Callable[[], Awaitable[None]] | None = None
    held_reply: HeldReply | None = None

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
