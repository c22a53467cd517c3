"""A channel as the realtime path sees it: its identity, transport, limits and history settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """What the realtime path needs to know about a channel, detached from the ORM."""

    id: str
    name: str
    type: str
    max_connections: int
    history_size: int
    history_ttl: int
    private: bool = False
    source: str = "admin"
    # The registry row's primary key: a channel deleted and created again under the same id is
    # another incarnation, whose history starts over in a new epoch.
    incarnation: int = 0

    @classmethod
    def from_model(cls, channel) -> ChannelInfo:
        """Copy the fields of a ``Channel`` row."""
        return cls(
            id=channel.public_id,
            name=channel.name,
            type=channel.type,
            max_connections=channel.max_connections,
            history_size=channel.history_size,
            history_ttl=channel.history_ttl,
            private=channel.private,
            source=channel.source,
            incarnation=channel.pk,
        )
