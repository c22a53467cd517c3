"""Connection slots counted across every instance for the REDIS driver, with leases renewed by
their holders, and the members of presence channels kept and swept with them (the keys
``<prefix>:p:``, ``:ph:`` and ``:pm:`` described in ``state/redis.py``).

Same interface as ``MemoryPresence`` (``state/base.py`` ``Presence``), held to it by
``tests/test_presence.py``. A channel's keys live on its home shard (``state/shards.py``), so each
script touches one Redis.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from collections.abc import Callable

import redis.asyncio as redis

from ..channel import ChannelInfo
from ..errors import channel_full, client_id_taken
from ..stats import Stats
from .presence import Member, page_after
from .redis import Keys, translating_redis_errors
from .shards import RedisShards, as_shards

logger = logging.getLogger(__name__)


def _sweep_expired(*, now: str) -> str:
    """Lua that removes up to 256 slots whose lease ended before ``now`` (an ARGV reference) and
    collects each swept member's clientId and JSON in ``swept``: the start of both scripts below."""
    return (
        """
local swept = {}
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', """
        + now
        + """, 'LIMIT', 0, 256)
if #expired > 0 then
  local details = redis.call('HMGET', KEYS[3], unpack(expired))
  for i = 1, #expired do
    if details[i] then
      table.insert(swept, expired[i])
      table.insert(swept, details[i])
    end
  end
  redis.call('ZREM', KEYS[1], unpack(expired))
  redis.call('HDEL', KEYS[2], unpack(expired))
  redis.call('HDEL', KEYS[3], unpack(expired))
end"""
    )


# KEYS: the channel's slots (clientId -> lease expiry), holders (clientId -> holder token) and
# members (clientId -> a presence channel's Member as JSON). ARGV: now, clientId, max connections,
# lease expiry, key expiry, holder, "replace" or "refuse", the Member's JSON ('' when none).
# Returns the outcome, the replaced holder, and the clientId and JSON of each member swept.
# Expired slots (an instance that died) go first, a bounded number per call; the rest are not
# counted (ZCOUNT above now) and go on later calls.
_ACQUIRE = (
    _sweep_expired(now="ARGV[1]")
    + """
local previous = ''
local score = redis.call('ZSCORE', KEYS[1], ARGV[2])
if score and tonumber(score) > tonumber(ARGV[1]) then
  if ARGV[7] ~= 'replace' then
    return {'taken', '', swept}
  end
  previous = redis.call('HGET', KEYS[2], ARGV[2]) or ''
elseif redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[1], '+inf') >= tonumber(ARGV[3]) then
  return {'full', '', swept}
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[6])
if ARGV[8] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[8])
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[5]))
else
  redis.call('HDEL', KEYS[3], ARGV[2])
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
if score and tonumber(score) > tonumber(ARGV[1]) then
  return {'replaced', previous, swept}
end
return {'ok', '', swept}
"""
)

# Removes a slot only while it carries the holder's token: a replaced connection's late release
# leaves its successor's slot alone. ARGV: clientId, holder.
_RELEASE = """
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""

# Extends the leases of this instance's slots on one channel. A slot still carrying its holder's
# token is renewed; one that is gone entirely (Redis restarted, or it expired while Redis was
# away) is put back, so it counts against the limit again; one another connection took over
# (``replace``) is left to it and returned; expired slots are swept, as by an acquire, and their
# members returned. ARGV: lease expiry, key expiry, now, then clientId and holder of each.
_RENEW = (
    _sweep_expired(now="ARGV[3]")
    + """
