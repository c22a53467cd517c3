"""A multiplexed WebSocket subscriber for the load-client processes (bench/clients.py).

``MuxSubscriber`` opens ``/api/v1/connect``, sends one ``subscribe`` frame per channel named in
the URL's fragment (``ws://host/api/v1/connect?clientId=a#news,alerts``; a fragment is never sent
to the server) and counts as open only once every channel answered ``subscribed``. From then on
it is the raw subscriber: messages of every channel count in the same tally. Pass
``impl="bench.muxclient:MuxSubscriber"`` to the subscriber processes' ``connect`` command.
"""

from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import unquote, urlsplit

from .clients import RawSubscriber

logger = logging.getLogger(__name__)


class _Confirmations:
    """Stands in for the tally until every ``subscribe`` is answered; other frames pass through."""

    def __init__(self, subscriber: MuxSubscriber, tally):
        self.subscriber = subscriber
        self.tally = tally

    def on_frame(self, idx: int, data: bytes) -> None:
        if data.startswith(b'{"control"'):
            body = json.loads(data)
            control = body.get("control")
            if control == "subscribed":
                self.subscriber.confirmed()
                return
            if control == "connected":
                return
            if control == "error":
                self.subscriber.refused(body)
                return
        self.tally.on_frame(idx, data)


class MuxSubscriber(RawSubscriber):
    """A receive-only ``/api/v1/connect`` socket subscribed to the channels in its URL's fragment."""

    def __init__(self, tally, idx: int, url: str, local_host: str | None = None):
        self.channels = [unquote(part) for part in urlsplit(url).fragment.split(",") if part]
        super().__init__(tally, idx, url, local_host)
        self.waiting = len(self.channels)
        self.subscribed = asyncio.get_running_loop().create_future()
        if not self.waiting:
            self.subscribed.set_result(None)

    def accepts(self, head: bytes) -> bool:
        if not super().accepts(head):
            return False
        for ref, channel in enumerate(self.channels):
            frame = json.dumps({"subscribe": channel, "ref": ref}).encode()
            # RawSubscriber writes the one-byte length form only (short channel ids, as the benchmark's).
            if len(frame) > 125:
                raise ValueError(f"channel id too long for the benchmark's subscribe frame: {channel!r}")
            self._send(0x1, frame)
        return True

    def consume(self) -> None:
        if self.subscribed.done():
            super().consume()
            return
        real = self.tally
        self.tally = _Confirmations(self, real)
        try:
            super().consume()
        finally:
            self.tally = real

    def confirmed(self) -> None:
        """One ``subscribed`` answer arrived."""
        self.waiting -= 1
        if self.waiting == 0 and not self.subscribed.done():
            self.subscribed.set_result(None)

    def refused(self, body: dict) -> None:
        """A ``subscribe`` was refused: the connection fails to start."""
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError(f"subscribe refused: {body.get('error')} {body}"[:200]))

    async def start(self, within: float) -> None:
        """Open the socket, then wait until every channel is subscribed."""
        await super().start(within)
        await asyncio.wait_for(asyncio.shield(self.subscribed), within)
