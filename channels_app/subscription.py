"""One connection's subscription: ordering, de-duplication, catch-up from history, bounded output.

A connection first registers with the hub while *holding* live messages, then replays what it
missed from history, then releases the held live messages it has not already seen. Each message
reaches the connection exactly once and in offset order, whichever path brought it.
"""

from __future__ import annotations

from collections.abc import Callable

from .history import Gap, Replay
from .messages import Message, Position
from .outbox import Outbox


class Subscription:
    """The hub's handle on one local connection to one channel.

    ``encode`` turns a message into the transport's frame and its size; the hub calls it once per
    message for all subscriptions sharing the same encoder.
    """

    # One per connection: no per-instance __dict__.
    __slots__ = (
        "_epoch",
        "_held",
        "_last_offset",
        "channel_id",
        "client_id",
        "echo",
        "encode",
        "encode_control",
        "on_close",
        "outbox",
        "transport",
    )

    def __init__(
        self,
        *,
        channel_id: str,
        client_id: str,
        echo: bool,
        encode: Callable[[Message], tuple[object, int]],
        encode_control: Callable[[dict], tuple[object, int]],
        outbox: Outbox,
        on_close: Callable[[int, dict], None],
        transport: str = "WS",
    ):
        self.channel_id = channel_id
        self.transport = transport
        self.client_id = client_id
        self.echo = echo
        self.encode = encode
        self.encode_control = encode_control
        self.outbox = outbox
        self.on_close = on_close
        # The newest position this connection has (None: any epoch, for a bare ``since`` offset).
        self._epoch: str | None = None
        self._last_offset: int | None = None
        self._held: list[tuple[Message, object, int]] | None = []

    def wants(self, message: Message) -> bool:
        """False for the sender's own message (unless it asked for echo) and for repeats."""
        if message.client_id == self.client_id and not self.echo:
            return False
        if message.offset is None or self._last_offset is None:
            return True
        if self._epoch is not None and message.epoch != self._epoch:
            return True
        return message.offset > self._last_offset

    def offer(self, message: Message, frame, size: int) -> bool:
        """Queue an encoded live message (or hold it during a replay); False when not queued."""
        if self._held is not None:
            self._held.append((message, frame, size))
            return False
        if not self.wants(message):
            return False
        self._remember(message)
        return self.outbox.put(frame, size)

    def replay(self, replay: Replay | None, position: Position | None = None) -> None:
        """Send missed messages (and a gap notice), then release the live messages held meanwhile.

        ``position`` is where the client said it was. Live messages held during the replay may
        include ones it already has (published just before it reconnected, still on their way
        through the channel layer); those are dropped, not sent twice.
        """
        held, self._held = self._held or [], None
        if replay is not None:
            if position is not None and (replay.gap is None or replay.gap.reason == "expired"):
                held = self._resume_at(position, held)
            if replay.gap is not None:
                self.send_control(replay.gap.as_wire())
            for message in replay.messages:
                if self.wants(message):
                    self._remember(message)
                    frame, size = self.encode(message)
                    self.outbox.put(frame, size)
        for message, frame, size in held:
            self.offer(message, frame, size)

    def send_gap(self, gap: Gap) -> None:
        """Tell the client that messages were lost on the way to it."""
        self.send_control(gap.as_wire())

    def send_control(self, body: dict) -> None:
        """Queue a control frame (never held back by a replay)."""
        frame, size = self.encode_control(body)
        self.outbox.put(frame, size)

    def close(self, code: int, body: dict) -> None:
        """Ask the connection to close with ``code`` after telling the client why."""
        self.on_close(code, body)

    def _resume_at(self, position: Position, held: list) -> list:
        """Start after ``position`` (still valid in history); return the held messages not yet seen."""
        if position.offset is not None:
            self._epoch, self._last_offset = position.epoch, position.offset
            return held
        ids = [message.id for message, _, _ in held]
        if position.message_id in ids:
            return held[ids.index(position.message_id) + 1 :]
        return held

    def _remember(self, message: Message) -> None:
        if message.offset is not None:
            self._epoch = message.epoch
            self._last_offset = message.offset
