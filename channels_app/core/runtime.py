"""The per-process parts of the service, built once per process from the settings.

What only this process can hold lives here: the hub and its local subscriptions, the registry
cache and the counters. History and connection slots are the service's shared state; the MEMORY
driver keeps them in this (single) process, the REDIS driver in Redis, behind the same interface.
"""

from __future__ import annotations

import weakref

from channels.layers import get_channel_layer
from django.conf import settings

from ..ops.shutdown import InFlight
from ..registry.cache import ChannelRegistry
from ..state.history import MemoryHistory
from ..state.presence import MemoryPresence
from ..stats import Stats
from .fanout_repair import FanoutRepair
from .hub import Hub, events_per_turn


class Runtime:
    """The hub, registry, history, presence and counters of this process."""

    def __init__(self, *, config, layer):
        self.config = config
        self.layer = layer
        self.stats = Stats()
        self.registry = ChannelRegistry()
        self.redis = None
        if config.pubsub.driver == "REDIS":
            from ..state.redis import RedisHistory, RedisPresence, redis_client

            redis_config = config.pubsub.redis
            self.redis = redis_client(redis_config)
            self.history = RedisHistory(self.redis, redis_config.prefix, stats=self.stats)
            self.presence = RedisPresence(
                self.redis, redis_config.prefix, lease=settings.REALTIME_PRESENCE_LEASE_SECONDS, stats=self.stats
            )
        else:
            self.history = MemoryHistory()
            self.presence = MemoryPresence()
        self.hub = Hub(
            layer=layer,
            history=self.history,
            registry=self.registry,
            stats=self.stats,
            events_per_turn=events_per_turn(config.server),
        )
        self.registry.before_load = self.hub.start
        self.fanout_repair = FanoutRepair(history=self.history, layer=layer, stats=self.stats)
        # Set when the instance starts shutting down: readiness fails, new connections are refused.
        self.draining = False
        self.in_flight = InFlight()
        # Per channel id, the queue that sends this process's publishes in runs, in offset order.
        self.publish_queues: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    @property
    def server(self):
        """The ``server`` section of the configuration in force."""
        return self.config.server


class _RuntimeHolder:
    """Builds the runtime lazily, so importing this module does no I/O."""

    def __init__(self):
        self.runtime: Runtime | None = None
        # Whether this process built the ASGI application, so its hub has subscribers to serve.
        self.serving = False

    def get(self) -> Runtime:
        if self.runtime is None:
            self.runtime = Runtime(config=settings.REALTIME, layer=get_channel_layer())
        return self.runtime

    def reset(self) -> None:
        self.runtime = None


_holder = _RuntimeHolder()


def get_runtime() -> Runtime:
    """This process's runtime, built on first use."""
    return _holder.get()


def mark_serving() -> None:
    """Record that this process serves subscribers (called where the ASGI application is built)."""
    _holder.serving = True


def serves_subscribers() -> bool:
    """Whether this process built the ASGI application (daphne, uvicorn, a test's application)."""
    return _holder.serving


def reset_runtime() -> None:
    """Forget the runtime so the next use builds a new one (tests that change settings)."""
    _holder.reset()
