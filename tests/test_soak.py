"""Soak: steady load on one daphne for ``SOAK_SECONDS`` (30 in CI; set e.g. SOAK_SECONDS=600 for longer).

20 WebSocket and 10 event-stream subscribers follow two channels fed over the HTTP API at a steady
rate, while one client subscribes to a third, busier channel and never reads. Checked:

- every acknowledged push reached every steady subscriber, in order, once; the server's counters
  agree (``realtime_messages_published_total``, ``realtime_deliveries_total``) and
  ``realtime_messages_lost_total`` stays 0;
- the client that never read was cut off and counted (``realtime_slow_consumer_disconnects_total``),
  and everything it missed is still recoverable from history;
- memory stays flat and latency steady from the first third of the run to the last (the busy
  channel, whose history keeps every 24 KiB message, is fed only during the first quarter).

Then connection churn (moved from test_hardening_churn.py): thousands of connect/disconnect cycles
leave a daphne where it started.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time

import httpx
import pytest
import websockets

from tests.support.auth import API_KEY
from tests.support.clients import connections
from tests.support.configs import memory_config
from tests.support.processes import open_fds, resident_kib
from tests.support.traffic import Publisher, Subscriber, delivery_report, settle, stop_all
from tests.support.wire import handshake

pytestmark = pytest.mark.soak
SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "30"))
RATE = 40.0
CONFIG = (
    memory_config(max_pending_bytes=262144, history_size=500)
    + """
  soak: {id: "soak-1", type: "WS", max_of_channel_connections: 100}
  soak-feed: {id: "soak-feed-1", type: "SSE", max_of_channel_connections: 100}
  soak-busy: {id: "soak-busy-1", type: "WS", max_of_channel_connections: 10, history_size: 100000}
