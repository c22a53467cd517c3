"""Reads of the channel registry with live connection counts."""

from __future__ import annotations

from ..channel import ChannelInfo
from .runtime import Runtime


def channel_as_dict(channel: ChannelInfo, connections: int) -> dict:
    """The API's description of a channel."""
    return {
        "id": channel.id,
        "name": channel.name,
        "type": channel.type,
        "connections": connections,
        "max": channel.max_connections,
        "maxOfChannelConnections": channel.max_connections,
        "historySize": channel.history_size,
        "historyTtl": channel.history_ttl,
        "private": channel.private,
        "source": channel.source,
    }


async def channel_list(*, runtime: Runtime) -> list[dict]:
    """Every active channel with its live connection count."""
    channels = await runtime.registry.all()
    counts = await runtime.presence.counts([channel.id for channel in channels])
    return [channel_as_dict(channel, counts.get(channel.id, 0)) for channel in channels]


async def channel_get(*, reference: str, runtime: Runtime) -> dict:
    """One active channel (by id or name) with its live connection count."""
    channel = await runtime.registry.resolve(reference)
    return channel_as_dict(channel, await runtime.presence.count(channel.id))
