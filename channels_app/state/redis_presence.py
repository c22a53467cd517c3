"""Connection slots counted across every instance for the REDIS driver, and the members of
presence channels kept and swept with them (the keys ``<prefix>:s:``, ``:sh:``, ``:sm:``,
``:live`` and ``:held:`` described in ``state/redis.py``).

Liveness is per instance, not per slot: each slot names the instance holding it (its score), and
each instance keeps one heartbeat per shard, renewed every third of the lease. A slot counts while
its instance's heartbeat has not run out, so a dead instance's slots stop counting when its lease
would have, and the renewal costs a constant number of Redis commands whatever the number of
channels held. The slots of an instance whose heartbeat ran out are swept, and their members
reported, by the renewals of the instances still alive, from the set of channels it held. A live
instance's slot never runs out on its own, so a release (or an acquire) Redis may have missed is
made again at each renewal until Redis answers.

Same interface as ``MemoryPresence`` (``state/base.py`` ``Presence``), held to it by
``tests/test_presence.py``. A channel's keys live on its home shard (``state/shards.py``), with a
heartbeat and a set of held channels per instance on each shard, so each script touches one Redis
(the scripts: ``state/redis_presence_scripts.py``).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable

import redis.asyncio as redis

from ..channel import ChannelInfo
from ..errors import channel_full, client_id_taken
from ..stats import Stats
from . import redis_presence_scripts as scripts
from .presence import Member, page_after
from .redis import Keys, translating_redis_errors
from .shards import RedisShards, as_shards

logger = logging.getLogger(__name__)

# Slots put back per script call: a script holds Redis for the whole call.
RENEWALS_PER_CALL = 500
# Channels of dead instances swept per renewal and shard, in pipelines of SWEEPS_PER_CALL: a dead
# instance's slots stop counting at once; this only bounds how soon their members' leave is sent.
SWEEPS_PER_PERIOD = 10_000
SWEEPS_PER_CALL = 500
# Instance numbers are slot scores: below 2**40 a double holds them exactly and Redis and Lua
# print them as plain integers.
INSTANCE_NUMBERS = 2**40


class RedisPresence:
    """Connection slots counted across every instance, alive while their instance's heartbeat is."""

    def __init__(
        self,
        store: RedisShards | redis.Redis,
        prefix: str,
        *,
        lease: float = 30.0,
        stats: Stats | None = None,
    ):
        self._shards = as_shards(store)
        self._stats = stats or Stats()
        self._keys = Keys(prefix)
        self._lease = lease
        # This process's number, the score of its slots: random, so instances need no coordination.
        self.instance = str(1 + secrets.randbelow(INSTANCE_NUMBERS - 1))
        # Registered once; each call names the client of the channel's home shard.
        registry = self._shards.clients[0]
        self._acquire = registry.register_script(scripts.ACQUIRE)
        self._release = registry.register_script(scripts.RELEASE)
        self._live = registry.register_script(scripts.LIVE)
        self._count = registry.register_script(scripts.COUNT)
        self._contains = registry.register_script(scripts.CONTAINS)
        self._heartbeat = registry.register_script(scripts.HEARTBEAT)
        self._reassert = registry.register_script(scripts.REASSERT)
        self._sweep = registry.register_script(scripts.SWEEP)
        self._forget = registry.register_script(scripts.FORGET)
        # (channel id, clientId) -> (holder, Member JSON or ''), for the connections this instance holds.
        self._held: dict[tuple[str, str], tuple[str, str]] = {}
        # How many of them each shard homes: a renewal must not walk every slot to find its shards
        # (at 100,000 slots that held the event loop for over 100 ms every renewal).
        self._held_on: Counter[int] = Counter()
        # (channel id, clientId, holder) of slots Redis may hold for this instance though it no longer
        # does (a release or an acquire that failed or was cancelled): they would count as long as
        # its heartbeat lives, so each renewal releases them again until Redis answers.
        self._unreleased: set[tuple[str, str, str]] = set()
        # Shards where this instance's slots are to be put back (Redis forgot its heartbeat).
        self._forgotten: set[int] = set()
        self._renewal: asyncio.Task | None = None
        # Told of the members whose slots expired (their instance died), when a sweep removes them.
        self.on_expired: Callable[[str, list[Member]], None] | None = None

    def _slot_keys(self, channel_id: str) -> list[str]:
        return [
            self._keys.slots(channel_id),
            self._keys.slot_holders(channel_id),
            self._keys.slot_members(channel_id),
            self._keys.heartbeats(),
        ]

    def _swept(self, channel_id: str, swept) -> None:
        if not swept or self.on_expired is None:
            return
        members = [_member_from_json(swept[i], swept[i + 1]) for i in range(0, len(swept), 2)]
        try:
            self.on_expired(channel_id, members)
        except Exception:
            logger.exception("could not report the expired members of %s", channel_id)

    @translating_redis_errors
    async def acquire(
        self, channel: ChannelInfo, client_id: str, holder: str, *, replace: bool = False, member: Member | None = None
    ) -> str | None:
        """Take a cluster-wide slot (with its ``member``); refuse when the channel is full or the id is
        connected anywhere, unless ``replace``: then take the id's slot and return the holder it had."""
        member_json = "" if member is None else _member_json(member)
        shard = self._shards.home(channel.id)
        try:
            outcome = await self._acquire(
                keys=[*self._slot_keys(channel.id), self._keys.held(self.instance)],
                args=[
                    client_id,
                    channel.max_connections,
                    self.instance,
                    repr(self._lease),
                    holder,
                    "replace" if replace else "refuse",
                    member_json,
                    channel.id,
                ],
                client=self._shards.clients[shard],
            )
        except (redis.RedisError, asyncio.CancelledError):
            # The script may have run all the same (the answer was lost, or came too late).
            self._release_later(channel.id, client_id, holder)
            raise
        status, previous, was_alive = (part.decode() if isinstance(part, bytes) else part for part in outcome)
        if not was_alive and self._holds_on(shard):
            self._forget_noticed(shard)
        if status == "taken":
            raise client_id_taken(channel.id, client_id)
        if status == "full":
            raise channel_full(channel.id, channel.max_connections)
        self._hold((channel.id, client_id), (holder, member_json))
        self._unreleased.discard((channel.id, client_id, holder))
        self._ensure_renewal()
        return previous if status == "replaced" else None

    def _holds_on(self, shard: int) -> bool:
        return self._held_on[shard] > 0

    def _hold(self, key: tuple[str, str], held: tuple[str, str]) -> None:
        if key not in self._held:
            self._held_on[self._shards.home(key[0])] += 1
        self._held[key] = held

    def _unhold(self, key: tuple[str, str]) -> None:
        del self._held[key]
        shard = self._shards.home(key[0])
        self._held_on[shard] -= 1
        if not self._held_on[shard]:
            del self._held_on[shard]

    def _forget_noticed(self, shard: int) -> None:
        if shard not in self._forgotten:
            logger.warning("Redis shard %s forgot this instance's heartbeat; its slots there are put back", shard)
            self._forgotten.add(shard)

    async def release(self, channel_id: str, client_id: str, holder: str) -> bool:
        """Give the slot back if ``holder`` still has it (True); when Redis cannot be told (or this
        is cancelled), each renewal releases it again until Redis answers."""
        if self._held.get((channel_id, client_id), ("",))[0] == holder:
            self._unhold((channel_id, client_id))
        try:
            released = await self._release_slot(self._shards.for_channel(channel_id), channel_id, client_id, holder)
        except redis.RedisError:
            self._release_later(channel_id, client_id, holder)
            logger.warning(
                "could not release slot of %s on %s; it is released again at each renewal until Redis answers",
                client_id,
                channel_id,
            )
            return False
        except asyncio.CancelledError:
            self._release_later(channel_id, client_id, holder)
            raise
        self._unreleased.discard((channel_id, client_id, holder))
        return bool(released)

    def _release_later(self, channel_id: str, client_id: str, holder: str) -> None:
        self._unreleased.add((channel_id, client_id, holder))
        self._ensure_renewal()

    async def _release_slot(self, client: redis.Redis, channel_id: str, client_id: str, holder: str):
        return await self._release(
            keys=[*self._slot_keys(channel_id)[:3], self._keys.held(self.instance)],
            args=[client_id, holder, self.instance, channel_id],
            client=client,
        )

    @translating_redis_errors
    async def members(self, channel_id: str, *, after: str = "", limit: int) -> tuple[list[Member], bool]:
        """Live slots across every instance sorted by clientId, up to ``limit`` after ``after``, with
        their members, and whether more follow."""
        client = self._shards.for_channel(channel_id)
        live = await self._live(keys=self._slot_keys(channel_id), client=client)
        page, more = page_after((client_id.decode() for client_id in live), after, limit)
        if not page:
            return [], more
        details = await client.hmget(self._keys.slot_members(channel_id), page)
        return [_member_from_json(client_id, raw) for client_id, raw in zip(page, details, strict=True)], more

    @translating_redis_errors
    async def holds(self, channel_id: str, client_id: str, holder: str) -> bool:
        """Whether ``holder`` still has the slot of ``client_id`` (it was not replaced)."""
        owner = await self._shards.for_channel(channel_id).hget(self._keys.slot_holders(channel_id), client_id)
        return owner is not None and owner.decode() == holder

    @translating_redis_errors
    async def contains(self, channel_id: str, client_id: str) -> bool:
        """Whether ``client_id`` holds a live slot on the channel on any instance."""
        return bool(
            await self._contains(
                keys=self._slot_keys(channel_id),
                args=[client_id],
                client=self._shards.for_channel(channel_id),
            )
        )

    @translating_redis_errors
    async def count(self, channel_id: str) -> int:
        """Live connections on one channel across every instance."""
        return await self._count(keys=self._slot_keys(channel_id), client=self._shards.for_channel(channel_id))

    @translating_redis_errors
    async def counts(self, channel_ids=None) -> dict[str, int]:
        """Live connections per channel id across every instance."""
        if channel_ids is None:
            channel_ids = sorted({channel_id for channel_id, _ in self._held})
        channel_ids = list(channel_ids)
        counts: dict[str, int] = {}
        for shard, homed in self._shards.by_home(channel_ids).items():
            async with self._shards.clients[shard].pipeline(transaction=False) as pipe:
                for channel_id in homed:
                    await self._count(keys=self._slot_keys(channel_id), client=pipe)
                results = await pipe.execute()
            counts.update((channel_id, count) for channel_id, count in zip(homed, results, strict=True) if count)
        return {channel_id: counts[channel_id] for channel_id in channel_ids if channel_id in counts}

    def _ensure_renewal(self) -> None:
        if self._renewal is None or self._renewal.done():
            self._renewal = asyncio.create_task(
                self._renew_forever(), name="realtime-presence-renewal", context=contextvars.Context()
            )

    async def _renew_forever(self) -> None:
        # Each renewal is due a third of the lease after the previous one was due, not after it
        # ended, so slow renewals do not add up; one that overran its period is followed at once.
        period = self._lease / 3
        deadline = time.monotonic()
        while self._held or self._unreleased:
            deadline = max(deadline + period, time.monotonic())
            await asyncio.sleep(deadline - time.monotonic())
            try:
                await self.renew()
            except Exception:
                # Keep renewing: a Redis outage shorter than the lease costs no connection its slot.
                logger.exception("could not renew this instance's heartbeat or make its releases again")

    @translating_redis_errors
    async def renew(self) -> None:
        """Renew this instance's heartbeat on every shard it holds slots on, then put its slots back
        where Redis forgot it, make again the releases Redis may have missed, and sweep the slots of
        instances whose heartbeat ran out.

        The heartbeats go to every shard at once, before anything else, so that neither a long sweep
        nor a shard that is away delays another shard's. With nothing forgotten, unreleased or dead
        this is one script per shard, whatever the number of slots held. Slots another connection
        took over (``replace``) while Redis had forgotten are not put back, and are forgotten here.
        A slot released while they were being put back may have been put back too: it is released
        again, as are those whose release or acquire failed. A shard that is away fails the call
        only after the others are renewed.
        """
        homes = sorted(self._held_on)
        beats = await asyncio.gather(*(self._beat_on(shard) for shard in homes), return_exceptions=True)
        failures = [beat for beat in beats if isinstance(beat, BaseException)]
        for failure in failures:
            if not isinstance(failure, redis.RedisError):
                raise failure
        dead_on = {shard: dead for shard, dead in zip(homes, beats, strict=True) if not isinstance(dead, BaseException)}
        # A shard with no slot held is only told of releases: its heartbeat there may run out.
        unreleased_only = {self._shards.home(channel_id) for channel_id, _, _ in self._unreleased} - set(homes)
        for shard in [*dead_on, *sorted(unreleased_only)]:
            try:
                if shard in dead_on and shard in self._forgotten:
                    held = dict(self._held)
                    await self._reassert_on(self._shards.clients[shard], self._by_channel(held, shard), held)
                    self._forgotten.discard(shard)
                await self._release_again_on(shard)
            except redis.RedisError as exc:
                failures.append(exc)
        for shard, dead in dead_on.items():
            try:
                for instance in dead:
                    await self._sweep_instance(self._shards.clients[shard], instance)
            except redis.RedisError as exc:
                failures.append(exc)
        if failures:
            raise failures[0]

    def _by_channel(self, held: dict[tuple[str, str], tuple[str, str]], shard: int) -> dict[str, list[str]]:
        """The slots of ``held`` homed on ``shard``: per channel, its (clientId, holder, member) triples."""
        by_channel: dict[str, list[str]] = {}
        for (channel_id, client_id), (holder, member_json) in held.items():
            if self._shards.home(channel_id) == shard:
                by_channel.setdefault(channel_id, []).extend((client_id, holder, member_json))
        return by_channel

    async def _beat_on(self, shard: int) -> list[str]:
        """Renew this instance's heartbeat on ``shard``; the instances whose heartbeat ran out there."""
        alive, dead = await self._heartbeat(
            keys=[self._keys.heartbeats()],
            args=[self.instance, repr(self._lease)],
            client=self._shards.clients[shard],
        )
        if not alive:
            self._forget_noticed(shard)
        return [instance.decode() for instance in dead]

    async def _reassert_on(self, client: redis.Redis, by_channel: dict[str, list[str]], held: dict) -> None:
        """Put back this instance's slots on ``client``'s shard in one pipeline; the releases it undid
        are to be made again."""
        calls: list[str] = []
        async with client.pipeline(transaction=False) as pipe:
            for channel_id, triples in by_channel.items():
                for start in range(0, len(triples), 3 * RENEWALS_PER_CALL):
                    await self._reassert(
                        keys=[*self._slot_keys(channel_id)[:3], self._keys.held(self.instance)],
                        args=[self.instance, channel_id, *triples[start : start + 3 * RENEWALS_PER_CALL]],
                        client=pipe,
                    )
                    calls.append(channel_id)
            results = await pipe.execute()
        for channel_id, taken in zip(calls, results, strict=True):
            for client_id in taken:
                key = (channel_id, client_id.decode())
                if self._held.get(key) == held[key]:
                    self._unhold(key)
        for channel_id, triples in by_channel.items():
            for client_id, holder in zip(triples[::3], triples[1::3], strict=True):
                if self._held.get((channel_id, client_id), ("",))[0] != holder:
                    self._unreleased.add((channel_id, client_id, holder))

    async def _release_again_on(self, shard: int) -> None:
        """Make again, in one pipeline, the releases Redis may have missed on ``shard``."""
        pending = [entry for entry in self._unreleased if self._shards.home(entry[0]) == shard]
        if not pending:
            return
        try:
            async with self._shards.clients[shard].pipeline(transaction=False) as pipe:
                for channel_id, client_id, holder in pending:
                    await self._release_slot(pipe, channel_id, client_id, holder)
                await pipe.execute()
        except redis.RedisError:
            logger.warning(
                "could not release %s slots on shard %s again; retried at the next renewal", len(pending), shard
            )
            raise
        self._unreleased.difference_update(pending)
        for channel_id, client_id, _ in pending:
            logger.info("released the slot of %s on %s, which an earlier call had left", client_id, channel_id)

    async def _sweep_instance(self, client: redis.Redis, instance: str) -> None:
        """Remove the slots of ``instance``, whose heartbeat ran out, channel by channel (up to
        ``SWEEPS_PER_PERIOD``), reporting their members; forget it once none is left."""
        held_key = self._keys.held(instance)
        for _ in range(SWEEPS_PER_PERIOD // SWEEPS_PER_CALL):
            channel_ids = [channel_id.decode() for channel_id in await client.srandmember(held_key, SWEEPS_PER_CALL)]
            if not channel_ids:
                await self._forget(keys=[self._keys.heartbeats(), held_key], args=[instance], client=client)
                return
            async with client.pipeline(transaction=False) as pipe:
                for channel_id in channel_ids:
                    await self._sweep(
                        keys=[*self._slot_keys(channel_id), held_key],
                        args=[instance, channel_id],
                        client=pipe,
                    )
                results = await pipe.execute()
            for channel_id, (came_back, swept) in zip(channel_ids, results, strict=True):
                if came_back:
                    return
                self._swept(channel_id, swept)


def _member_json(member: Member) -> str:
    return json.dumps({"t": member.transport, "c": member.connected_at, "i": member.info}, separators=(",", ":"))


def _member_from_json(client_id, raw) -> Member:
    """The member stored for ``client_id``: only its clientId when its details are gone."""
    client_id = client_id.decode() if isinstance(client_id, bytes) else client_id
    if raw is None:
        return Member(client_id)
    fields = json.loads(raw)
    return Member(client_id, fields.get("t"), fields.get("c"), fields.get("i"))
