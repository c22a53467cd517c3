"""Per-channel message history: stamping, recent messages and resume.

``MemoryHistory`` serves the MEMORY driver (one instance). Each incarnation of a channel's history
(a channel's first publish in this process, or after the channel was deleted and created again)
draws its own epoch, so a position from lost history, from a deleted channel or from another
channel is recognised as foreign and answered with a gap. A Redis implementation with the same
interface serves the REDIS driver.
"""

from __future__ import annotations

import heapq
import itertools
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..channel import ChannelInfo
from ..errors import ApplicationError
from ..messages import TEXT, Message, Position, utc_timestamp
from .idempotency import IdempotencyKey, MemoryReceipts


@dataclass(frozen=True)
class Gap:
    """Messages the client asked for that history can no longer supply."""

    reason: str  # "expired", "epoch_changed" or "unknown_position"
    requested: str
    earliest: str | None  # position of the oldest message still held, if any

    def as_wire(self) -> dict:
        """The control frame / SSE event body telling a client about the gap."""
        return {
            "control": "gap",
            "reason": self.reason,
            "requested": self.requested,
            "earliest": self.earliest,
            "message": "Some messages since the requested position are no longer in history; "
            "the messages that follow are the oldest still available.",
        }


@dataclass(frozen=True)
class Replay:
    """What a resuming client receives before live messages: the missed messages, and any gap."""

    messages: list[Message]
    gap: Gap | None = None


@dataclass(frozen=True, slots=True)
class Draft:
    """A message to record: its id, payload (and its kind) and publisher, and the key that makes its
    publish idempotent."""

    payload: str
    client_id: str
    idempotency: IdempotencyKey | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    payload_kind: str = TEXT


@dataclass(frozen=True, slots=True)
class Replayed:
    """A draft whose ``Idempotency-Key`` was already used for the same message: the message recorded then."""

    message: Message


# What ``append_many`` makes of each draft: a new message, an earlier one, or a refusal (a key reused).
Recorded = Message | Replayed | ApplicationError


@dataclass(slots=True)
class _ChannelLog:
    epoch: str
    incarnation: int
    next_offset: int = 1
    # Oldest first; the empty tuple while none is held (an empty deque costs 624 B, at every channel).
    entries: deque[Message] | tuple[()] = ()
    # The channel's history_ttl at its last append, and whether its oldest entry is in the expiry heap.
    ttl: float = 0.0
    expiry_scheduled: bool = False


# Logs whose oldest message expired, trimmed per append: twice the rate logs enter the heap, so
# the sweep keeps up, while one append never pays for a long quiet spell at once.
EXPIRED_LOGS_PER_APPEND = 2


def replay_after(position: Position, *, held: list[Message], epoch: str | None, head: int) -> Replay:
    """What a client resuming at ``position`` receives, given the messages a history still holds
    (oldest first), its epoch (None before its first message) and its newest offset."""
    earliest = held[0].position if held else None
    if position.message_id is not None:
        for index, message in enumerate(held):
            if message.id == position.message_id:
                return Replay(held[index + 1 :])
        return Replay(held, Gap("unknown_position", str(position), earliest))
    if position.epoch is not None and position.epoch != epoch:
        return Replay(held, Gap("epoch_changed", str(position), earliest))
    after = position.offset or 0
    if after > head:
        # A position from the future can only come from another incarnation of this history.
        return Replay(held, Gap("epoch_changed", str(position), earliest))
    missed = [message for message in held if message.offset > after]
    first_held = held[0].offset if held else head + 1
    if after + 1 < first_held:
        return Replay(missed, Gap("expired", str(position), earliest))
    return Replay(missed)


def new_epoch() -> str:
    """A short random token naming one incarnation of a history."""
    return secrets.token_hex(4)


