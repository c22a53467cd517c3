"""``/metrics`` in Prometheus text format.

Values are read at scrape time from this process's runtime: its counters (``stats.py``), its
live connections per channel and transport (from the hub), and the latency histogram. Set
``METRICS_TOKEN`` to require ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .. import counters
from ..core.runtime import Runtime
from .auth import bearer_token

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
        "Hook calls that raised, answered something invalid (error) or overran their timeout (timeout).",
        ("hook", "reason"),
    ),
}


class RuntimeCollector:
    """Turns a runtime's counters and hub state into metric families."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def collect(self):
        counters = self.runtime.stats.counters()
        for name, (metric, documentation) in _PLAIN_COUNTERS.items():
            yield CounterMetricFamily(metric, documentation, value=counters.get(name, 0))
        for prefix, (metric, documentation, labels) in _LABELLED_COUNTERS.items():
            family = CounterMetricFamily(metric, documentation, labels=labels)
            for name, value in sorted(counters.items()):
                if name.startswith(prefix):
                    family.add_metric(name[len(prefix) :].split(":", len(labels) - 1), value)
            yield family
        connections = GaugeMetricFamily(
            "realtime_connections", "Open subscriptions on this instance.", labels=["channel", "transport"]
        )
        for (channel_id, transport), count in sorted(self.runtime.hub.local_counts().items()):
            connections.add_metric([channel_id, transport], count)
        yield connections
        latency = self.runtime.stats.latency
        histogram = HistogramMetricFamily(
            "realtime_publish_to_deliver_seconds", "Time from publish until the message reached its subscribers."
        )
        histogram.add_metric([], latency.cumulative(), sum_value=latency.total)
        yield histogram


def metrics(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``: Prometheus text exposition."""
    expected = settings.METRICS_TOKEN
    if expected:
        presented = bearer_token(request.headers.get("Authorization")) or ""
        if not hmac.compare_digest(presented.encode(), expected.encode()):
            return JsonResponse(
                {"error": "metrics_token_required", "message": "Send Authorization: Bearer <METRICS_TOKEN>."},
                status=401,
            )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(request.realtime))
    return HttpResponse(generate_latest(registry), content_type="text/plain; version=0.0.4; charset=utf-8")