local taken = {}
for i = 4, #ARGV, 2 do
  local owner = redis.call('HGET', KEYS[2], ARGV[i])
  if owner == ARGV[i + 1] or (not owner and not redis.call('ZSCORE', KEYS[1], ARGV[i])) then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i])
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  elseif owner then
    table.insert(taken, ARGV[i])
  end
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[2]))
end
return {taken, swept}
"""
)

# Slots renewed per script call: a renewal holds Redis for the whole call.
RENEWALS_PER_CALL = 500


class RedisPresence:
    """Connection slots counted across every instance, with leases renewed by their holders."""

    def __init__(
        self,
        store: RedisShards | redis.Redis,
        prefix: str,
        *,
        lease: float = 30.0,
        stats: Stats | None = None,
        clock=time.time,
    ):
        self._shards = as_shards(store)
        self._stats = stats or Stats()
        self._keys = Keys(prefix)
        self._lease = lease
        # Registered once; each call names the client of the channel's home shard.
        registry = self._shards.clients[0]
        self._acquire = registry.register_script(_ACQUIRE)
        self._release = registry.register_script(_RELEASE)
        self._renew = registry.register_script(_RENEW)
        self._clock = clock
        # (channel id, clientId) -> holder, for the connections this instance holds.
        self._held: dict[tuple[str, str], str] = {}
        self._renewal: asyncio.Task | None = None
        # Told of the members whose slots expired (their instance died), when a sweep removes them.
        self.on_expired: Callable[[str, list[Member]], None] | None = None

    def _slot_keys(self, channel_id: str) -> list[str]:
        return [
            self._keys.presence(channel_id),
            self._keys.presence_holders(channel_id),
            self._keys.presence_members(channel_id),
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
        now = self._clock()
        outcome = await self._acquire(
            keys=self._slot_keys(channel.id),
            args=[
                repr(now),
                client_id,
                channel.max_connections,
                repr(now + self._lease),
                int(self._lease * 4) + 1,
                holder,
                "replace" if replace else "refuse",
                "" if member is None else _member_json(member),
            ],
            client=self._shards.for_channel(channel.id),
        )
        self._swept(channel.id, outcome[2])
        outcome = [part.decode() if isinstance(part, bytes) else part for part in outcome[:2]]
        if outcome[0] == "taken":
            raise client_id_taken(channel.id, client_id)
        if outcome[0] == "full":
            raise channel_full(channel.id, channel.max_connections)
        self._held[(channel.id, client_id)] = holder
        self._ensure_renewal()
        return outcome[1] if outcome[0] == "replaced" else None

    async def release(self, channel_id: str, client_id: str, holder: str) -> bool:
        """Give the slot back if ``holder`` still has it (True); if Redis is away the lease simply runs out."""
        if self._held.get((channel_id, client_id)) == holder:
            del self._held[(channel_id, client_id)]
        try:
            return bool(
                await self._release(
                    keys=self._slot_keys(channel_id),
                    args=[client_id, holder],
                    client=self._shards.for_channel(channel_id),
                )
            )
        except redis.RedisError:
            logger.warning(
                "could not release slot of %s on %s; its lease expires in %ss", client_id, channel_id, self._lease
            )
            return False

    @translating_redis_errors
    async def members(self, channel_id: str, *, after: str = "", limit: int) -> tuple[list[Member], bool]:
        """Live slots across every instance sorted by clientId, up to ``limit`` after ``after``, with
        their members, and whether more follow."""
        client = self._shards.for_channel(channel_id)
        live = await client.zrangebyscore(self._keys.presence(channel_id), f"({self._clock()!r}", "+inf")
        page, more = page_after((client_id.decode() for client_id in live), after, limit)
        if not page:
            return [], more
        details = await client.hmget(self._keys.presence_members(channel_id), page)
        return [_member_from_json(client_id, raw) for client_id, raw in zip(page, details, strict=True)], more

    @translating_redis_errors
    async def holds(self, channel_id: str, client_id: str, holder: str) -> bool:
        """Whether ``holder`` still has the slot of ``client_id`` (it was not replaced)."""
        owner = await self._shards.for_channel(channel_id).hget(self._keys.presence_holders(channel_id), client_id)
        return owner is not None and owner.decode() == holder

    @translating_redis_errors
    async def contains(self, channel_id: str, client_id: str) -> bool:
        """Whether ``client_id`` holds a live slot on the channel on any instance."""
        score = await self._shards.for_channel(channel_id).zscore(self._keys.presence(channel_id), client_id)
        return score is not None and score > self._clock()

    @translating_redis_errors
    async def count(self, channel_id: str) -> int:
        """Live connections on one channel across every instance."""
        return await self._shards.for_channel(channel_id).zcount(
            self._keys.presence(channel_id), f"({self._clock()!r}", "+inf"
        )

    @translating_redis_errors
    async def counts(self, channel_ids=None) -> dict[str, int]:
        """Live connections per channel id across every instance."""
        if channel_ids is None:
            channel_ids = sorted({channel_id for channel_id, _ in self._held})
        channel_ids = list(channel_ids)
        now = f"({self._clock()!r}"
        counts: dict[str, int] = {}
        for shard, homed in self._shards.by_home(channel_ids).items():
            async with self._shards.clients[shard].pipeline(transaction=False) as pipe:
                for channel_id in homed:
                    pipe.zcount(self._keys.presence(channel_id), now, "+inf")
                results = await pipe.execute()
            counts.update((channel_id, count) for channel_id, count in zip(homed, results, strict=True) if count)
        return {channel_id: counts[channel_id] for channel_id in channel_ids if channel_id in counts}

    def _ensure_renewal(self) -> None:
        if self._renewal is None or self._renewal.done():
            self._renewal = asyncio.create_task(
                self._renew_forever(), name="realtime-presence-renewal", context=contextvars.Context()
            )

    async def _renew_forever(self) -> None:
        while self._held:
            await asyncio.sleep(self._lease / 3)
            try:
                await self.renew()
            except Exception:
                # Keep renewing: a Redis outage shorter than the lease costs no connection its slot.
                logger.exception("could not renew connection leases")

    @translating_redis_errors
    async def renew(self) -> None:
        """Extend the leases of every connection this instance holds.

        Slots lost in a Redis restart are put back, so they count against the limit again. Slots
        another connection took over (``replace``) are not, and are forgotten here, so that they
        are not put back once their new holder leaves. A slot released while the renewal was in
        flight may have been put back too; such slots are released again at once. Each shard is
        renewed on its own: one that is away fails the call only after the others are renewed.
        """
        held = dict(self._held)
        if not held:
            return
        by_channel: dict[str, list[str]] = {}
        for (channel_id, client_id), holder in held.items():
            by_channel.setdefault(channel_id, []).extend((client_id, holder))
        failure: redis.RedisError | None = None
        for shard, channel_ids in self._shards.by_home(by_channel).items():
            try:
                await self._renew_on(self._shards.clients[shard], {cid: by_channel[cid] for cid in channel_ids}, held)
            except redis.RedisError as exc:
                failure = exc
        if failure is not None:
            raise failure

    async def _renew_on(self, client: redis.Redis, by_channel: dict[str, list[str]], held: dict) -> None:
        """``renew`` for the channels homed on ``client``'s shard: one pipeline, then the releases it undid."""
        calls: list[str] = []
        now = self._clock()
        expiry = repr(now + self._lease)
        key_expiry = int(self._lease * 4) + 1
        async with client.pipeline(transaction=False) as pipe:
            for channel_id, pairs in by_channel.items():
                for start in range(0, len(pairs), 2 * RENEWALS_PER_CALL):
                    chunk = pairs[start : start + 2 * RENEWALS_PER_CALL]
                    await self._renew(
                        keys=self._slot_keys(channel_id), args=[expiry, key_expiry, repr(now), *chunk], client=pipe
                    )
                    calls.append(channel_id)
            results = await pipe.execute()
        for channel_id, (taken, swept) in zip(calls, results, strict=True):
            self._swept(channel_id, swept)
            for client_id in taken:
                key = (channel_id, client_id.decode())
                if self._held.get(key) == held[key]:
                    del self._held[key]
        for channel_id, pairs in by_channel.items():
            for client_id, holder in zip(pairs[::2], pairs[1::2], strict=True):
                if self._held.get((channel_id, client_id)) != holder:
                    await self._release(keys=self._slot_keys(channel_id), args=[client_id, holder], client=client)


def _member_json(member: Member) -> str:
    return json.dumps({"t": member.transport, "c": member.connected_at, "i": member.info}, separators=(",", ":"))


def _member_from_json(client_id, raw) -> Member:
    """The member stored for ``client_id``: only its clientId when its details are gone (Redis restarted)."""
    client_id = client_id.decode() if isinstance(client_id, bytes) else client_id
    if raw is None:
        return Member(client_id)
    fields = json.loads(raw)
    return Member(client_id, fields.get("t"), fields.get("c"), fields.get("i"))
