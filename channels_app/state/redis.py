"""Cluster-wide state for the REDIS driver: history, idempotency keys, the shared client and the
key layout (connection slots, presence members and heartbeats: ``state/redis_presence.py``).

Same interfaces as the in-memory classes (``MemoryHistory``, ``MemoryPresence``), so the realtime
path does not know which driver runs. Every instance talks to one bounded connection pool per
Redis (``pubsub.redis.shards`` lists several: a channel's keys all live on its home shard,
``state/shards.py``); each operation has short timeouts, so when Redis is away callers get an
error at once (turned into 503 / a WebSocket error frame) instead of hanging. A history append is
never retried by the client library: a retried script would publish twice.

Keys (``<prefix>`` is ``pubsub.redis.prefix``; ``{id}`` keeps a channel's keys in one slot):
- ``<prefix>:h:{id}:epoch`` and ``:seq``: the history's epoch and last offset (kept 30 days idle);
  ``:inc``: which incarnation of the channel (its registry row) the history belongs to.
- ``<prefix>:h:{id}:log``: a stream of recent messages, trimmed to ``history_size``; entries older
  than ``history_ttl`` are skipped on read and the stream expires when idle that long. An entry's
  fields: ``i`` id, ``c`` clientId, ``p`` payload, ``t`` createdAt, ``ts`` publish time, and ``k``
  ``json`` for a payload published as a JSON value (absent: text, as in entries written before).
- ``<prefix>:s:{id}``: a sorted set of connected clientIds, each scored by the number of the
  instance holding its connection. A slot counts while that instance's heartbeat is alive.
- ``<prefix>:sh:{id}``: a hash from each connected clientId to its connection's holder token, so
  that only that connection releases the slot (``server.duplicate_client_id``).
- ``<prefix>:sm:{id}``: on a ``presence: true`` channel, a hash from each connected clientId to its
  member's transport, connectedAt and info (JSON), written, swept and removed with its slot.
- ``<prefix>:live``: a sorted set of instance numbers scored by heartbeat expiry, by Redis's own
  clock. Each instance renews its own every third of the lease; the slots of an instance that
  died without closing its connections stop counting when the lease runs out
  (``REALTIME_PRESENCE_LEASE_SECONDS``, default 30 s), and the instances still alive sweep them.
  A live instance's slot counts until it is released: a release Redis did not get is made again
  at each renewal.
- ``<prefix>:held:<instance>``: the ids of the channels an instance holds slots on, read only to
  sweep them once it is dead. ``live`` and ``held`` exist on each shard, for the channels homed there.
  (Versions before these keys kept lease-scored slots in ``:p:``, ``:ph:`` and ``:pm:``; they expire
  on their own, four leases after their last renewal.)
- ``<prefix>:idem:{id}:<incarnation>:<key>``: the receipt of a push made with an ``Idempotency-Key``,
  written by the same script that records the message (24 h).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Sequence

import redis.asyncio as redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import NoScriptError
from redis.maint_notifications import MaintNotificationsConfig

from ..channel import ChannelInfo
from ..errors import ApplicationError, publish_outcome_unknown
from ..messages import JSON, TEXT, Message, Position, utc_timestamp
from ..stats import Stats
from .group_commit import GroupCommit
from .history import Draft, Recorded, Replay, Replayed, new_epoch, replay_after
from .idempotency import IDEMPOTENCY_WINDOW_SECONDS, idempotency_key_reused
from .shards import RedisShards, as_shards

logger = logging.getLogger(__name__)

SEQUENCE_IDLE_SECONDS = 30 * 24 * 3600
MAX_POOL_CONNECTIONS = 32


def redis_unavailable(exc: Exception, *, publishing: bool = False) -> ApplicationError:
    """Redis cannot be reached (503 / 4503); for a publish, nothing was sent, so nothing was published."""
    consequence = "nothing was published" if publishing else "this could not be done"
    return ApplicationError(
        "redis_unavailable",
        f"The message broker (Redis) is unreachable right now; {consequence}. Retry shortly.",
        status=503,
        close_code=4503,
    )


def translating_redis_errors(method):
    """Turn a Redis failure into ``redis_unavailable`` (503 / 4503) and count it."""

    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        try:
            return await method(self, *args, **kwargs)
        except redis.RedisError as exc:
            self._stats.incr("redis_errors")
            logger.warning("Redis call %s failed: %s", method.__qualname__, exc.__class__.__name__)
            raise redis_unavailable(exc) from exc

    return wrapper


def redis_client(config, url: str | None = None) -> redis.Redis:
    """One client with a bounded, blocking connection pool for this process: to ``url`` (one shard),
    else to ``config``'s Sentinel master or url."""
    options = {
        "socket_connect_timeout": 2,
        "socket_timeout": 3,
        "health_check_interval": 15,
        "retry_on_timeout": False,
        # redis-py 8 turns "maintenance notifications" (a Redis Enterprise and Cloud feature) on
        # for RESP3 by default, and while they are on its pool skips the check that replaces a
        # closed connection: after a Redis restart every connection pooled before it failed its
        # next command (a 503) although Redis was back.
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }
    if url is None and config.sentinels:
        sentinels = [(host, int(port)) for host, port in (address.rsplit(":", 1) for address in config.sentinels)]
        sentinel = Sentinel(sentinels, socket_connect_timeout=2, socket_timeout=2)
        return sentinel.master_for(config.master_name, max_connections=MAX_POOL_CONNECTIONS, **options)
    pool = redis.BlockingConnectionPool.from_url(
        url or config.url, max_connections=MAX_POOL_CONNECTIONS, timeout=2, **options
    )
    return redis.Redis(connection_pool=pool)