"""
)


def counter(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


async def read_stream(server, channel: str, client_id: str, received: list[dict], ready: asyncio.Event) -> None:
    """An event-stream subscriber that records every message (it is never cut off in this test)."""
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client,
        client.stream("GET", server.channel_url(channel, scheme="http", clientId=client_id)) as stream,
    ):
        async for line in stream.aiter_lines():
            if line == "event: stream-open":
                ready.set()
            elif line.startswith("data: ") and '"payload"' in line:
                message = json.loads(line[6:])
                message["received_at"] = time.time()
                received.append(message)


@pytest.mark.timeout(SOAK_SECONDS * 3 + 120)
def test_soak_steady_load(start_server):
    server = start_server(CONFIG, env={"REALTIME_API_KEYS": API_KEY})
    pid = server.process.pid

    async def scenario():
        ws_subscribers = [Subscriber(servers=[server], channel="soak-1", client_id=f"w{i}") for i in range(20)]
        tasks = [asyncio.create_task(s.run()) for s in ws_subscribers]
        streams = {f"s{i}": [] for i in range(10)}
        ready = {client: asyncio.Event() for client in streams}
        stream_tasks = [
            asyncio.create_task(read_stream(server, "soak-feed-1", client, received, ready[client]))
            for client, received in streams.items()
        ]
        await asyncio.wait_for(asyncio.gather(*(s.connected.wait() for s in ws_subscribers)), 10)
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in ready.values())), 10)
        stalled = await asyncio.to_thread(
            handshake, server, "/api/v1/channels/soak-busy-1?clientId=stalled", rcvbuf=4096
        )
        metrics_before = (await asyncio.to_thread(httpx.get, f"{server.http}/metrics")).text

        publishers = [
            Publisher(servers=[server], channel="soak-1", api_key=API_KEY, rate=RATE),
            Publisher(servers=[server], channel="soak-feed-1", api_key=API_KEY, rate=RATE),
        ]
        busy = Publisher(servers=[server], channel="soak-busy-1", api_key=API_KEY, rate=RATE)
        # 7 MiB over the first quarter of a 30 s run: past what the kernel takes for a socket
        # that is never read (about 2.8 MiB on loopback) and the 256 KiB bound after it.
        busy_payload = "b" * 24576

        async def publish_busy():
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5) as client:
                started = time.monotonic()
                index = 0
                while not busy._stop:
                    response = await client.post(
                        f"{server.http}/api/v1/channels/soak-busy-1/messages",
                        json={"payload": f"{index:06d}{busy_payload}"},
                    )
                    assert response.status_code == 201
                    busy.acknowledged.append((index, "", response.json()))
                    index += 1
                    await asyncio.sleep(max(0.0, started + index / RATE - time.monotonic()))

        publishing = [asyncio.create_task(p.run()) for p in publishers] + [asyncio.create_task(publish_busy())]
        samples = []
        started = time.monotonic()
        while time.monotonic() - started < SOAK_SECONDS:
            await asyncio.sleep(1)
            samples.append((time.monotonic() - started, resident_kib(pid)))
            if not busy._stop and time.monotonic() - started > SOAK_SECONDS / 4:
                # The busy channel's history (24 KiB messages, all kept) stops growing before the
                # memory samples that are compared.
                busy.stop()
        for publisher in [*publishers, busy]:
            publisher.stop()
        await asyncio.gather(*publishing)
        await settle(ws_subscribers, publishers[0])
        wanted = len(publishers[1].acknowledged)
        deadline = time.monotonic() + 15
        while any(len(received) < wanted for received in streams.values()) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        metrics_after = (await asyncio.to_thread(httpx.get, f"{server.http}/metrics")).text
        await stop_all(ws_subscribers, tasks)
        for task in stream_tasks:
            task.cancel()
        await asyncio.gather(*stream_tasks, return_exceptions=True)
        stalled.close()
        # What the stalled client missed is recoverable: page through history (the API reads any range).
        recovered = []
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10) as client:
            since = "0"
            while True:
                url = f"{server.http}/api/v1/channels/soak-busy-1/messages"
                page = (await client.get(url, params={"since": since, "limit": 200})).json()
                recovered += [m["payload"][:6] for m in page["messages"]]
                if not page["more"]:
                    break
                since = f"{page['messages'][-1]['epoch']}-{page['messages'][-1]['offset']}"
        return ws_subscribers, streams, publishers, busy, samples, metrics_before, metrics_after, recovered

    ws_subscribers, streams, publishers, busy, samples, before, after, recovered = asyncio.run(scenario())

    ws_report = delivery_report(ws_subscribers, publishers[0])
    feed_wanted = [payload for _, payload, _ in publishers[1].acknowledged]
    feed_missing = {client: len(feed_wanted) - len(received) for client, received in streams.items()}
    feed_in_order = all([m["payload"] for m in received] == feed_wanted for received in streams.values())
    published = counter(after, "realtime_messages_published_total") - counter(
        before, "realtime_messages_published_total"
    )
    deliveries = counter(after, "realtime_deliveries_total") - counter(before, "realtime_deliveries_total")
    slow_cut = counter(after, "realtime_slow_consumer_disconnects_total") - counter(
        before, "realtime_slow_consumer_disconnects_total"
    )
    lost = counter(after, "realtime_messages_lost_total")

    latencies = sorted((m["received_at"] - json.loads(m["payload"])["t"]) for r in streams.values() for m in r)
    ws_latencies = [lat for s in ws_subscribers for lat in s.latencies]
    third = max(len(samples) // 3, 1)
    rss_first = statistics.mean(rss for _, rss in samples[:third])
    rss_last = statistics.mean(rss for _, rss in samples[-third:])
    windows = latency_windows(ws_subscribers)
    summary = {
        "seconds": SOAK_SECONDS,
        "pushes": len(feed_wanted) + ws_report["published"] + len(busy.acknowledged),
        "published_metric": published,
        "deliveries_metric": deliveries,
        "delivered_ws": ws_report["delivered"],
        "delivered_sse": sum(len(r) for r in streams.values()),
        "slow_consumer_disconnects": slow_cut,
        "lost": lost,
        "recovered_from_history": len(recovered),
        "rss_kib_first_third": round(rss_first),
        "rss_kib_last_third": round(rss_last),
        "sse_latency_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "ws_latency_p99_ms_by_window": windows,
    }
    print(f"soak: {summary}")

    assert ws_report["missing"] == {} and ws_report["duplicated"] == {} and ws_report["disordered"] == {}
    assert feed_missing == dict.fromkeys(streams, 0) and feed_in_order
    assert published == len(feed_wanted) + ws_report["published"] + len(busy.acknowledged)
    # Every delivery is accounted for: the steady subscribers' messages, plus what was handed to the
    # stalled client before it was cut off (at most what was published on its channel).
    steady = ws_report["delivered"] + sum(len(r) for r in streams.values())
    assert steady <= deliveries <= steady + len(busy.acknowledged)
    assert lost == 0
    assert slow_cut == 1, "the client that never read was not cut off"
    assert recovered == [f"{index:06d}" for index in range(len(busy.acknowledged))]
    assert rss_last - rss_first < 8 * 1024, f"memory grew from {rss_first:.0f} to {rss_last:.0f} KiB"
    assert windows[-1] < max(3 * windows[0], 100), windows
    assert statistics.quantiles(ws_latencies, n=100)[98] < 1.0


def latency_windows(subscribers: list[Subscriber], count: int = 3) -> list[float]:
    """p99 publish-to-receive latency (ms) of the WebSocket subscribers in ``count`` consecutive windows."""
    windows = []
    for index in range(count):
        chunk = [
            latency
            for subscriber in subscribers
            for latency in subscriber.latencies[
                index * len(subscriber.latencies) // count : (index + 1) * len(subscriber.latencies) // count
            ]
        ]
        windows.append(round(statistics.quantiles(chunk, n=100)[98] * 1000, 1) if len(chunk) > 2 else 0.0)
    return windows


# --- Connection churn (moved from test_hardening_churn.py) --------------------------------------------------
# Connection churn: thousands of connect/disconnect cycles (WebSockets closed cleanly or dropped,
# event streams, refusals) leave a daphne where it started: memory levels off, file descriptors,
# connection counts and (REDIS driver) Redis connections and slot sets come back to their baseline.
#
# CHURN_CYCLES scales the MEMORY run (default 15,000 in CI, about 35 s, after a 2,500-cycle warm-up).

CYCLES = int(os.environ.get("CHURN_CYCLES", "15000"))
# With the GC tuning, up to COLLECT_EVERY_CLOSED (500) closed connections' garbage (about 25 KiB each)
# waits for the next full collection, so resident memory climbs in steps to that high-water mark,
# about 13 MiB above a fresh server, and stays there (40,000 cycles: +13 MiB in the first 8,000,
# then +0.2 MiB in 32,000). The warm-up lets it get most of the way before the baseline is taken.
WARMUP_CYCLES = 2500
CONCURRENCY = 40
CHURN_CONFIG = (
    memory_config(publish_rate=100000, publish_burst=100000)
    + """
  churn: {id: "churn-1", type: "WS", max_of_channel_connections: 1000}
  churn-feed: {id: "churn-feed-1", type: "SSE", max_of_channel_connections: 1000}
  tiny: {id: "tiny-1", type: "WS", max_of_channel_connections: 1}
