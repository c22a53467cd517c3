"""The interfaces of the state stores: each has a memory implementation (the MEMORY driver's single
instance) and a Redis one (shared by every instance), held to one contract by the same tests
(``tests/test_history_contract.py``, ``tests/test_presence.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from ..channel import ChannelInfo
from ..messages import Message, Position
from .history import Draft, Recorded, Replay
from .presence import Member


class History(Protocol):
    """Each channel's recent messages: stamping (offsets, epoch), idempotency keys and resume."""

    async def append_many(self, channel: ChannelInfo, drafts: Sequence[Draft]) -> list[Recorded]:
        """Stamp and record a run of drafts, atomically; a draft whose key is known is not recorded again."""

    async def since(self, channel: ChannelInfo, position: Position) -> Replay:
        """Messages after ``position``, oldest first, with a ``Gap`` when some are gone."""

    async def between(self, channel: ChannelInfo, first: int, last: int) -> list[Message]:
        """Messages with ``first <= offset <= last`` still held."""

    async def find(self, channel: ChannelInfo, message_ids: Sequence[str]) -> list[Message]:
        """The messages with these ids still held, oldest first."""

    async def head(self, channel_id: str) -> int:
        """The offset of the newest message published on the channel (0 when none)."""

    async def current(self, channel: ChannelInfo) -> Position:
        """The channel's newest position: resuming there replays nothing (a bare ``0`` before any message)."""

    async def forget(self, channel_id: str) -> None:
        """Drop a deleted channel's history; its next publish starts a new epoch."""


class Presence(Protocol):
    """Connection slots: ``max_of_channel_connections`` and one connection per clientId."""

    # Called with a channel id and the members whose slots' leases ran out, when a sweep removes them.
    on_expired: Callable[[str, list[Member]], None] | None

    async def acquire(
        self, channel: ChannelInfo, client_id: str, holder: str, *, replace: bool = False, member: Member | None = None
    ) -> str | None:
        """Take a slot for ``client_id`` (or, with ``replace``, its live one, returning the old holder),
        keeping ``member`` (a presence channel's details of the connection) with it."""

    async def release(self, channel_id: str, client_id: str, holder: str) -> bool:
        """Give the slot (and its member) back if ``holder`` still has it; whether it did."""

    async def members(self, channel_id: str, *, after: str = "", limit: int) -> tuple[list[Member], bool]:
        """Live slots' members sorted by clientId, up to ``limit`` after ``after``, and whether more follow."""

    async def holds(self, channel_id: str, client_id: str, holder: str) -> bool:
        """Whether ``holder`` still has the slot of ``client_id``."""

    async def contains(self, channel_id: str, client_id: str) -> bool:
        """Whether ``client_id`` holds a slot on the channel."""

    async def count(self, channel_id: str) -> int:
        """Live connections on one channel."""

    async def counts(self, channel_ids: Iterable[str] | None = None) -> dict[str, int]:
        """Live connections per channel id, for channels with any."""
