"""The in-process channel registry cache.

Every connection and every message looks a channel up, so lookups are served from a cache of
the active channels loaded in one query. Saving or deleting a ``Channel`` in this process
invalidates it at once (``signals.py``); changes made by another process (``sync_channels``,
another instance's admin) are noticed by a cheap fingerprint query at most every
``REVALIDATE_SECONDS``, run off the hot path.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time

from channels.db import database_sync_to_async

from ..channel import ChannelInfo
from ..errors import channel_not_found

logger = logging.getLogger(__name__)

REVALIDATE_SECONDS = 2.0
# A lookup of an unknown channel reloads the cache (a channel created on another instance is
# usable here at once, even before its broadcast arrives), but at most once in this many seconds,
# so a flood of lookups for unknown channels costs at most one query a second.
MISS_RELOAD_SECONDS = 1.0


def _load_active_channels() -> tuple[list[ChannelInfo], tuple]:
    from ..models import Channel

    rows = list(Channel.objects.filter(active=True))
    return [ChannelInfo.from_model(row) for row in rows], _fingerprint()


def _fingerprint() -> tuple:
    from django.db.models import Count, Max

    from ..models import Channel

    summary = Channel.objects.aggregate(count=Count("id"), changed=Max("updated_at"))
    return summary["count"], summary["changed"]


class ChannelRegistry:
    """Looks channels up by id or name from a cache of the active channels."""

    def __init__(self):
        # The last cache that loaded; kept (stale) while a reload fails, e.g. with the database down.
        self._by_reference: dict[str, ChannelInfo] | None = None
        self._stale = True
        self._retry_at = 0.0
        self._fingerprint: tuple | None = None
        self._checked_at = 0.0
        self._load_lock = asyncio.Lock()
        self._revalidation: asyncio.Task | None = None
        self._miss_reloaded_at = -MISS_RELOAD_SECONDS
        # Awaited before each load: the runtime starts the hub here, so that every instance is
        # listening for registry invalidations from the moment it first trusts its cache.
        self.before_load = None

    def invalidate(self) -> None:
        """Mark the cache stale; the next lookup reloads it. Safe to call from any thread."""
        self._stale = True
        self._retry_at = 0.0

    async def resolve(self, reference: str) -> ChannelInfo:
        """The active channel whose id (or else name) is ``reference``; ``ApplicationError`` 404 if none."""
        channels = await self._channels()
        channel = channels.get(reference)
        if channel is None and time.monotonic() - self._miss_reloaded_at > MISS_RELOAD_SECONDS:
            self._miss_reloaded_at = time.monotonic()
            self.invalidate()
            channel = (await self._channels()).get(reference)
        if channel is None:
            raise channel_not_found(reference)
        return channel

    async def all(self) -> list[ChannelInfo]:
        """Every active channel, ordered by name."""
        channels = await self._channels()
        unique = {channel.id: channel for channel in channels.values()}
        return sorted(unique.values(), key=lambda channel: channel.name)

    async def _channels(self) -> dict[str, ChannelInfo]:
        cached = self._by_reference
        if cached is None or (self._stale and time.monotonic() >= self._retry_at):
            try:
                return await self._reload()
            except Exception:
                if cached is None:
                    raise
                # The cached registry keeps serving while the database is unavailable.
                self._retry_at = time.monotonic() + MISS_RELOAD_SECONDS
                logger.warning("could not reload the channel registry; serving the cached channels")
                return cached
        if time.monotonic() - self._checked_at > REVALIDATE_SECONDS and self._revalidation is None:
            self._checked_at = time.monotonic()
            self._revalidation = asyncio.create_task(self._revalidate(), context=contextvars.Context())
        return cached

    async def _reload(self) -> dict[str, ChannelInfo]:
        async with self._load_lock:
            if not self._stale and self._by_reference is not None:
                return self._by_reference
            if self.before_load is not None:
                try:
                    await self.before_load()
                except Exception:
                    # Serving from the database matters more; the hub starts with the next subscriber.
                    logger.exception("could not start listening for registry changes")
            # Cleared before loading, so an invalidation that lands during the load marks it stale again.
            self._stale = False
            try:
                channels, fingerprint = await database_sync_to_async(_load_active_channels)()
            except Exception:
                self._stale = True
                raise
            by_reference: dict[str, ChannelInfo] = {}
            for channel in channels:
                by_reference[channel.name] = channel
            # Ids win over names when one channel's name equals another's id.
            for channel in channels:
                by_reference[channel.id] = channel
            self._fingerprint = fingerprint
            self._checked_at = time.monotonic()
            self._by_reference = by_reference
            return by_reference

    async def _revalidate(self) -> None:
        try:
            fingerprint = await database_sync_to_async(_fingerprint)()
            if fingerprint != self._fingerprint:
                logger.info("channel registry changed in another process; reloading")
                self.invalidate()
        except Exception:
            # The cached registry keeps serving while the database is unavailable.
            logger.exception("could not check the channel registry for changes")
        finally:
            self._revalidation = None