"""
)


async def one_cycle(server, index: int, client: httpx.AsyncClient) -> str:
    """One short-lived client, of a kind drawn by its index."""
    kind = ("ws", "ws", "ws", "ws-abort", "ws-send", "sse", "sse", "refused", "ws", "ws-send")[index % 10]
    if kind.startswith("ws"):
        async with websockets.connect(server.channel_url("churn-1", clientId=f"c{index}"), open_timeout=10) as ws:
            if kind == "ws-send":
                await ws.send(f"churn {index}")
            if kind == "ws-abort":
                ws.transport.abort()  # no close frame: the TCP connection just drops
    elif kind == "sse":
        async with client.stream("GET", server.channel_url("churn-feed-1", scheme="http", clientId=f"s{index}")) as s:
            async for line in s.aiter_lines():
                if line == "event: stream-open":
                    break
    else:
        # The single slot of tiny-1 is held by the test: every one of these is refused (4422).
        async with websockets.connect(server.channel_url("tiny-1", clientId=f"r{index}"), open_timeout=10) as ws:
            await asyncio.wait_for(ws.recv(), 5)
    return kind


async def churn(server, start: int, count: int) -> dict[str, int]:
    queue = iter(range(start, start + count))
    done: dict[str, int] = {}

    async def worker():
        async with httpx.AsyncClient(timeout=10) as client:
            for index in queue:
                for _ in range(3):
                    try:
                        kind = await one_cycle(server, index, client)
                        break
                    except (OSError, EOFError, websockets.InvalidMessage, httpx.TransportError):
                        # daphne listens with Twisted's default backlog of 50: in a connection storm
                        # the kernel may drop a connection from the full accept queue; clients retry.
                        done["retried"] = done.get("retried", 0) + 1
                        await asyncio.sleep(0.05)
                else:
                    raise AssertionError(f"client {index} failed three times")
                done[kind] = done.get(kind, 0) + 1

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return done


async def settle_counts(server, channels: list[str], within: float = 10) -> None:
    deadline = time.monotonic() + within
    while True:
        counts = {channel: await asyncio.to_thread(connections, server, channel) for channel in channels}
        if not any(counts.values()):
            return
        assert time.monotonic() < deadline, counts
        await asyncio.sleep(0.1)


def run_churn(server, cycles: int, rounds: int, *, warmup: int = 500) -> dict:
    """Warm up, take the baseline, churn in rounds; return the measurements."""

    async def scenario():
        async with websockets.connect(server.channel_url("tiny-1", clientId="holder")):
            await churn(server, 0, warmup)
            await settle_counts(server, ["churn-1", "churn-feed-1"])
            await asyncio.sleep(0.5)
            pid = server.process.pid
            baseline = {"rss": resident_kib(pid), "fds": open_fds(pid)}
            rss, kinds, started = [], {}, time.monotonic()
            per_round = cycles // rounds
            for round_index in range(rounds):
                for kind, count in (await churn(server, 1000 + round_index * per_round, per_round)).items():
                    kinds[kind] = kinds.get(kind, 0) + count
                await settle_counts(server, ["churn-1", "churn-feed-1"])
                rss.append(resident_kib(pid))
            elapsed = time.monotonic() - started
        await settle_counts(server, ["churn-1", "churn-feed-1", "tiny-1"])
        await asyncio.sleep(0.5)
        return {
            "baseline": baseline,
            "rss": rss,
            "fds": open_fds(server.process.pid),
            "kinds": kinds,
            "seconds": round(elapsed, 1),
            "metrics": (await asyncio.to_thread(httpx.get, f"{server.http}/metrics")).text,
        }

    return asyncio.run(scenario())


def assert_back_to_baseline(result: dict, cycles: int, *, memory: bool = True) -> None:
    baseline, rss = result["baseline"], result["rss"]
    growth = [later - earlier for earlier, later in zip([baseline["rss"], *rss], rss, strict=False)]
    print(f"churn: {cycles} cycles in {result['seconds']} s {result['kinds']}; RSS {baseline['rss']} -> {rss} KiB; "
          f"fds {baseline['fds']} -> {result['fds']}")  # fmt: skip
    retried = result["kinds"].pop("retried", 0)
    assert sum(result["kinds"].values()) >= cycles - cycles % 10
    assert retried < cycles // 100, f"{retried} connections dropped by the accept queue"
    assert result["fds"] <= baseline["fds"] + 3, (baseline["fds"], result["fds"])
    gauges = [line for line in result["metrics"].splitlines() if line.startswith("realtime_connections{")]
    assert all(line.endswith(" 0.0") for line in gauges), gauges
    if memory:
        # Memory levels off: in the median of the last three rounds it grows by less than 1 KiB
        # per cycle. Single rounds step and saw-tooth (a full collection every 500 closed
        # subscriptions, the allocator taking a new arena: one CI run grew 7,016 KiB in one round
        # and 8 and 4 in the next two; another, after a 500-cycle warm-up, 4,484, 2,876 and 28 KiB
        # per 2,000 cycles, still on its way to the high-water mark), so one round is no verdict;
        # the leak this guards against (cycles never collected) added 4.5-9 KiB per cycle, every round.
        per_round = cycles / len(rss)
        recent = statistics.median(growth[-3:]) / per_round
        assert recent < 1.0, f"memory kept growing: {growth} KiB per round ({recent:.2f} KiB per cycle lately)"


@pytest.fixture(scope="module")
def memory_churn(start_module_server):
    """One MEMORY-driver server, churned with the service's default settings (GC tuning on)."""
    server = start_module_server(CHURN_CONFIG)
    return run_churn(server, CYCLES, rounds=5, warmup=WARMUP_CYCLES)


