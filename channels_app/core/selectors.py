"""Reads of the channel registry with live connection counts: every read-only query of channels."""

from __future__ import annotations

from ..channel import DESCRIPTION, PREFLIGHT_DESCRIPTION, ChannelInfo
from .runtime import Runtime


def channel_as_dict(channel: ChannelInfo, connections: int, *, preflight: bool = False) -> dict:
    """The API's description of a channel; the ``preflight`` answer (``?upgrade=0``) shows fewer fields."""
    keys = PREFLIGHT_DESCRIPTION if preflight else DESCRIPTION
    return {key: connections if field is None else getattr(channel, field.attr) for key, field in keys}


async def channels_with_counts(*, runtime: Runtime) -> list[tuple[ChannelInfo, int]]:
    """Every active channel, ordered by name, with its live connection count."""
    channels = await runtime.registry.all()
    counts = await runtime.presence.counts([channel.id for channel in channels])
    return [(channel, counts.get(channel.id, 0)) for channel in channels]


async def channel_list(*, runtime: Runtime) -> list[dict]:
    """Every active channel's description, with its live connection count."""
    return [channel_as_dict(channel, count) for channel, count in await channels_with_counts(runtime=runtime)]
