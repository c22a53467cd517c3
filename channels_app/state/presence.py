"""Connection slots: ``max_of_channel_connections`` and the one-connection-per-clientId rule.

``MemoryPresence`` serves the MEMORY driver, where this process holds every connection.
A slot is taken before a connection is accepted and released when it ends for any reason,
so refused, closed and crashed connections never keep one.

Each slot carries its connection's *holder* token. With ``server.duplicate_client_id: replace`` a
new connection takes the slot of a live one with the same clientId and is told the old holder;
a release removes a slot only while it still carries the releasing connection's token, so the
late release of a replaced connection never frees its successor's slot.

On a channel with ``presence: true`` a slot also carries its ``Member``: the transport, when the
connection was made and what its token or ``on_connect`` hook said about it (``info``). It is kept
and removed with the slot, so a member leaves exactly when its slot does, lease expiry included.
"""

from __future__ import annotations

import bisect
import secrets
from dataclasses import dataclass
from typing import Any

from ..channel import ChannelInfo
from ..errors import channel_full, client_id_taken


def new_holder() -> str:
    """A token naming one connection's hold on its slot."""
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Member:
    """One connected client of a presence channel, as ``GET .../presence`` lists it."""

    client_id: str
    transport: str | None = None
    connected_at: str | None = None
    info: dict[str, Any] | None = None

    def as_wire(self) -> dict:
        """The member as the presence endpoint answers it."""
        return {
            "clientId": self.client_id,
            "transport": self.transport,
            "connectedAt": self.connected_at,
            "info": self.info,
        }


def page_after(client_ids, after: str, limit: int) -> tuple[list[str], bool]:
    """Up to ``limit`` of ``client_ids`` sorted, those after ``after``, and whether more follow."""
    ordered = sorted(client_ids)
    start = bisect.bisect_right(ordered, after) if after else 0
    page = ordered[start : start + limit]
    return page, start + limit < len(ordered)


class MemoryPresence:
    """Live connections per channel, counted in this process."""

    def __init__(self):
        # channel id -> clientId -> holder
        self._clients: dict[str, dict[str, str]] = {}
        # channel id -> clientId -> Member, for slots taken with one
        self._members: dict[str, dict[str, Member]] = {}
        # Slots here never expire (this process holds every connection), so this is never called.
        self.on_expired = None

    async def acquire(
        self, channel: ChannelInfo, client_id: str, holder: str, *, replace: bool = False, member: Member | None = None
    ) -> str | None:
        """Take a slot for ``client_id`` (with its ``member`` details); refuse when the channel is full or
        the id is connected, unless ``replace``: then take the id's slot and return the holder it had."""
        clients = self._clients.setdefault(channel.id, {})
        previous = clients.get(client_id)
        if previous is not None and not replace:
            raise client_id_taken(channel.id, client_id)
        if previous is None and len(clients) >= channel.max_connections:
            raise channel_full(channel.id, channel.max_connections)
        clients[client_id] = holder
        if member is not None:
            self._members.setdefault(channel.id, {})[client_id] = member
        else:
            self._forget_member(channel.id, client_id)
        return previous

    async def release(self, channel_id: str, client_id: str, holder: str) -> bool:
        """Give the slot back if ``holder`` still has it (True); releasing twice is harmless."""
        clients = self._clients.get(channel_id)
        if clients is None or clients.get(client_id) != holder:
            return False
        del clients[client_id]
        if not clients:
            del self._clients[channel_id]
        self._forget_member(channel_id, client_id)
        return True

    def _forget_member(self, channel_id: str, client_id: str) -> None:
        members = self._members.get(channel_id)
        if members is not None and members.pop(client_id, None) is not None and not members:
            del self._members[channel_id]

    async def members(self, channel_id: str, *, after: str = "", limit: int) -> tuple[list[Member], bool]:
        """Connected clients sorted by clientId, up to ``limit`` after ``after``, and whether more follow."""
        page, more = page_after(self._clients.get(channel_id, ()), after, limit)
        details = self._members.get(channel_id, {})
        return [details.get(client_id) or Member(client_id) for client_id in page], more

    async def holds(self, channel_id: str, client_id: str, holder: str) -> bool:
        """Whether ``holder`` still has the slot of ``client_id`` (it was not replaced)."""
        return self._clients.get(channel_id, {}).get(client_id) == holder

    async def contains(self, channel_id: str, client_id: str) -> bool:
        """Whether ``client_id`` holds a slot on the channel."""
        return client_id in self._clients.get(channel_id, ())

    async def count(self, channel_id: str) -> int:
        """Live connections on one channel."""
        return len(self._clients.get(channel_id, ()))

    async def counts(self, channel_ids=None) -> dict[str, int]:
        """Live connections per channel id (of ``channel_ids``, or every channel), for channels with any."""
        wanted = self._clients if channel_ids is None else set(channel_ids)
        return {channel_id: len(clients) for channel_id, clients in self._clients.items() if channel_id in wanted}
