"""``/metrics`` in Prometheus text format.

Values are read at scrape time from this process's runtime: its counters (``stats.py``), its
live connections per channel and transport (from the hub) with each channel's name and limit,
the latency histogram, whether Redis answers (REDIS driver), and prometheus-client's process and
platform collectors. Set ``METRICS_TOKEN`` to require ``Authorization: Bearer <token>``.

With several server processes (``REALTIME_PROCESSES``), the counters, connections and latency are
summed over all of them from their snapshots (``ops/metrics_snapshots.py``), so a scrape of any one
describes the instance; the process and platform families stay the answering process's own.

At most ``REALTIME_METRICS_MAX_CHANNELS`` channels are labelled one by one, the busiest on this
instance; the others are summed under ``channel="_other"`` (docs/deployment.md, "Observability").
"""

from __future__ import annotations

import asyncio
import hmac
import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .. import counters
from ..core.runtime import Runtime
from ..ops.metrics_snapshots import STALE_SECONDS, MetricsSnapshot, snapshot_take
from ..stats import cumulative
from .auth import bearer_token

logger = logging.getLogger(__name__)

# The channel label of the channels past REALTIME_METRICS_MAX_CHANNELS, summed.
OTHER_CHANNELS = "_other"
# A scrape waits this long for Redis's PING before reporting it down (as /readyz does).
REDIS_PING_TIMEOUT_SECONDS = 1.0

# Counter name (counters.py) -> (metric, help); a labelled counter's prefix -> (metric, help, label
# names), the labels' values being the rest of the counter's name, separated by ":".
_PLAIN_COUNTERS = {
    counters.MESSAGES_PUBLISHED: ("realtime_messages_published_total", "Messages accepted by the publish path."),
    counters.PUBLISH_RUNS: (
        "realtime_publish_runs_total",
        "Runs of publishes recorded and sent to the layer together (messages published / runs = mean run).",
    ),
    counters.DELIVERIES: ("realtime_deliveries_total", "Messages handed to a subscriber's outbox."),
    counters.SLOW_CONSUMER_DISCONNECTS: (
        "realtime_slow_consumer_disconnects_total",
        "Connections cut off because they could not keep up (resumable from history).",
    ),
    counters.CONNECTIONS_REPLACED: (
        "realtime_connections_replaced_total",
        "Connections closed because a newer one with their clientId took the slot (duplicate_client_id: replace).",
    ),
    counters.MESSAGES_LOST: ("realtime_messages_lost_total", "Messages dropped by the layer and no longer in history."),
    counters.LAYER_GAPS: ("realtime_layer_gaps_total", "Holes in a channel's offsets noticed by the hub."),
    counters.LAYER_RECOVERED: ("realtime_layer_recovered_total", "Messages re-read from history to fill holes."),
    counters.HUB_DUPLICATES: ("realtime_hub_duplicates_total", "Repeated messages the hub discarded."),
    counters.HUB_ERRORS: ("realtime_hub_errors_total", "Channel-layer events the hub failed to handle."),
    counters.HUB_UNKNOWN_EVENTS: (
        "realtime_hub_unknown_events_total",
        "Channel-layer events of a type the hub does not know, ignored (logged as a warning).",
    ),
    counters.REGISTRY_CHANGES_HEARD: (
        "realtime_registry_changes_heard_total",
        "Channel registry changes announced through the layer (by any instance); each left this instance's cache.",
    ),
    counters.PUBLISH_ERRORS: ("realtime_publish_errors_total", "Publishes the channel layer refused."),
    counters.PUBLISH_OUTCOMES_UNKNOWN: (
        "realtime_publish_outcomes_unknown_total",
        "History appends sent to Redis and not answered in time (answered 504 publish_outcome_unknown).",
    ),
    counters.PUBLISH_OUTCOMES_RECORDED: (
        "realtime_publish_outcomes_recorded_total",
        "Messages of unanswered appends found in history afterwards, and handed to the layer then.",
    ),
    counters.PUBLISH_OUTCOMES_NOT_RECORDED: (
        "realtime_publish_outcomes_not_recorded_total",
        "Messages of unanswered appends that history turned out not to hold: never published.",
    ),
    counters.FANOUT_REPAIRED: ("realtime_fanout_repaired_total", "Recorded messages handed to the layer late."),
    counters.FANOUT_REPAIRS_ABANDONED: (
        "realtime_fanout_repairs_abandoned_total",
        "Runs of recorded messages the layer still refused after two minutes (they stay in history).",
    ),
    counters.REDIS_ERRORS: ("realtime_redis_errors_total", "Redis operations that failed."),
    counters.RESUME_GAPS: ("realtime_resume_gaps_total", "Resumes that history could not fully cover."),
    counters.HOOK_EVENTS_SENT: (
        "realtime_hook_events_sent_total",
        "Events delivered to server.hooks.events_url (answered 2xx).",
    ),
}
_LABELLED_COUNTERS = {
    counters.REFUSALS: ("realtime_refusals_total", "Connections refused, by reason.", ("reason",)),
    counters.FRAMES_REFUSED: ("realtime_frames_refused_total", "WebSocket frames refused, by reason.", ("reason",)),
    counters.CONNECTIONS_OPENED: (
        "realtime_connections_opened_total",
        "Connections admitted, by transport.",
        ("transport",),
    ),
    counters.HOOK_REJECTIONS: (
        "realtime_hook_rejections_total",
        "Connections and frames a hook refused with hooks.Reject, by hook.",
        ("hook",),
    ),
    counters.HOOK_FAILURES: (
        "realtime_hook_failures_total",
        "Hook calls that raised or answered something invalid (error), overran their timeout (timeout) or "
        "found server.hooks.max_concurrency requests in flight (busy); events_url: failed deliveries.",
        ("hook", "reason"),
    ),
    counters.HOOK_EVENTS_DROPPED: (
        "realtime_hook_events_dropped_total",
        "Events for server.hooks.events_url dropped: queue full (overflow) or every attempt failed (undelivered).",
        ("reason",),
    ),
}


