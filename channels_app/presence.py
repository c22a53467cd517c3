"""Connection slots: ``max_of_channel_connections`` and the one-connection-per-clientId rule.

``MemoryPresence`` serves the MEMORY driver, where this process holds every connection.
A slot is taken before a connection is accepted and released when it ends for any reason,
so refused, closed and crashed connections never keep one.
"""

from __future__ import annotations

from .errors import channel_full, client_id_taken
from .registry import ChannelInfo


class MemoryPresence:
    """Live connections per channel, counted in this process."""

    def __init__(self):
        self._clients: dict[str, set[str]] = {}

    async def acquire(self, channel: ChannelInfo, client_id: str) -> None:
        """Take a slot for ``client_id``; refuse when the channel is full or the id is connected."""
        clients = self._clients.setdefault(channel.id, set())
        if client_id in clients:
            raise client_id_taken(channel.id, client_id)
        if len(clients) >= channel.max_connections:
            raise channel_full(channel.id, channel.max_connections)
        clients.add(client_id)

    async def release(self, channel_id: str, client_id: str) -> None:
        """Give the slot back; releasing twice is harmless."""
        clients = self._clients.get(channel_id)
        if clients is None:
            return
        clients.discard(client_id)
        if not clients:
            del self._clients[channel_id]

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