def redis_shards(config) -> RedisShards:
    """A client per Redis of the ``pubsub.redis`` section: each of ``shards``, or the one ``url`` / Sentinel master."""
    clients = [redis_client(config, url) for url in config.shards] if config.shards else [redis_client(config)]
    return RedisShards(clients, layer=config.layer, prefix=config.prefix)


class Keys:
    """The Redis keys of one deployment (``pubsub.redis.prefix``), as listed above."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def epoch(self, channel_id: str) -> str:
        return f"{self.prefix}:h:{{{channel_id}}}:epoch"

    def seq(self, channel_id: str) -> str:
        return f"{self.prefix}:h:{{{channel_id}}}:seq"

    def log(self, channel_id: str) -> str:
        return f"{self.prefix}:h:{{{channel_id}}}:log"

    def incarnation(self, channel_id: str) -> str:
        return f"{self.prefix}:h:{{{channel_id}}}:inc"

    def idempotency(self, channel_id: str, incarnation: int, key: str) -> str:
        return f"{self.prefix}:idem:{{{channel_id}}}:{incarnation}:{key}"

    def slots(self, channel_id: str) -> str:
        return f"{self.prefix}:s:{{{channel_id}}}"

    def slot_holders(self, channel_id: str) -> str:
        return f"{self.prefix}:sh:{{{channel_id}}}"

    def slot_members(self, channel_id: str) -> str:
        return f"{self.prefix}:sm:{{{channel_id}}}"

    def heartbeats(self) -> str:
        return f"{self.prefix}:live"

    def held(self, instance: str) -> str:
        return f"{self.prefix}:held:{instance}"


# Stamping and recording are one atomic step, so offsets are gapless and history never lags them;
# a draft's Idempotency-Key is recorded in the same step, so a retry finds the message recorded by
# an attempt whose answer was lost. A channel deleted and created again (a new incarnation) starts
# over in a new epoch. KEYS: epoch, seq, log, incarnation, then the idempotency keys of the run.
# ARGV: epoch if new, count, history_size, published_at, history_ttl, idle expiry, created_at,
# incarnation, idempotency window, then per draft: id, clientId, payload, index of its idempotency
# key in KEYS (0: none), its payload's fingerprint and its payload's kind ('' for text, which is
# left out of the entry). Returns the epoch, then per draft its offset, the receipt JSON recorded
# under its key earlier, or 'reused' (the key belongs to another payload).
_APPEND = """
local epoch = redis.call('GET', KEYS[1])
local incarnation = redis.call('GET', KEYS[4])
if incarnation and incarnation ~= ARGV[8] then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  epoch = false
end
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
end
local count = tonumber(ARGV[2])
local size = tonumber(ARGV[3])
local results = {epoch}
local appended = 0
for i = 0, count - 1 do
  local at = 10 + 6 * i
  local key_index = tonumber(ARGV[at + 3])
  local earlier = false
  if key_index > 0 then
    earlier = redis.call('GET', KEYS[key_index])
  end
  if earlier then
    if cjson.decode(earlier)['f'] == ARGV[at + 4] then
      results[#results + 1] = earlier
    else
      results[#results + 1] = 'reused'
    end
  else
    local offset = redis.call('INCR', KEYS[2])
    appended = appended + 1
    local kind = ARGV[at + 5]
    if size > 0 then
      if kind == '' then
        redis.call('XADD', KEYS[3], offset .. '-1',
          'i', ARGV[at], 'c', ARGV[at + 1], 'p', ARGV[at + 2], 't', ARGV[7], 'ts', ARGV[4])
      else
        redis.call('XADD', KEYS[3], offset .. '-1',
          'i', ARGV[at], 'c', ARGV[at + 1], 'p', ARGV[at + 2], 't', ARGV[7], 'ts', ARGV[4], 'k', kind)
      end
    end
    if key_index > 0 then
      local receipt = {f = ARGV[at + 4], i = ARGV[at], c = ARGV[at + 1], o = offset,
        e = epoch, t = ARGV[7], ts = ARGV[4]}
      if kind ~= '' then
        receipt['k'] = kind
      end
      redis.call('SET', KEYS[key_index], cjson.encode(receipt), 'EX', tonumber(ARGV[9]))
    end
    results[#results + 1] = offset
  end
end
if size > 0 and appended > 0 then
  redis.call('XTRIM', KEYS[3], 'MAXLEN', size)
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[5]))
end
redis.call('SET', KEYS[4], ARGV[8], 'EX', tonumber(ARGV[6]))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[6]))
return results
"""


class RedisHistory:
    """Per-channel history shared by every instance, each channel's on its home shard."""

    def __init__(self, store: RedisShards | redis.Redis, prefix: str, *, stats: Stats | None = None, clock=time.time):
        self._shards = as_shards(store)
        self._stats = stats or Stats()
        self._keys = Keys(prefix)
        # Only the script's text and SHA are used: it runs on the connection of the channel's shard.
        self._append = self._shards.clients[0].register_script(_APPEND)
        self._clock = clock
        # Appends made while one is on its way to the same shard go together as one pipeline.
        self._appends = [
            GroupCommit(functools.partial(self._run_appends, client), name="realtime-history-appends")
            for client in self._shards.clients
        ]

    async def append(self, channel: ChannelInfo, *, payload: str, client_id: str, payload_kind: str = TEXT) -> Message:
        """Stamp a message with the channel's next offset and record it, atomically."""
        (message,) = await self.append_many(channel, [Draft(payload, client_id, payload_kind=payload_kind)])
        return message

    async def append_many(self, channel: ChannelInfo, drafts: Sequence[Draft]) -> list[Recorded]:
        """Stamp a run of drafts with consecutive offsets and record them (and their idempotency
        keys), atomically and in one round trip; a draft whose key is known is not recorded again.

        Raises ``redis_unavailable`` when the call failed before it was sent (nothing was recorded)
        and ``publish_outcome_unknown`` when it was sent but not answered (it may yet be recorded).
        """
        created_at = utc_timestamp()
        now = repr(self._clock())
        keys = [
            self._keys.epoch(channel.id),
            self._keys.seq(channel.id),
            self._keys.log(channel.id),
            self._keys.incarnation(channel.id),
        ]
        args = [
            new_epoch(),
            len(drafts),
            channel.history_size,
            now,
            channel.history_ttl,
            SEQUENCE_IDLE_SECONDS,
            created_at,
            channel.incarnation,
            IDEMPOTENCY_WINDOW_SECONDS,
        ]
        for draft in drafts:
            key_index = 0
            if draft.idempotency is not None:
                keys.append(self._keys.idempotency(channel.id, channel.incarnation, draft.idempotency.key))
                key_index = len(keys)
            fingerprint = draft.idempotency.fingerprint if draft.idempotency is not None else ""
            kind = "" if draft.payload_kind == TEXT else draft.payload_kind
            args += [draft.id, draft.client_id, draft.payload, key_index, fingerprint, kind]
        epoch, *outcomes = await self._appends[self._shards.home(channel.id)].call((keys, args))
        epoch = epoch.decode()
        return [
            self._recorded(channel, draft, outcome, epoch, created_at, now)
            for draft, outcome in zip(drafts, outcomes, strict=True)
        ]

    @staticmethod
    def _recorded(channel: ChannelInfo, draft: Draft, outcome, epoch: str, created_at: str, now: str) -> Recorded:
        if isinstance(outcome, int):
            return Message(
                id=draft.id,
                channel_id=channel.id,
                client_id=draft.client_id,
                payload=draft.payload,
                created_at=created_at,
                offset=outcome,
                epoch=epoch,
                published_at=float(now),
                payload_kind=draft.payload_kind,
            )
        if outcome == b"reused":
            return idempotency_key_reused()
        # Recorded earlier under the same key, for the same payload (the fingerprints match).
        receipt = json.loads(outcome)
        return Replayed(
            Message(
                id=receipt["i"],
                channel_id=channel.id,
                client_id=receipt["c"],
                payload=draft.payload,
                created_at=receipt["t"],
                offset=int(receipt["o"]),
                epoch=receipt["e"],
                published_at=float(receipt["ts"]),
                payload_kind=_kind(receipt.get("k")),
            )
        )

    async def _run_appends(self, client: redis.Redis, calls: list[tuple[list, list]]) -> list:
        """Run the append script once per call, pipelined on one of ``client``'s pooled connections and
        never retried, telling apart a failure before the calls were sent from one after (see
        ``append_many``); answers each call's reply or the error it raises."""
        pool = client.connection_pool
        try:
            connection = await pool.get_connection()
        except (redis.RedisError, OSError) as exc:
            return self._not_sent(exc, len(calls))
        try:
            try:
                await connection.check_health()
            except (redis.RedisError, OSError) as exc:
                return self._not_sent(exc, len(calls))
            try:
                return await _evalsha_many(connection, self._append, calls)
            except (redis.RedisError, OSError) as exc:
                await connection.disconnect()
                self._stats.incr("publish_outcomes_unknown", len(calls))
                logger.warning("Redis did not answer %d history append(s): %s", len(calls), exc.__class__.__name__)
                return [_chained(publish_outcome_unknown(), exc) for _ in calls]
            except BaseException:
                # Cancelled mid-call: the answers may still arrive, so the connection cannot be reused.
                await connection.disconnect(nowait=True)
                raise
        finally:
            await pool.release(connection)

    def _not_sent(self, exc: BaseException, calls: int) -> list[ApplicationError]:
        self._stats.incr("redis_errors")
        logger.warning("Redis unreachable before %d history append(s) were sent: %s", calls, exc.__class__.__name__)
        return [_chained(redis_unavailable(exc, publishing=True), exc) for _ in range(calls)]

    async def _state(self, channel: ChannelInfo, first: int | None = None) -> tuple[str | None, int, list[Message]]:
        start = f"{first}-1" if first is not None else "-"
        async with self._shards.for_channel(channel.id).pipeline(transaction=True) as pipe:
            pipe.get(self._keys.incarnation(channel.id))
            pipe.get(self._keys.epoch(channel.id))
            pipe.get(self._keys.seq(channel.id))
            pipe.xrange(self._keys.log(channel.id), min=start, max="+")
            incarnation, epoch, seq, entries = await pipe.execute()
        if incarnation is not None and int(incarnation) != channel.incarnation:
            # An earlier channel with the same id: its history is not this channel's.
            return None, 0, []
        epoch = epoch.decode() if epoch else None
        oldest_allowed = self._clock() - channel.history_ttl
        messages = []
        for entry_id, fields in entries:
            published_at = float(fields[b"ts"])
            if published_at < oldest_allowed:
                continue
            messages.append(
                Message(
                    id=fields[b"i"].decode(),
                    channel_id=channel.id,
                    client_id=fields[b"c"].decode(),
                    payload=fields[b"p"].decode("utf-8", "surrogatepass"),
                    created_at=fields[b"t"].decode(),
                    offset=int(entry_id.split(b"-")[0]),
                    epoch=epoch,
                    published_at=published_at,
                    payload_kind=_kind(fields.get(b"k")),
                )
            )
        return epoch, int(seq or 0), messages

    @translating_redis_errors
    async def since(self, channel: ChannelInfo, position: Position) -> Replay:
        """Messages after ``position``, oldest first, with a ``Gap`` when some are gone."""
        epoch, head, held = await self._state(channel)
        return replay_after(position, held=held, epoch=epoch, head=head)

    @translating_redis_errors
    async def between(self, channel: ChannelInfo, first: int, last: int) -> list[Message]:
        """Messages with ``first <= offset <= last`` still held."""
        _, _, held = await self._state(channel, first)
        return [message for message in held if message.offset <= last]

    @translating_redis_errors
    async def find(self, channel: ChannelInfo, message_ids: Sequence[str]) -> list[Message]:
        """The messages with these ids still held, oldest first."""
        wanted = set(message_ids)
        _, _, held = await self._state(channel)
        return [message for message in held if message.id in wanted]

    @translating_redis_errors
    async def head(self, channel_id: str) -> int:
        """The offset of the newest message published on the channel (0 when none)."""
        return int(await self._shards.for_channel(channel_id).get(self._keys.seq(channel_id)) or 0)

    @translating_redis_errors
    async def current(self, channel: ChannelInfo) -> Position:
        """The channel's newest position: resuming there replays nothing (a bare ``0`` before any message)."""
        keys = self._keys
        incarnation, epoch, seq = await self._shards.for_channel(channel.id).mget(
            keys.incarnation(channel.id), keys.epoch(channel.id), keys.seq(channel.id)
        )
        if epoch is None or not seq or (incarnation is not None and int(incarnation) != channel.incarnation):
            return Position(offset=0)
        return Position(epoch=epoch.decode(), offset=int(seq))

    @translating_redis_errors
    async def forget(self, channel_id: str) -> None:
        """Drop a deleted channel's history (a later channel with the same id gets a new epoch)."""
        await self._shards.for_channel(channel_id).delete(
            self._keys.epoch(channel_id),
            self._keys.seq(channel_id),
            self._keys.log(channel_id),
            self._keys.incarnation(channel_id),
        )