class RealtimeCollector:
    """Turns a snapshot's counters, connections and latency (``ops/metrics_snapshots.py``) and Redis's state
    into metric families."""

    def __init__(self, figures: MetricsSnapshot, *, max_channels: int, redis_up: bool | None = None, summed: bool):
        """``figures`` of this process, or ``summed`` over the instance's server processes; ``redis_up`` is
        None when no Redis is used."""
        self.figures = figures
        self.labelled = figures.channels[:max_channels]
        self.others = figures.channels[max_channels:]
        self.redis_up = redis_up
        self.summed = summed

    def collect(self):
        """Every family, read now."""
        counters = self.figures.counters
        for name, (metric, documentation) in _PLAIN_COUNTERS.items():
            yield CounterMetricFamily(metric, documentation, value=counters.get(name, 0))
        for prefix, (metric, documentation, labels) in _LABELLED_COUNTERS.items():
            family = CounterMetricFamily(metric, documentation, labels=labels)
            for name, value in sorted(counters.items()):
                if name.startswith(prefix):
                    family.add_metric(name[len(prefix) :].split(":", len(labels) - 1), value)
            yield family
        yield from self._channel_families()
        histogram = HistogramMetricFamily(
            "realtime_publish_to_deliver_seconds", "Time from publish until the message reached its subscribers."
        )
        histogram.add_metric([], cumulative(self.figures.latency_buckets), sum_value=self.figures.latency_sum)
        yield histogram
        if self.redis_up is not None:
            yield GaugeMetricFamily(
                "realtime_redis_up", "1 when Redis answered PING during this scrape, else 0.", value=int(self.redis_up)
            )
        if self.summed:
            yield GaugeMetricFamily(
                "realtime_server_processes",
                "Server processes of this instance (REALTIME_PROCESSES) whose metrics this scrape sums.",
                value=self.figures.processes,
            )
            yield GaugeMetricFamily(
                "realtime_server_processes_stale",
                f"Server processes left out of this scrape's sums: no snapshot for {STALE_SECONDS:.0f}s (hung).",
                value=self.figures.stale,
            )

    def _channel_families(self):
        connections = GaugeMetricFamily(
            "realtime_connections",
            "Open subscriptions on this instance, by channel id, transport and channel name "
            f'(channels past the busiest REALTIME_METRICS_MAX_CHANNELS summed as channel="{OTHER_CHANNELS}").',
            labels=["channel", "transport", "channel_name"],
        )
        limits = GaugeMetricFamily(
            "realtime_channel_connections_limit",
            "Live connections the channel accepts (maxOfChannelConnections), for the channels labelled one by one.",
            labels=["channel", "channel_name"],
        )
        for channel in sorted(self.labelled, key=lambda channel: channel.id):
            name = channel.name if channel.name is not None else channel.id
            for transport, count in sorted(channel.connections.items()):
                connections.add_metric([channel.id, transport, name], count)
            if channel.limit is not None:
                limits.add_metric([channel.id, name], channel.limit)
        others = dict(self.figures.other_connections)
        for channel in self.others:
            for transport, count in channel.connections.items():
                others[transport] = others.get(transport, 0) + count
        for transport, count in sorted(others.items()):
            connections.add_metric([OTHER_CHANNELS, transport, OTHER_CHANNELS], count)
        yield connections
        yield limits


async def _redis_answers(runtime: Runtime) -> bool | None:
    if runtime.redis is None:
        return None
    try:
        await asyncio.wait_for(runtime.redis.ping(), REDIS_PING_TIMEOUT_SECONDS)
    except Exception as exc:
        logger.warning("metrics: Redis did not answer PING: %s", exc.__class__.__name__)
        return False
    return True


def metrics_registry(figures: MetricsSnapshot, *, redis_up: bool | None, summed: bool) -> CollectorRegistry:
    """A registry of this scrape's own: the figures' collector, and this process's process and platform collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        RealtimeCollector(
            figures, max_channels=settings.REALTIME_METRICS_MAX_CHANNELS, redis_up=redis_up, summed=summed
        )
    )
    # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ..., python_info and
    # python_gc_collections_total: the answering process's own, even when the realtime_* families
    # describe the whole instance.
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


async def _figures(runtime: Runtime) -> MetricsSnapshot:
    """The instance's figures when its server processes share snapshots, else this process's."""
    if runtime.metrics_snapshots is None:
        return await snapshot_take(runtime=runtime, keep=settings.REALTIME_METRICS_MAX_CHANNELS)
    return await runtime.metrics_snapshots.instance()


async def metrics(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``: Prometheus text exposition."""
    expected = settings.METRICS_TOKEN
    if expected:
        presented = bearer_token(request.headers.get("Authorization")) or ""
        if not hmac.compare_digest(presented.encode(), expected.encode()):
            return JsonResponse(
                {"error": "metrics_token_required", "message": "Send Authorization: Bearer <METRICS_TOKEN>."},
                status=401,
            )
    runtime = request.realtime
    figures, redis_up = await asyncio.gather(_figures(runtime), _redis_answers(runtime))
    registry = metrics_registry(figures, redis_up=redis_up, summed=runtime.metrics_snapshots is not None)
    return HttpResponse(generate_latest(registry), content_type="text/plain; version=0.0.4; charset=utf-8")