@pytest.mark.timeout(240)
def test_memory_driver_churn_gives_back_descriptors_and_slots(memory_churn):
    assert_back_to_baseline(memory_churn, CYCLES, memory=False)
    assert memory_churn["kinds"]["refused"] >= CYCLES // 10 - 1


def test_memory_levels_off_under_churn_with_the_default_gc_tuning(memory_churn):
    assert_back_to_baseline(memory_churn, CYCLES)


CHURN_REDIS_CONFIG = """
server:
  publish_rate: 100000
  publish_burst: 100000
pubsub:
  driver: "REDIS"
  redis: {{url: "{url}", prefix: "churn"}}
channels:
  churn: {{id: "churn-1", type: "WS", max_of_channel_connections: 1000}}
  churn-feed: {{id: "churn-feed-1", type: "SSE", max_of_channel_connections: 1000}}
  tiny: {{id: "tiny-1", type: "WS", max_of_channel_connections: 1}}
"""


@pytest.mark.timeout(240)
def test_redis_driver_churn_gives_back_redis_connections_and_slots(start_server, redis_server):
    server = start_server(CHURN_REDIS_CONFIG.format(url=redis_server.url))
    client = redis_server.client()
    # Slower than MEMORY (75 to 170 cycles/s here against 360: every connect and disconnect makes
    # Redis round trips), so fewer cycles: two runs, the second checking the first left nothing.
    cycles = max(CYCLES // 25 // 10 * 10, 200)
    result = run_churn(server, cycles, rounds=2, warmup=100)
    redis_clients = len(client.client_list())
    again = run_churn(server, cycles, rounds=2, warmup=0)
    assert_back_to_baseline(again, cycles, memory=False)
    assert len(client.client_list()) <= redis_clients + 2, (redis_clients, len(client.client_list()))
    for key in ("churn:s:{churn-1}", "churn:s:{churn-feed-1}", "churn:s:{tiny-1}"):
        assert client.zcard(key) == 0, key
    assert again["fds"] <= result["fds"] + 3