def _kind(recorded: str | bytes | None) -> str:
    """A recorded payload kind (``k``); absent, as in entries and receipts written before kinds, is text."""
    return JSON if recorded in (JSON, JSON.encode()) else TEXT


def _chained(error: ApplicationError, cause: BaseException) -> ApplicationError:
    error.__cause__ = cause
    return error


async def _evalsha_many(connection, script, calls: list[tuple[list, list]]) -> list:
    """EVALSHA once per ``(keys, args)`` call, pipelined on ``connection``; each call's reply, or the
    ``ResponseError`` it got. Calls Redis answers NOSCRIPT (its script cache is empty: it restarted)
    ran nothing, so they are sent again with the script whole, which Redis caches for the next."""
    replies = await _pipelined(connection, [("EVALSHA", script.sha, keys, args) for keys, args in calls])
    unknown = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if unknown:
        again = await _pipelined(connection, [("EVAL", script.script, *calls[index]) for index in unknown])
        for index, reply in zip(unknown, again, strict=True):
            replies[index] = reply
    return replies


async def _pipelined(connection, commands: list[tuple[str, object, list, list]]) -> list:
    await connection.send_packed_command(
        connection.pack_commands([(name, body, len(keys), *keys, *args) for name, body, keys, args in commands]),
        check_health=False,
    )
    replies = []
    for _ in commands:
        try:
            replies.append(await connection.read_response())
        except redis.ResponseError as exc:
            replies.append(exc)
    return replies
