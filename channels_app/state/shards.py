"""Which Redis holds a channel's state when ``pubsub.redis.shards`` lists several (docs/scaling.md,
"Sharding across several Redis servers").

Every key the service writes belongs to one channel (history, idempotency receipts, connection
slots, presence members; ``state/redis.py`` lists them), so a channel's keys all live on one shard,
its *home*, and each Lua script touches one shard only. The home is chosen from the channel id
alone, the way channels-redis places the channel's layer group among the same ``hosts``, so a
channel's history and its fan-out go through the same Redis and one shard's outage only touches
the channels homed there (with ``layer: pubsub``; ``core`` also queues each message on the shard
of every receiving hub's own channel). Changing the shard list, its order, the ``prefix`` or the
``layer`` moves homes: state already written stays on its old shard, unread.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
from collections.abc import Iterable, Sequence

import redis.asyncio as redis

from ..naming import channel_group

logger = logging.getLogger(__name__)

# channels-redis maps a name to a shard by the low 12 bits of its CRC32, split into equal ranges.
_RING_BUCKETS = 4096


def shard_of(name: str, count: int) -> int:
    """The shard (0 to ``count - 1``) channels-redis picks for the channel or group ``name``."""
    if count == 1:
        return 0
    bucket = binascii.crc32(name.encode("utf8")) & (_RING_BUCKETS - 1)
    # The same float arithmetic as channels_redis.utils._consistent_hash, so both agree at range edges.
    return int(bucket / (_RING_BUCKETS / float(count)))


def layer_group_key(channel_id: str, *, layer: str, prefix: str) -> str:
    """The name channels-redis hashes to place ``channel_id``'s group: the Pub/Sub channel of the
    group under ``layer: pubsub``, the group's member set under ``layer: core``."""
    group = channel_group(channel_id)
    return f"{prefix}__group__{group}" if layer == "pubsub" else group


class RedisShards:
    """One client per Redis shard (a single one without ``shards``), and each channel's home among them."""

    def __init__(self, clients: Sequence[redis.Redis], *, layer: str = "pubsub", prefix: str = "realtime"):
        if not clients:
            raise ValueError("RedisShards needs at least one client: pass [redis.Redis(...)]")
        self.clients = tuple(clients)
        self._layer = layer
        self._prefix = prefix

    def __len__(self) -> int:
        return len(self.clients)

    def home(self, channel_id: str) -> int:
        """The index of the shard holding ``channel_id``'s keys."""
        if len(self.clients) == 1:
            return 0
        return shard_of(layer_group_key(channel_id, layer=self._layer, prefix=self._prefix), len(self.clients))

    def for_channel(self, channel_id: str) -> redis.Redis:
        """The client of ``channel_id``'s home shard."""
        return self.clients[self.home(channel_id)]

    def by_home(self, channel_ids: Iterable[str]) -> dict[int, list[str]]:
        """``channel_ids`` grouped by home shard, each group in the order given."""
        grouped: dict[int, list[str]] = {}
        for channel_id in channel_ids:
            grouped.setdefault(self.home(channel_id), []).append(channel_id)
        return grouped

    async def ping(self) -> bool:
        """PING every shard at once; raises the first failure, so readiness fails while any shard is away."""
        await asyncio.gather(*(client.ping() for client in self.clients))
        return True

    async def aclose(self) -> None:
        """Close every shard's connection pool."""
        for client in self.clients:
            await client.aclose()


def as_shards(store: RedisShards | redis.Redis) -> RedisShards:
    """``store`` itself, or one client as a single shard (tests and callers with one Redis)."""
    return store if isinstance(store, RedisShards) else RedisShards([store])
