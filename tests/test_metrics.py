"""The metric families of ``/metrics``, from one process's figures or from the instance's sum."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from channels_app import counters
from channels_app.http.metrics import OTHER_CHANNELS, RealtimeCollector
from channels_app.ops.metrics_snapshots import ChannelConnections, MetricsSnapshot, snapshots_sum
from channels_app.stats import LATENCY_BUCKETS


def figures(*, pid: int, published: int, channels: list[ChannelConnections], slow: int = 0) -> MetricsSnapshot:
    """``published`` messages, each opening a WebSocket and each delivered within latency bucket ``slow``."""
    buckets = [0] * (len(LATENCY_BUCKETS) + 1)
    buckets[slow] = published
    return MetricsSnapshot(
        counters={counters.MESSAGES_PUBLISHED: published, f"{counters.CONNECTIONS_OPENED}WS": published},
        latency_buckets=buckets,
        latency_sum=0.001 * published,
        latency_count=published,
        channels=channels,
        pid=pid,
    )


def exported(collector: RealtimeCollector) -> dict[str, list[tuple[dict, float]]]:
    """Sample name -> its (labels, value)s, as a scrape of ``collector`` would parse."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    samples: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def test_the_instance_sum_is_exported_with_its_process_count_and_channels_folded_on_the_sum():
    first = figures(
        pid=1,
        published=3,
        channels=[ChannelConnections("a", "alpha", 10, {"WS": 3}), ChannelConnections("b", "beta", 20, {"WS": 2})],
    )
    second = figures(
        pid=2, published=4, slow=len(LATENCY_BUCKETS), channels=[ChannelConnections("b", None, None, {"WS": 2})]
    )
    samples = exported(RealtimeCollector(snapshots_sum([first, second], stale=1), max_channels=1, summed=True))

    assert samples["realtime_messages_published_total"] == [({}, 7.0)]
    assert samples["realtime_connections_opened_total"] == [({"transport": "WS"}, 7.0)]
    # b has the most connections of the instance (4 against 3), so b is labelled and a is folded.
    assert sorted(samples["realtime_connections"], key=lambda sample: sample[0]["channel"]) == [
        ({"channel": OTHER_CHANNELS, "transport": "WS", "channel_name": OTHER_CHANNELS}, 3.0),
        ({"channel": "b", "transport": "WS", "channel_name": "beta"}, 4.0),
    ]
    assert samples["realtime_channel_connections_limit"] == [({"channel": "b", "channel_name": "beta"}, 20.0)]
    buckets = dict((labels["le"], value) for labels, value in samples["realtime_publish_to_deliver_seconds_bucket"])
    assert (buckets["0.001"], buckets["10.0"], buckets["+Inf"]) == (3.0, 3.0, 7.0)
    assert samples["realtime_publish_to_deliver_seconds_count"] == [({}, 7.0)]
    assert samples["realtime_server_processes"] == [({}, 2.0)]
    assert samples["realtime_server_processes_stale"] == [({}, 1.0)]


def test_one_process_exports_no_process_count():
    alone = figures(pid=1, published=1, channels=[ChannelConnections("a", None, None, {"SSE": 1})])
    samples = exported(RealtimeCollector(alone, max_channels=100, redis_up=True, summed=False))
    assert "realtime_server_processes" not in samples and "realtime_server_processes_stale" not in samples
    assert samples["realtime_connections"] == [({"channel": "a", "transport": "SSE", "channel_name": "a"}, 1.0)]
    assert "realtime_channel_connections_limit" not in samples  # the registry did not know the channel
    assert samples["realtime_redis_up"] == [({}, 1.0)]


def test_channels_a_process_summed_join_the_instance_other_series():
    first = figures(pid=1, published=1, channels=[ChannelConnections("a", "alpha", 10, {"WS": 5})])
    first.other_connections = {"WS": 7}
    second = figures(pid=2, published=1, channels=[ChannelConnections("a", "alpha", 10, {"WS": 1})])
    second.other_connections = {"SSE": 2}
    samples = exported(RealtimeCollector(snapshots_sum([first, second]), max_channels=1, summed=True))
    series = sorted(samples["realtime_connections"], key=lambda sample: (sample[0]["channel"], sample[0]["transport"]))
    assert series == [
        ({"channel": OTHER_CHANNELS, "transport": "SSE", "channel_name": OTHER_CHANNELS}, 2.0),
        ({"channel": OTHER_CHANNELS, "transport": "WS", "channel_name": OTHER_CHANNELS}, 7.0),
        ({"channel": "a", "transport": "WS", "channel_name": "alpha"}, 6.0),
    ]