class MemoryHistory:
    """History held in this process; the state of the MEMORY driver's single instance."""

    def __init__(
        self, *, epochs: Callable[[], str] = new_epoch, clock=time.time, receipts: MemoryReceipts | None = None
    ):
        self._epochs = epochs
        self._logs: dict[str, _ChannelLog] = {}
        self._clock = clock
        self._receipts = receipts or MemoryReceipts()
        # (when the oldest message of a log expires, tie-breaker, channel id, log): a channel that is
        # published to once and never read again gives its expired messages back too.
        self._expiries: list[tuple[float, int, str, _ChannelLog]] = []
        self._ties = itertools.count()

    async def append(self, channel: ChannelInfo, *, payload: str, client_id: str, payload_kind: str = TEXT) -> Message:
        """Stamp a new message (id, time, offset) and keep it in the channel's history."""
        (message,) = await self.append_many(channel, [Draft(payload, client_id, payload_kind=payload_kind)])
        return message

    async def append_many(self, channel: ChannelInfo, drafts: Sequence[Draft]) -> list[Recorded]:
        """Stamp a run of drafts with consecutive offsets and keep them in the channel's history; a
        draft whose ``Idempotency-Key`` is known is not recorded again (``Replayed``)."""
        log = self._log(channel)
        now = self._clock()
        created_at = utc_timestamp()
        recorded: list[Recorded] = []
        messages = []
        for draft in drafts:
            earlier = self._receipts.lookup(channel, log.epoch, draft.idempotency)
            if earlier is not None:
                recorded.append(earlier if isinstance(earlier, ApplicationError) else Replayed(earlier))
                continue
            message = Message(
                id=draft.id,
                channel_id=channel.id,
                client_id=draft.client_id,
                payload=draft.payload,
                created_at=created_at,
                offset=log.next_offset,
                epoch=log.epoch,
                published_at=now,
                payload_kind=draft.payload_kind,
            )
            log.next_offset += 1
            messages.append(message)
            recorded.append(message)
            self._receipts.remember(channel, log.epoch, draft.idempotency, message)
        if channel.history_size > 0 and messages:
            if log.entries:
                log.entries.extend(messages)
            else:
                log.entries = deque(messages)
        self._trim(log, channel, now)
        log.ttl = channel.history_ttl
        self._schedule_expiry(channel.id, log)
        self._expire_some(now)
        return recorded

    def kept(self) -> int:
        """Messages held across every channel's history."""
        return sum(len(log.entries) for log in self._logs.values())

    def _schedule_expiry(self, channel_id: str, log: _ChannelLog) -> None:
        if log.entries and not log.expiry_scheduled:
            log.expiry_scheduled = True
            expires_at = log.entries[0].published_at + log.ttl
            heapq.heappush(self._expiries, (expires_at, next(self._ties), channel_id, log))

    def _expire_some(self, now: float) -> None:
        expiries = self._expiries
        for _ in range(EXPIRED_LOGS_PER_APPEND):
            if not expiries or expiries[0][0] > now:
                return
            _, _, channel_id, log = heapq.heappop(expiries)
            log.expiry_scheduled = False
            if self._logs.get(channel_id) is not log:
                continue  # the channel was deleted (and perhaps created again) meanwhile
            _drop_older(log, now - log.ttl)
            self._schedule_expiry(channel_id, log)

    async def since(self, channel: ChannelInfo, position: Position) -> Replay:
        """Messages after ``position``, oldest first, with a ``Gap`` when some are gone."""
        log = self._current_log(channel)
        if log is None:
            return replay_after(position, held=[], epoch=None, head=0)
        self._trim(log, channel, self._clock())
        return replay_after(position, held=list(log.entries), epoch=log.epoch, head=log.next_offset - 1)

    async def between(self, channel: ChannelInfo, first: int, last: int) -> list[Message]:
        """Messages with ``first <= offset <= last`` still held (used to repair layer drops)."""
        log = self._current_log(channel)
        if log is None:
            return []
        return [m for m in log.entries if first <= m.offset <= last]

    async def find(self, channel: ChannelInfo, message_ids: Sequence[str]) -> list[Message]:
        """The messages with these ids still held, oldest first."""
        log = self._current_log(channel)
        wanted = set(message_ids)
        return [m for m in log.entries if m.id in wanted] if log is not None else []

    async def head(self, channel_id: str) -> int:
        """The offset of the newest message published on the channel (0 when none)."""
        log = self._logs.get(channel_id)
        return log.next_offset - 1 if log else 0

    async def current(self, channel: ChannelInfo) -> Position:
        """The channel's newest position: resuming there replays nothing (a bare ``0`` before any message)."""
        log = self._current_log(channel)
        if log is None or log.next_offset == 1:
            return Position(offset=0)
        return Position(epoch=log.epoch, offset=log.next_offset - 1)

    async def forget(self, channel_id: str) -> None:
        """Drop a deleted channel's history; its next publish starts a new epoch."""
        self._logs.pop(channel_id, None)

    def _log(self, channel: ChannelInfo) -> _ChannelLog:
        log = self._current_log(channel)
        if log is None:
            log = self._logs[channel.id] = _ChannelLog(epoch=self._epochs(), incarnation=channel.incarnation)
        return log

    def _current_log(self, channel: ChannelInfo) -> _ChannelLog | None:
        """The channel's log, unless it belongs to an earlier channel with the same id."""
        log = self._logs.get(channel.id)
        return log if log is not None and log.incarnation == channel.incarnation else None

    @staticmethod
    def _trim(log: _ChannelLog, channel: ChannelInfo, now: float) -> None:
        entries = log.entries
        while len(entries) > channel.history_size:
            entries.popleft()
        _drop_older(log, now - channel.history_ttl)


def _drop_older(log: _ChannelLog, oldest_allowed: float) -> None:
    """Drop the log's messages published before ``oldest_allowed``, and its deque once it is empty."""
    entries = log.entries
    while entries and entries[0].published_at < oldest_allowed:
        entries.popleft()
    if not entries:
        log.entries = ()
