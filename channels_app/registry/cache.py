"""The in-process channel registry cache: a bounded LRU of recently used channels, loaded lazily.

Every connection and every message looks a channel up, so lookups are served from memory. A channel
not in memory costs one indexed query, and lookups that miss together share it (one query per
batch). At most ``REALTIME_REGISTRY_CACHE_SIZE`` channels stay cached, the least recently used
leaving first; a registry no larger than that is loaded whole when the first lookup comes, so a
small deployment never waits on the database. Unknown references are remembered for
``NEGATIVE_SECONDS``, so a flood of them costs at most one query per name per second.

Invalidation is exact: saving or deleting a ``Channel`` drops that channel (by row, id and name)
here at once and on every other instance through the channel layer (``signals.py``,
``core/hub.py``). Changes the layer does not carry (another process in MEMORY mode, a bulk write)
are noticed by a fingerprint query at most every ``REVALIDATE_SECONDS``, off the hot path, or less
often when the query is slow (it scans the table): it keeps to about 2% of the time.
Measurements: docs/performance-registry.md.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable

from channels.db import database_sync_to_async

from ..channel import CHANNEL_FIELDS, ChannelInfo
from ..errors import channel_not_found
from ..identity import IDENTIFIER_MAX_LENGTH

logger = logging.getLogger(__name__)

DEFAULT_CACHE_SIZE = 100_000
REVALIDATE_SECONDS = 2.0
# The fingerprint check waits at least this many times its own last duration before running again.
REVALIDATE_COST_FACTOR = 50
# How long an unknown reference is answered 404 without asking the database, and how many are kept.
NEGATIVE_SECONDS = 1.0
NEGATIVE_SIZE = 10_000
# References one lookup query asks for; more waiting go in the next query.
BATCH_SIZE = 500
# Changed rows the fingerprint check invalidates one by one; past this it clears the whole cache.
CHANGED_ROWS_LIMIT = 1_000


def configured_cache_size() -> int:
    """``REALTIME_REGISTRY_CACHE_SIZE``, read when used so tests can override it."""
    from django.conf import settings

    return getattr(settings, "REALTIME_REGISTRY_CACHE_SIZE", DEFAULT_CACHE_SIZE)


def _fingerprint() -> tuple:
    from django.db.models import Count, Max

    from ..models import Channel

    summary = Channel.objects.aggregate(count=Count("id"), changed=Max("updated_at"), last=Max("id"))
    return summary["count"], summary["changed"], summary["last"] or 0


def _warm_up(capacity: int) -> tuple[list[ChannelInfo] | None, tuple]:
    """Every active channel when there are at most ``capacity``, else None; and the fingerprint."""
    from ..models import Channel

    fingerprint = _fingerprint()
    # The fingerprint counts every row, active or not: one scan of the table, not two.
    if fingerprint[0] > capacity:
        return None, fingerprint
    return [ChannelInfo.from_model(row) for row in Channel.objects.filter(active=True)], fingerprint


def _fetch(references: list[str]) -> dict[str, ChannelInfo]:
    """The active channel of each reference found, by id first, then by name, in one query."""
    from django.db import connection

    # Plain SQL, built once: the ORM spent ~1.5 ms of CPU building and reading this query, three times
    # what the database takes to answer it (docs/performance-registry.md).
    select, fields = _lookup_sql()
    placeholders = ", ".join(["%s"] * len(references))
    with connection.cursor() as cursor:
        cursor.execute(select.format(references=placeholders), [*references, *references])
        rows = cursor.fetchall()
    found: dict[str, ChannelInfo] = {}
    channels = [
        ChannelInfo(**{field.attr: _value(field, value) for field, value in zip(fields, row, strict=True)})
        for row in rows
    ]
    for channel in channels:
        found.setdefault(channel.name, channel)
    for channel in channels:
        # Ids win over names when one channel's name equals another's id.
        found[channel.id] = channel
    wanted = set(references)
    return {reference: channel for reference, channel in found.items() if reference in wanted}


def _value(field, value):
    # SQLite answers booleans as 0 and 1.
    return bool(value) if field.kind == "bool" else value


@functools.cache
def _lookup_sql() -> tuple[str, tuple]:
    """The lookup query (``{references}`` left for the placeholders) and the ``ChannelInfo`` field of each column."""
    from django.db import connection

    from ..models import Channel

    fields = tuple(CHANNEL_FIELDS.values())
    meta = Channel._meta
    quote = connection.ops.quote_name

    def column(name: str) -> str:
        return quote((meta.pk if name == "pk" else meta.get_field(name)).column)

    columns = ", ".join(column(field.model) for field in fields)
    select = (
        f"SELECT {columns} FROM {quote(meta.db_table)} WHERE {column('active')} "
        f"AND ({column('public_id')} IN ({{references}}) OR {column('name')} IN ({{references}}))"
    )
    return select, fields


def _changed_since(fingerprint: tuple) -> tuple[list[tuple[int, str, str]] | None, tuple]:
    """``(pk, id, name)`` of the rows changed since ``fingerprint`` (None when some were deleted, or too
    many changed, and only clearing the whole cache is exact), and the fingerprint now."""
    from ..models import Channel

    count, changed, last = fingerprint
    current = _fingerprint()
    rows = Channel.objects.all() if changed is None else Channel.objects.filter(updated_at__gte=changed)
    found = list(rows.values_list("pk", "public_id", "name")[: CHANGED_ROWS_LIMIT + 1])
    created = sum(1 for pk, _, _ in found if pk > last)
    if len(found) > CHANGED_ROWS_LIMIT or current[0] != count + created:
        return None, current
    return found, current


class ChannelRegistry:
    """Looks channels up by id or name through a bounded, lazily filled cache."""

    def __init__(self, *, capacity: int | None = None):
        # None: REALTIME_REGISTRY_CACHE_SIZE, read when used.
        self._capacity = capacity
        self._by_pk: OrderedDict[int, ChannelInfo] = OrderedDict()
        self._pk_by_reference: dict[str, int] = {}
        self._missing: OrderedDict[str, float] = OrderedDict()
        self._waiting: dict[str, asyncio.Future] = {}
        self._queued: list[str] = []
        self._fetching: asyncio.Task | None = None
        # Invalidations may come from any thread (signals run in the ORM's threads): they are queued
        # under a lock and applied by the event loop before its next lookup.
        self._lock = threading.Lock()
        self._pending: list[tuple[int | None, tuple[str, ...]] | None] = []
        self._generation = 0
        self._started = False
        self._start_lock = asyncio.Lock()
        self._fingerprint: tuple | None = None
        self._checked_at = 0.0
        self._check_every = REVALIDATE_SECONDS
        self._revalidation: asyncio.Task | None = None
        # Awaited before the first load: the runtime starts the hub here, so that every instance is
        # listening for registry invalidations from the moment it first trusts its cache.
        self.before_load = None

    @property
    def capacity(self) -> int:
        """How many channels stay cached."""
        return configured_cache_size() if self._capacity is None else self._capacity

    def __len__(self) -> int:
        return len(self._by_pk)

    def invalidate(self, *, pk: int | None = None, references: Iterable[str] = ()) -> None:
        """Forget the channel of row ``pk`` and whatever ``references`` (ids, names) resolved to, cached or
        known missing; with neither, forget everything. Safe to call from any thread."""
        references = tuple(references)
        with self._lock:
            self._generation += 1
            self._pending.append(None if pk is None and not references else (pk, references))

    async def resolve(self, reference: str) -> ChannelInfo:
        """The active channel whose id (or else name) is ``reference``; ``ApplicationError`` 404 if none."""
        if self._pending:
            self._apply_invalidations()
        pk = self._pk_by_reference.get(reference)
        if pk is not None:
            self._by_pk.move_to_end(pk)
            self._maybe_revalidate()
            return self._by_pk[pk]
        if not self._started:
            await self._start()
            return await self.resolve(reference)
        missing_until = self._missing.get(reference)
        if missing_until is not None and missing_until > time.monotonic():
            raise channel_not_found(reference)
        if len(reference) > IDENTIFIER_MAX_LENGTH:
            raise channel_not_found(reference)
        channel = await self._lookup(reference)
        if channel is None:
            raise channel_not_found(reference)
        return channel

    async def find(self, references: Iterable[str]) -> dict[str, ChannelInfo]:
        """The active channels of ``references`` that exist, by reference; the misses share queries."""
        references = list(dict.fromkeys(references))
        results = await asyncio.gather(*(self.resolve(reference) for reference in references), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and getattr(result, "code", None) != "channel_not_found":
                raise result
        return {
            reference: result
            for reference, result in zip(references, results, strict=True)
            if isinstance(result, ChannelInfo)
        }

    async def all(self) -> list[ChannelInfo]:
        """Every active channel, ordered by name, read from the database (not kept in the cache)."""
        return await _off_the_lookups(_all_active)()

    async def _start(self) -> None:
        async with self._start_lock:
            if self._started:
                return
            if self.before_load is not None:
                try:
                    await self.before_load()
                except Exception:
                    # Serving from the database matters more; the hub starts with the next subscriber.
                    logger.exception("could not start listening for registry changes")
            generation = self._generation
            capacity = self.capacity
            channels, fingerprint = await database_sync_to_async(_warm_up)(capacity)
            self._apply_invalidations()
            if channels is not None and generation == self._generation:
                for channel in channels:
                    self._store(channel)
                logger.info("channel registry: all %d active channels cached", len(channels))
            else:
                logger.info("channel registry: more than %d active channels; caching them as used", capacity)
            self._fingerprint = fingerprint
            self._checked_at = time.monotonic()
            self._started = True

    async def _lookup(self, reference: str) -> ChannelInfo | None:
        waiting = self._waiting.get(reference)
        if waiting is None:
            waiting = self._waiting[reference] = asyncio.get_running_loop().create_future()
            self._queued.append(reference)
            if self._fetching is None:
                self._fetching = asyncio.create_task(self._fetch_queued(), context=contextvars.Context())
        # Shielded: one caller giving up (a client that left) does not cancel the others' answer.
        return await asyncio.shield(waiting)

    async def _fetch_queued(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued[:BATCH_SIZE], self._queued[BATCH_SIZE:]
                generation = self._generation
                try:
                    found = await database_sync_to_async(_fetch)(batch)
                except Exception as exc:
                    for reference in batch:
                        future = self._waiting.pop(reference)
                        if not future.done():
                            future.set_exception(exc)
                            # Retrieved here too, so a future nobody awaits any more logs nothing.
                            future.exception()
                    continue
                self._apply_invalidations()
                # A change committed while the query ran may not be in its answer: answer, do not keep.
                keep = generation == self._generation
                missing_until = time.monotonic() + NEGATIVE_SECONDS
                for reference in batch:
                    channel = found.get(reference)
                    if keep and channel is not None:
                        self._store(channel, reference)
                    elif keep:
                        self._remember_missing(reference, missing_until)
                    future = self._waiting.pop(reference)
                    if not future.done():
                        future.set_result(channel)
        finally:
            self._fetching = None

    def _store(self, channel: ChannelInfo, reference: str | None = None) -> None:
        pk = channel.incarnation
        if pk in self._by_pk:
            self._by_pk.move_to_end(pk)
        self._by_pk[pk] = channel
        for key in (channel.name, channel.id) if reference is None else (reference,):
            self._pk_by_reference[key] = pk
            self._missing.pop(key, None)
        capacity = self.capacity
        while len(self._by_pk) > capacity:
            _, evicted = self._by_pk.popitem(last=False)
            self._drop_references(evicted)

    def _drop_references(self, channel: ChannelInfo) -> None:
        for key in (channel.id, channel.name):
            if self._pk_by_reference.get(key) == channel.incarnation:
                del self._pk_by_reference[key]

    def _remember_missing(self, reference: str, until: float) -> None:
        self._missing[reference] = until
        self._missing.move_to_end(reference)
        while len(self._missing) > NEGATIVE_SIZE:
            self._missing.popitem(last=False)

    def _apply_invalidations(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for item in pending:
            if item is None:
                self._clear()
                continue
            pk, references = item
            for reference in references:
                self._missing.pop(reference, None)
                self._forget_pk(self._pk_by_reference.get(reference))
            self._forget_pk(pk)

    def _forget_pk(self, pk: int | None) -> None:
        channel = self._by_pk.pop(pk, None) if pk is not None else None
        if channel is not None:
            self._drop_references(channel)

    def _clear(self) -> None:
        self._by_pk.clear()
        self._pk_by_reference.clear()
        self._missing.clear()
        # The next lookup warms up again: a small registry is loaded whole once more.
        self._started = False

    def _maybe_revalidate(self) -> None:
        if time.monotonic() - self._checked_at > self._check_every and self._revalidation is None:
            self._checked_at = time.monotonic()
            self._revalidation = asyncio.create_task(self._revalidate(), context=contextvars.Context())

    async def _revalidate(self) -> None:
        try:
            fingerprint = self._fingerprint
            started = time.monotonic()
            current = await _off_the_lookups(_fingerprint)()
            self._check_every = max(REVALIDATE_SECONDS, REVALIDATE_COST_FACTOR * (time.monotonic() - started))
            if fingerprint is None or current == fingerprint:
                return
            changed, current = await _off_the_lookups(_changed_since)(fingerprint)
            logger.info("channel registry changed in another process; forgetting the changed channels")
            if changed is None:
                self.invalidate()
            else:
                for pk, public_id, name in changed:
                    self.invalidate(pk=pk, references=(public_id, name))
            self._fingerprint = current
        except Exception:
            # The cached registry keeps serving while the database is unavailable.
            logger.exception("could not check the channel registry for changes")
        finally:
            self._revalidation = None


def _off_the_lookups(function):
    """``function`` run in a thread of its own, not the one thread the lookups share: at a million channels
    the fingerprint scans the table for ~0.2 s, and a miss queued behind it waited as long."""
    return database_sync_to_async(function, thread_sensitive=False)


def _all_active() -> list[ChannelInfo]:
    from ..models import Channel

    return [ChannelInfo.from_model(row) for row in Channel.objects.filter(active=True).order_by("name").iterator()]
