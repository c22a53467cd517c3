"""Reads of the channel registry with live connection counts: every read-only query of channels."""

from __future__ import annotations

import logging

from ..channel import DESCRIPTION, PREFLIGHT_DESCRIPTION, ChannelInfo
from ..models import Channel
from .runtime import Runtime

logger = logging.getLogger(__name__)


def channel_as_dict(channel: ChannelInfo, connections: int, *, preflight: bool = False) -> dict:
    """The API's description of a channel; the ``preflight`` answer (``?upgrade=0``) shows fewer fields."""
    keys = PREFLIGHT_DESCRIPTION if preflight else DESCRIPTION
    return {key: connections if field is None else getattr(channel, field.attr) for key, field in keys}


async def channels_with_counts(
    *, runtime: Runtime, after: str | None = None, limit: int | None = None
) -> list[tuple[ChannelInfo, int]]:
    """The active channels, ordered by name, with their live connection counts: those named after ``after``,
    at most ``limit`` of them (a page). Read from the database: the registry cache holds only channels in use."""
    rows = Channel.objects.filter(active=True).order_by("name")
    if after is not None:
        rows = rows.filter(name__gt=after)
    if limit is not None:
        rows = rows[:limit]
    channels = [ChannelInfo.from_model(row) async for row in rows]
    counts = await runtime.presence.counts([channel.id for channel in channels])
    return [(channel, counts.get(channel.id, 0)) for channel in channels]


async def channel_list(*, runtime: Runtime, after: str | None = None, limit: int | None = None) -> list[dict]:
    """The active channels' descriptions with their live connection counts, a page at a time as
    ``channels_with_counts`` reads them."""
    page = await channels_with_counts(runtime=runtime, after=after, limit=limit)
    return [channel_as_dict(channel, count) for channel, count in page]


async def channels_by_local_connections(
    *, runtime: Runtime, limit: int | None = None
) -> tuple[list[tuple[str, ChannelInfo | None, dict[str, int]]], dict[str, int]]:
    """``(channel id, its channel, {transport: subscriptions})`` for the ``limit`` busiest channels with
    subscriptions on this instance (all without a limit), the busiest first, and the subscriptions of the
    rest summed per transport. The channel is None when the registry no longer has it (or cannot be read)."""
    busiest, others = runtime.hub.busiest_local(limit)
    try:
        # Only these channels: they have subscribers here, so they are cached and this asks nothing of
        # the database, whatever the number of channels in the registry.
        channels = await runtime.registry.find(channel_id for channel_id, _ in busiest)
    except Exception:
        # Metrics still count connections while the database is down; they are labelled by id then.
        logger.warning("could not read the channel registry; channels are labelled by id")
        channels = {}
    return [(channel_id, channels.get(channel_id), counts) for channel_id, counts in busiest], others
