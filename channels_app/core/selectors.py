"""Reads of the channel registry with live connection counts."""

from __future__ import annotations

from ..channel import DESCRIPTION, PREFLIGHT_DESCRIPTION, ChannelInfo
from .runtime import Runtime


def channel_as_dict(channel: ChannelInfo, connections: int, *, preflight: bool = False) -> dict:
    """The API's description of a channel; the ``preflight`` answer (``?upgrade=0``) shows fewer fields."""
    keys = PREFLIGHT_DESCRIPTION if preflight else DESCRIPTION
    return {key: connections if field is None else getattr(channel, field.attr) for key, field in keys}


async def channel_list(*, runtime: Runtime) -> list[dict]:
    """Every active channel with its live connection count."""
    channels = await runtime.registry.all()
    counts = await runtime.presence.counts([channel.id for channel in channels])
    return [channel_as_dict(channel, counts.get(channel.id, 0)) for channel in channels]


async def channel_get(*, reference: str, runtime: Runtime) -> dict:
    """One active channel (by id or name) with its live connection count."""
    channel = await runtime.registry.resolve(reference)
    return channel_as_dict(channel, await runtime.presence.count(channel.id))
