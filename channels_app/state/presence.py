"""Connection slots: ``max_of_channel_connections`` and the one-connection-per-clientId rule.

``MemoryPresence`` serves the MEMORY driver, where this process holds every connection.
A slot is taken before a connection is accepted and released when it ends for any reason,
so refused, closed and crashed connections never keep one.

Each slot carries its connection's *holder* token. With ``server.duplicate_client_id: replace`` a
new connection takes the slot of a live one with the same clientId and is told the old holder;
a release removes a slot only while it still carries the releasing connection's token, so the
late release of a replaced connection never frees its successor's slot.
"""

from __future__ import annotations

import secrets

from ..channel import ChannelInfo
from ..errors import channel_full, client_id_taken


def new_holder() -> str:
    """A token naming one connection's hold on its slot."""
    return secrets.token_hex(8)


class MemoryPresence:
    """Live connections per channel, counted in this process."""

    def __init__(self):
        # channel id -> clientId -> holder
        self._clients: dict[str, dict[str, str]] = {}

    async def acquire(self, channel: ChannelInfo, client_id: str, holder: str, *, replace: bool = False) -> str | None:
        """Take a slot for ``client_id``; refuse when the channel is full or the id is connected,
        unless ``replace``: then take the id's slot and return the holder it had."""
        clients = self._clients.setdefault(channel.id, {})
        previous = clients.get(client_id)
        if previous is not None and not replace:
            raise client_id_taken(channel.id, client_id)
        if previous is None and len(clients) >= channel.max_connections:
            raise channel_full(channel.id, channel.max_connections)
        clients[client_id] = holder
        return previous

    async def release(self, channel_id: str, client_id: str, holder: str) -> None:
        """Give the slot back if ``holder`` still has it; releasing twice is harmless."""
        clients = self._clients.get(channel_id)
        if clients is None or clients.get(client_id) != holder:
            return
        del clients[client_id]
        if not clients:
            del self._clients[channel_id]

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
