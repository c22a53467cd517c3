"""Connection churn: thousands of connect/disconnect cycles (WebSockets closed cleanly or dropped,
event streams, refusals) leave a daphne where it started: memory levels off, file descriptors,
connection counts and (REDIS driver) Redis connections and slot sets come back to their baseline.

``CHURN_CYCLES`` scales the MEMORY run (default 10,000 in CI, about 20 s).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

import httpx
import pytest
import websockets

from tests.support.clients import connections
from tests.support.processes import open_fds, resident_kib

CYCLES = int(os.environ.get("CHURN_CYCLES", "10000"))
CONCURRENCY = 40
CONFIG = """
server:
  publish_rate: 100000
  publish_burst: 100000
pubsub:
  driver: "MEMORY"
channels:
  churn: {id: "churn-1", type: "WS", max_of_channel_connections: 1000}
  churn-feed: {id: "churn-feed-1", type: "SSE", max_of_channel_connections: 1000}
  tiny: {id: "tiny-1", type: "WS", max_of_channel_connections: 1}
"""


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
        # and 8 and 4 in the next two), so one round is no verdict; the leak this guards against
        # (cycles never collected) added 4.5-9 KiB per cycle, every round.
        per_round = cycles / len(rss)
        recent = statistics.median(growth[-3:]) / per_round
        assert recent < 1.0, f"memory kept growing: {growth} KiB per round ({recent:.2f} KiB per cycle lately)"


@pytest.fixture(scope="module")
def memory_churn(start_module_server):
    """One MEMORY-driver server, churned with the service's default settings (GC tuning on)."""
    server = start_module_server(CONFIG)
    return run_churn(server, CYCLES, rounds=5)


@pytest.mark.timeout(240)
def test_memory_driver_churn_gives_back_descriptors_and_slots(memory_churn):
    assert_back_to_baseline(memory_churn, CYCLES, memory=False)
    assert memory_churn["kinds"]["refused"] >= CYCLES // 10 - 1


def test_memory_levels_off_under_churn_with_the_default_gc_tuning(memory_churn):
    assert_back_to_baseline(memory_churn, CYCLES)


REDIS_CONFIG = """
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
    server = start_server(REDIS_CONFIG.format(url=redis_server.url))
    client = redis_server.client()
    # Slower than MEMORY (75 to 170 cycles/s here against 360: every connect and disconnect makes
    # Redis round trips), so fewer cycles: two runs, the second checking the first left nothing.
    cycles = max(CYCLES // 25 // 10 * 10, 200)
    result = run_churn(server, cycles, rounds=2, warmup=100)
    redis_clients = len(client.client_list())
    again = run_churn(server, cycles, rounds=2, warmup=0)
    assert_back_to_baseline(again, cycles, memory=False)
    assert len(client.client_list()) <= redis_clients + 2, (redis_clients, len(client.client_list()))
    for key in ("churn:p:{churn-1}", "churn:p:{churn-feed-1}", "churn:p:{tiny-1}"):
        assert client.zcard(key) == 0, key
    assert again["fds"] <= result["fds"] + 3
