"""What one process serves with: its state stores, channel layer, hub, registry cache, counters and hooks.

A ``Runtime`` is built once per process by the composition root (``channels_app/composition.py``)
and handed to the routers, endpoints, views and services; tests build their own, with fakes where
they need them. History and connection slots are the service's shared state: the MEMORY driver
keeps them in this (single) process, the REDIS driver in Redis, behind the same interfaces
(``state/base.py``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from ..config import RealtimeConfig
from ..hooks import Hooks
from ..registry.cache import ChannelRegistry
from ..state.base import History, Presence
from ..state.history import MemoryHistory
from ..state.presence import MemoryPresence
from ..stats import Stats
from .fanout_repair import FanoutRepair
from .http_hooks import HttpHooks
from .hub import Hub
from .inflight import InFlight
from .presence_events import LEAVE, PresenceEvents
from .timewheel import TimingWheel


class Runtime:
    """The stores, layer, hub, registry and counters of one process."""

    def __init__(
        self,
        *,
        config: RealtimeConfig,
        layer,
        history: History,
        presence: Presence,
        stats: Stats | None = None,
        registry: ChannelRegistry | None = None,
        redis=None,
        on_subscribe: Callable[[], None] | None = None,
        on_unsubscribe: Callable[[], None] | None = None,
        hooks: Hooks | None = None,
        http_hooks: HttpHooks | None = None,
    ):
        self.config = config
        self.layer = layer
        self.history = history
        self.presence = presence
        self.stats = stats or Stats()
        self.registry = registry or ChannelRegistry()
        # The project's hooks (channels_app/hooks.py), imported by the composition root; none by default.
        self.hooks = hooks or Hooks()
        # The hooks over HTTP of server.hooks (core/http_hooks.py), run after the project's; None without URLs.
        self.http_hooks = http_hooks
        if http_hooks is not None:
            self.hooks = Hooks((*self.hooks.hooks, *http_hooks.hooks()), timeout=self.hooks.timeout)
        # The Redis clients the stores share, one per shard (REDIS driver), probed by /readyz; None under MEMORY.
        self.redis = redis
        self.hub = Hub(self, on_subscribe=on_subscribe, on_unsubscribe=on_unsubscribe)
        self.registry.before_load = self.hub.start
        self.fanout_repair = FanoutRepair(self)
        # Join and leave notices of presence channels; members swept with their expired slots leave too.
        self.presence_events = PresenceEvents(self)
        presence.on_expired = self._members_expired
        # With several server processes, writes this one's metrics where the others' scrapes read them
        # (ops/metrics_snapshots.py), set by the composition root and started with the hub. None with one process.
        self.metrics_snapshots = None
        # Set when the instance starts shutting down: readiness fails, new connections are refused.
        self.draining = False
        self.in_flight = InFlight()
        # The keep-alive comments of this process's event streams, one timer for all (transports/sse.py);
        # a tick well under the interval keeps each comment's lateness small against it.
        self.sse_keepalives = TimingWheel(_keepalive_due, tick=min(1.0, config.server.sse_keepalive / 5))
        # Per channel id, the queue that sends this process's publishes in runs, in offset order.
        self.publish_queues: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def _members_expired(self, channel_id: str, members) -> None:
        for member in members:
            self.presence_events.note(channel_id, LEAVE, member.client_id, member.info)

    @property
    def server(self):
        """The ``server`` section of the configuration in force."""
        return self.config.server


def build_runtime(
    *,
    config: RealtimeConfig,
    layer,
    presence_lease: float,
    on_subscribe: Callable[[], None] | None = None,
    on_unsubscribe: Callable[[], None] | None = None,
    hooks: Hooks | None = None,
    hooks_secret: str = "",
) -> Runtime:
    """A ``Runtime`` with the stores of ``config``'s driver: in this process (MEMORY), or in Redis, and
    the hooks over HTTP of ``server.hooks`` (signed with ``hooks_secret``) when it names a URL."""
    stats = Stats()
    urls = config.server.hooks
    http_hooks = None
    if urls.connect_url or urls.publish_url or urls.events_url:
        http_hooks = HttpHooks(urls, hooks_secret, stats=stats, max_message_size=config.server.max_message_size)
    if config.pubsub.driver != "REDIS":
        return Runtime(
            config=config,
            layer=layer,
            history=MemoryHistory(),
            presence=MemoryPresence(),
            stats=stats,
            on_subscribe=on_subscribe,
            on_unsubscribe=on_unsubscribe,
            hooks=hooks,
            http_hooks=http_hooks,
        )
    from ..state.redis import RedisHistory, redis_shards
    from ..state.redis_presence import RedisPresence

    redis_config = config.pubsub.redis
    shards = redis_shards(redis_config)
    return Runtime(
        config=config,
        layer=layer,
        history=RedisHistory(shards, redis_config.prefix, stats=stats),
        presence=RedisPresence(shards, redis_config.prefix, lease=presence_lease, stats=stats),
        stats=stats,
        redis=shards,
        on_subscribe=on_subscribe,
        on_unsubscribe=on_unsubscribe,
        hooks=hooks,
        http_hooks=http_hooks,
    )


def _keepalive_due(stream) -> None:
    stream.keepalive()
