"""One connection's subscription: ordering, de-duplication, catch-up from history, bounded output.

A connection first registers with the hub while *holding* live messages, then replays what it
missed from history, then releases the held live messages it has not already seen. Each message
reaches the connection exactly once and in offset order, whichever path brought it.

A replay larger than half the outgoing bound is queued in pages, each when the outbox has drained
the previous one (``Outbox.request_page``), so a client far behind catches up at its own pace. Held live
messages have their own bound (the outbox's): a client that stops reading is still cut off.
"""

from __future__ import annotations

from collections.abc import Callable

from ..messages import Message, Position
from ..state.history import Gap, Replay
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
        "_held_bytes",
        "_last_offset",
        "_replay_index",
        "_replaying",
        "channel_id",
        "client_id",
        "echo",
        "encode",
        "encode_control",
        "holder",
        "info",
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
        holder: str = "",
        info: dict | None = None,
    ):
        self.channel_id = channel_id
        # The connection's hold on its slot (state/presence.py): the hub closes it by this when replaced.
        self.holder = holder
        # What the on_connect hooks said about the subscriber (channels_app/hooks.py), for presence.
        self.info = info
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
        self._held_bytes = 0
        # The replay still to be queued, and the index of its next message.
        self._replaying: list[Message] = []
        self._replay_index = 0

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
            self._hold(message, frame, size)
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
        if replay is not None:
            if position is not None and (replay.gap is None or replay.gap.reason == "expired"):
                self._held = self._resume_at(position, self._held or [])
            if replay.gap is not None:
                self.send_control(replay.gap.as_wire())
            self._replaying, self._replay_index = replay.messages, 0
            self._queue_page()
        else:
            self._go_live()

    def _queue_page(self) -> None:
        """Queue the next page of the replay (the outbox's writer asks for the ones after it)."""
        messages, index, outbox = self._replaying, self._replay_index, self.outbox
        while index < len(messages):
            message = messages[index]
            if self.wants(message):
                frame, size = self.encode(message)
                # A page ends at half the bound; an empty outbox always takes one message.
                if not outbox.has_room(size) and not outbox.is_empty():
                    break
                self._remember(message)
                if not outbox.put(frame, size):
                    return  # cut off as slow: the rest would be dropped anyway
            index += 1
        self._replay_index = index
        if index < len(messages):
            outbox.request_page(self._queue_page)
        else:
            self._go_live()

    def stop(self) -> None:
        """Queue nothing more (a multiplexed connection unsubscribed while the outbox lives on)."""
        self.outbox.cancel_pages(self._queue_page)
        self._replaying, self._held, self._held_bytes = [], None, 0

    def _go_live(self) -> None:
        held, self._held, self._held_bytes = self._held or [], None, 0
        self._replaying = []
        for message, frame, size in held:
            self.offer(message, frame, size)

    def _hold(self, message: Message, frame, size: int) -> None:
        outbox = self.outbox
        if outbox.overflowed:
            return
        self._held.append((message, frame, size))
        self._held_bytes += size
        if len(self._held) > outbox.max_messages or self._held_bytes > outbox.max_bytes:
            # Live traffic outgrew the bound while the client was still catching up.
            self._held.clear()
            outbox.overflow()

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
