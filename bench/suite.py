"""Scenarios beyond WebSocket fan-out on one channel.

Most publish over HTTP (the orchestrator's own keep-alive client, ``http_burst``) and count
deliveries in the subscriber processes of the ``ClientPool`` (``raw`` WebSocket or ``sse``
subscribers). Server CPU comes from ``/proc``, summed over every server process of a setup, so
``/cpu-s`` (deliveries per second of server CPU) compares setups of one or two instances alike.
Every scenario takes one ``Context`` (the pool, the work dir, the options of the run).

- ``sse``: N SSE subscribers on the service's SSE channel vs the bare ASGI SSE app
  (bench/sse_baseline.py) under the same server as the service (``--asgi-server``).
- ``memory``: RSS growth of the server per idle connection (WS and SSE, service and baselines).
- ``push``: HTTP pushes with 16 keep-alive connections; pushes/s accepted and deliveries/s to
  a few WS subscribers.
- ``redis``: two service instances on one redis-server, subscribers split across them, publish
  on one; with ``layer: pubsub`` and ``layer: core``, against one instance in memory mode.
- ``channels``: many channels with a few subscribers each (fan-out machinery of bench/fanout.py,
  WebSocket publish frames dealt round-robin over the channels), against the bare baselines.
- ``publish``: publishes/s of a separate Django process through ``channels_app.publish()`` and
  ``apublish()`` in Redis mode, against HTTP push to the same instance in the same run.
- ``connect``: new WebSocket and SSE connections per second, ramping the handshakes in flight
  until the first error or a cap, for the service and the bare baselines.
- ``procs``: 1 against 2 service processes on one Redis, subscribers split, publish on one.
- ``hooks``: WebSocket client-publish throughput with no hook against a trivial async ``on_publish``
  hook (bench/hooks.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import threading
import time
from pathlib import Path

from .clients import ClientPool, make_payload
from .fanout import FanoutSettings, PhaseNames, _merge, percentiles, run_count, run_fanout, wait_idle
from .hooks import scenario_hooks
from .servers import (
    CHANNEL_ID,
    SERVERS,
    SSE_CHANNEL_ID,
    RedisServer,
    ServiceServer,
    SSEBaselineServer,
)
from .sysstat import CpuWindow, process_rss_bytes

WARMUP_TIMEOUT = 30.0


@dataclasses.dataclass
class Context:
    """What every scenario is given: the client processes, where to write, and the run's options."""

    pool: ClientPool
    work_dir: Path
    counts: list[int]  # subscriber counts (--subscribers)
    quick: bool
    log: object
    source: Path  # the service's tree: the working tree or a snapshot of --service-ref
    rounds: int
    settings: FanoutSettings  # the fan-out options, reused by the channels and procs scenarios
    channels: int = 1000
    channel_subscribers: int = 5
    connect_cap: int = 10_000
    options: argparse.Namespace | None = None  # the whole command line, for scenarios with options of their own

    @property
    def asgi_server(self) -> str:
        return self.settings.asgi_server

    def service(self, n: int, name: str, **kwargs) -> ServiceServer:
        """A service sized for ``n`` subscribers, run by ``--asgi-server``."""
        kwargs.setdefault("max_connections", n + 100)
        return ServiceServer(self.work_dir, source=self.source, name=name, server_cmd=self.asgi_server, **kwargs)


# --- HTTP publishing ---------------------------------------------------------------------------


async def _http_burst(port: int, path: str, headers: dict, wrap: bool, bodies: list[str], concurrency: int) -> dict:
    """POST every body (in order per connection) over ``concurrency`` keep-alive connections."""
    queue: asyncio.Queue = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    statuses: dict[int, int] = {}
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not queue.empty():
                text = queue.get_nowait()
                data = (json.dumps({"payload": text}) if wrap else text).encode()
                head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Content-Length: {len(data)}\r\n\r\n"
                writer.write(head.encode() + data)
                status_line = await reader.readline()
                status = int(status_line.split()[1])
                length = 0
                chunked = False
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                    elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
                        chunked = True
                if chunked:
                    while True:
                        size = int((await reader.readline()).strip() or b"0", 16)
                        await reader.readexactly(size + 2)
                        if size == 0:
                            break
                elif length:
                    await reader.readexactly(length)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    t_first = time.time()
    results = await asyncio.gather(*(one() for _ in range(concurrency)), return_exceptions=True)
    t_last = time.time()
    errors = [f"{type(r).__name__}: {r}"[:200] for r in results if isinstance(r, BaseException)]
    return {"t_first": t_first, "t_last": t_last, "statuses": statuses, "errors": errors}


def http_burst(server, bodies: list[str], concurrency: int = 8, channel_id: str = CHANNEL_ID) -> dict:
    path, headers, wrap = server.push_target(channel_id)
    return asyncio.run(_http_burst(server.port, path, headers, wrap, bodies, concurrency))


class Ticker(threading.Thread):
    """Publishes a warm-up message every 50 ms until stopped."""

    def __init__(self, server, phase: str, size: int, channel_id: str):
        super().__init__(daemon=True)
        self.server, self.phase, self.size, self.channel_id = server, phase, size, channel_id
        self.stopped = threading.Event()
        self.sent = 0

    def run(self) -> None:
        while not self.stopped.is_set():
            with contextlib.suppress(Exception):
                http_burst(self.server, [make_payload(self.phase, self.sent, self.size)], 1, self.channel_id)
            self.sent += 1
            self.stopped.wait(0.05)


# --- one setup: servers, subscribers, a publisher ------------------------------------------------


class Setup:
    """Subscribers spread over ``targets`` (server, url-maker) pairs, publishing on ``publish_on``."""

    counter = 0

    def __init__(self, pool: ClientPool, name: str, servers: list, urls, impl: str, publish_on, channel_id: str, log):
        self.pool, self.name, self.servers, self.urls, self.impl = pool, name, servers, urls, impl
        self.publish_on, self.channel_id, self.log = publish_on, channel_id, log
        self.n = 0

    def phase(self, kind: str) -> str:
        Setup.counter += 1
        return f"{kind}{Setup.counter}"

    def pids(self) -> dict[str, int]:
        return {server.name: server.pid for server in self.servers} | self.pool.pids()

    def server_cpu(self, window: dict) -> float:
        return sum(window["cores"].get(server.name) or 0.0 for server in self.servers)

    def connect(self, n: int) -> dict:
        self.n = n
        urls = self.urls(n)
        started = time.monotonic()
        parts = self.pool.call_all(
            "connect",
            timeout=60 + n / 20,
            per_worker=[{"urls": part} for part in self.pool.split(urls)],
            group=self.name,
            impl=self.impl,
            concurrency=16,
            open_timeout=30.0,
        )
        connected = sum(p["connected"] for p in parts)
        seconds = time.monotonic() - started
        self.log(f"  {self.name}: {connected}/{n} subscribers connected in {seconds:.1f} s")
        return {"connected": connected, "seconds": seconds, "errors": [e for p in parts for e in p["errors"]][:3]}

    def warmup(self) -> int:
        phase = self.phase("w")
        self.pool.call_all("arm", timeout=30, group=self.name, phase=phase, expected=1, latencies=False)
        ticker = Ticker(self.publish_on, phase, 100, self.channel_id)
        ticker.start()
        try:
            parts = self.pool.call_all(
                "wait", timeout=WARMUP_TIMEOUT + 30, group=self.name, deadline=WARMUP_TIMEOUT, idle=WARMUP_TIMEOUT
            )
        finally:
            ticker.stopped.set()
            ticker.join(5)
        live = _merge(parts)[0]["complete_connections"]
        if live < self.n:
            self.log(f"  ! {self.name}: only {live}/{self.n} subscribers received a warm-up message")
        time.sleep(0.5)
        return live

    def burst(
        self, messages: int, size: int, timeout: float, concurrency: int = 8, publisher=None, publisher_pids=None
    ) -> dict:
        """Publish ``messages`` and count deliveries; ``publisher(phase, messages, size)`` replaces the
        HTTP pushes (it returns ``t_first``, ``t_last`` and ``statuses``); its processes' CPU is measured
        under ``publisher_pids``."""
        phase = self.phase("b")
        armed = self.pool.call_all("arm", timeout=30, group=self.name, phase=phase, expected=messages, latencies=True)
        live = sum(a["target"] for a in armed)
        if publisher is None:
            bodies = [make_payload(phase, seq, size) for seq in range(messages)]

            def publisher(phase, messages, size):
                return http_burst(self.publish_on, bodies, concurrency, self.channel_id)

        with CpuWindow(self.pids() | (publisher_pids or {})) as window:
            self.pool.send_all("wait", group=self.name, deadline=timeout, idle=min(10.0, timeout))
            published = publisher(phase, messages, size)
            merged, _ = _merge(self.pool.recv_all(timeout + 30))
        cpu = window.result
        server_cores = self.server_cpu(cpu)
        elapsed = (merged["last_recv"] - published["t_first"]) if merged["received"] else None
        accepted = sum(v for k, v in published["statuses"].items() if 200 <= k < 300)
        publish_seconds = max(published["t_last"] - published["t_first"], 1e-9)
        # A publish that failed is not owed to anyone (it is counted under publish_failures).
        expected = accepted * live
        result = {
            "subscribers": live,
            "messages": messages,
            "expected": expected,
            "received": merged["received"],
            "lost": max(0, expected - merged["received"]),
            # Deliveries of publishes reported as failed (publish() raised after publishing).
            "unexpected_deliveries": max(0, merged["received"] - expected),
            "deliveries_per_s": merged["received"] / elapsed if elapsed else 0.0,
            "deliveries_per_server_cpu_s": merged["received"] / (server_cores * cpu["wall_s"])
            if server_cores
            else None,
            "pushes_accepted": accepted,
            "publish_failures": messages - accepted,
            "pushes_per_s": accepted / publish_seconds,
            "push_statuses": {str(k): v for k, v in published["statuses"].items()},
            "push_errors": published["errors"][:3],
            "server_cores": server_cores,
            "per_server_cores": {s.name: cpu["cores"].get(s.name) for s in self.servers},
            "client_cores_max": max(
                (v or 0.0 for k, v in cpu["cores"].items() if k.startswith("subscriber")), default=0.0
            ),
            "other_cores": cpu["other_cores"],
            "publisher_cores": {name: cpu["cores"].get(name) for name in publisher_pids or {}},
            "latency": merged["latency"],
            "close_codes": merged["close_codes"],
            "other_frames": merged["other_frames"],
            "other_samples": merged["other_samples"][:3],
        }
        self.log(
            f"  {self.name}: {messages} msg x {live} subs: {merged['received']:,}/{expected:,} delivered, "
            f"{result['deliveries_per_s']:,.0f}/s, {result['deliveries_per_server_cpu_s'] or 0:,.0f}/cpu-s "
            f"(servers {server_cores:.2f} cores, other {cpu['other_cores']:.2f}), "
            f"pushes {result['pushes_per_s']:,.0f}/s, p50 {merged['latency']['p50_ms'] or 0:.0f} ms"
        )
        return result

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.pool.call_all("close", timeout=60, group=self.name, close_timeout=2.0)


def burst_messages(n: int, deliveries: int) -> int:
    return max(10, min(2000, deliveries // max(n, 1)))


def _ratio(a, b):
    return a / b if a and b else None


def run_bursts(setups: list[Setup], n: int, deliveries: int, timeout: float, rounds: int) -> dict:
    """Connect + warm up every setup, then burst them in turn ``rounds`` times; median per setup."""
    results: dict[str, list[dict]] = {s.name: [] for s in setups}
    try:
        for setup in setups:
            setup.connect(n)
            setup.warmup()
        for _ in range(rounds):
            for setup in setups:
                results[setup.name].append(setup.burst(burst_messages(n, deliveries), 100, timeout))
    finally:
        for setup in setups:
            setup.close()
    return {name: median_round(rows) for name, rows in results.items()}


def median_round(rows: list[dict]) -> dict:
    ordered = sorted(rows, key=lambda r: r["deliveries_per_server_cpu_s"] or 0.0)
    chosen = dict(ordered[len(ordered) // 2])
    chosen["rounds"] = [
        {k: r[k] for k in ("deliveries_per_s", "deliveries_per_server_cpu_s", "lost", "pushes_per_s")} for r in rows
    ]
    return chosen


# --- scenarios ---------------------------------------------------------------------------------


def scenario_sse(ctx: Context) -> dict:
    service = ctx.service(max(ctx.counts), "service-sse")
    baseline = SSEBaselineServer(ctx.work_dir, server_cmd=ctx.asgi_server)
    rows = []
    try:
        service.start()
        baseline.start()
        for n in ctx.counts:
            ctx.log(f"SSE fan-out, N={n}")
            setups = [
                Setup(
                    ctx.pool, "service", [service], _urls(service.sse_url, n), "sse", service, SSE_CHANNEL_ID, ctx.log
                ),
                Setup(ctx.pool, "sse-baseline", [baseline], _urls(baseline.sse_url, n), "sse", baseline, "", ctx.log),
            ]
            deliveries = 30_000 if ctx.quick else 150_000
            by = run_bursts(setups, n, deliveries, 20.0 if ctx.quick else 120.0, ctx.rounds)
            rows.append(_pair_row(n, by, "service", "sse-baseline"))
    finally:
        service.stop()
        baseline.stop()
    return {"rows": rows, "asgi_server": ctx.asgi_server}


def _urls(maker, n: int):
    return lambda count: [maker(f"bench-{n}-{i}") for i in range(count)]


def _pair_row(n: int, by: dict, ours: str, base: str) -> dict:
    return {
        "subscribers": n,
        "results": by,
        "ratio_deliveries_per_s": _ratio(by[ours]["deliveries_per_s"], by[base]["deliveries_per_s"]),
        "ratio_per_cpu_s": _ratio(by[ours]["deliveries_per_server_cpu_s"], by[base]["deliveries_per_server_cpu_s"]),
    }


def _connect(pool, group: str, urls: list[str], impl: str, concurrency: int = 16, open_timeout: float = 30.0):
    """Open ``urls`` from every subscriber process at once; (connected, failed, first errors, wall seconds)."""
    started = time.monotonic()
    parts = pool.call_all(
        "connect",
        timeout=60 + len(urls) / 20,
        per_worker=[{"urls": part} for part in pool.split(urls)],
        group=group,
        impl=impl,
        concurrency=max(1, concurrency // len(pool.subscribers)),
        open_timeout=open_timeout,
    )
    errors: dict[str, int] = {}
    for part in parts:
        for name, count in part["errors"].items():
            errors[name] = errors.get(name, 0) + count
    connected = sum(p["connected"] for p in parts)
    return connected, sum(p["failed"] for p in parts), errors, time.monotonic() - started


def _idle_rss(pool, server, group: str, urls: list[str], impl: str, log) -> dict:
    """RSS of ``server`` before and after ``len(urls)`` idle connections (after 2 s to settle)."""
    time.sleep(1.0)
    before = process_rss_bytes(server.pid) or 0
    connected, *_ = _connect(pool, group, urls, impl)
    time.sleep(2.0)
    after = process_rss_bytes(server.pid) or 0
    with contextlib.suppress(Exception):
        pool.call_all("close", timeout=60, group=group, close_timeout=2.0)
    per = (after - before) / connected if connected else None
    growth = (after - before) / 1e6
    log(f"  {server.name} {impl}: {connected} idle connections, RSS +{growth:.1f} MB, {per or 0:,.0f} B each")
    return {"connected": connected, "rss_before": before, "rss_after": after, "bytes_per_connection": per}


def scenario_memory(ctx: Context) -> dict:
    rows = []
    for n in [1000] if ctx.quick else [1000, 5000]:
        ctx.log(f"idle memory, N={n}")
        row: dict = {"subscribers": n}
        # A fresh process per measurement, so one measurement's freed memory does not hide the next.
        service = ctx.service(n, "service-mem")
        for key, server, url_of, impl in (
            ("service_ws", service, "subscriber_url", "raw"),
            ("service_sse", service, "sse_url", "sse"),
            ("baseline_ws", SERVERS["baseline"](ctx.work_dir), "subscriber_url", "raw"),
            ("sse_baseline", SSEBaselineServer(ctx.work_dir, server_cmd=ctx.asgi_server), "sse_url", "sse"),
        ):
            try:
                server.start()
                maker = getattr(server, url_of)
                row[key] = _idle_rss(ctx.pool, server, f"mem-{key}", [maker(f"m-{i}") for i in range(n)], impl, ctx.log)
            finally:
                server.stop()
        rows.append(row)
    return {"rows": rows}


def scenario_push(ctx: Context) -> dict:
    service = ctx.service(100, "service-push")
    rows = []
    try:
        service.start()
        for subscribers in (1, 10):
            ctx.log(f"HTTP push, {subscribers} WS subscriber(s)")
            urls = _urls(service.subscriber_url, subscribers)
            setup = Setup(ctx.pool, "service", [service], urls, "raw", service, CHANNEL_ID, ctx.log)
            messages = 300 if ctx.quick else 5000
            try:
                setup.connect(subscribers)
                setup.warmup()
                results = [setup.burst(messages, 100, 60.0, concurrency=16) for _ in range(ctx.rounds)]
            finally:
                setup.close()
            rows.append({"subscribers": subscribers, "results": {"service": median_round(results)}})
    finally:
        service.stop()
    return {"rows": rows}


def scenario_redis(ctx: Context) -> dict:
    redis = RedisServer(ctx.work_dir)
    rows = []
    try:
        redis.start()
        for n in [max(ctx.counts)] if ctx.quick else ctx.counts:
            ctx.log(f"Redis mode, N={n} (split over two instances, publish on the first)")
            started = []
            try:
                memory = ctx.service(n, "memory")
                memory.start()
                started.append(memory)
                urls = _urls(memory.subscriber_url, n)
                setups = [Setup(ctx.pool, "memory", [memory], urls, "raw", memory, CHANNEL_ID, ctx.log)]
                for layer in ("pubsub", "core"):
                    pair = [
                        # Each layer its own key prefix: a history left by the other layer's burst
                        # would otherwise look like a hole to this one's hubs.
                        ctx.service(
                            3 * n,
                            f"{layer}-{i}",
                            max_connections=3 * n,
                            redis_url=redis.url(),
                            layer=layer,
                            prefix=f"bench{layer}",
                        )
                        for i in (1, 2)
                    ]
                    for server in pair:
                        server.start()
                        started.append(server)

                    def urls(count, pair=pair, n=n):
                        # Client ids are unique across setups: presence lives in the shared Redis.
                        return [pair[i % 2].subscriber_url(f"bench-{pair[0].name}-{n}-{i}") for i in range(count)]

                    setups.append(Setup(ctx.pool, f"redis-{layer}", pair, urls, "raw", pair[0], CHANNEL_ID, ctx.log))
                by = run_bursts(setups, n, 30_000 if ctx.quick else 150_000, 20.0 if ctx.quick else 120.0, ctx.rounds)
            finally:
                for server in started:
                    server.stop()
            row = {"subscribers": n, "results": by}
            for layer in ("pubsub", "core"):
                row[f"ratio_{layer}_per_cpu_s"] = _ratio(
                    by[f"redis-{layer}"]["deliveries_per_server_cpu_s"], by["memory"]["deliveries_per_server_cpu_s"]
                )
                row[f"ratio_{layer}_deliveries_per_s"] = _ratio(
                    by[f"redis-{layer}"]["deliveries_per_s"], by["memory"]["deliveries_per_s"]
                )
            rows.append(row)
    finally:
        redis.stop()
    return {"rows": rows}


# Many channels: the fixed rate is spread over the channels (200 msg/s = 1,000 deliveries/s at 5
# subscribers a channel, a small share of what either server can do), so latency is not queueing.
CHANNELS_RATE = 200.0


def scenario_channels(ctx: Context) -> dict:
    """``channels`` WS channels with ``channel_subscribers`` each; publishes dealt round-robin over them.

    Publishing uses WebSocket frames (one publishing connection per channel) rather than HTTP push:
    a push costs the service about 3 ms of CPU, which would swamp the fan-out this measures.
    """
    channels, per_channel = ctx.channels, ctx.channel_subscribers
    n = channels * per_channel
    settings = dataclasses.replace(
        ctx.settings,
        subscribers=[n],
        channels=channels,
        rate=CHANNELS_RATE,
        # 50,000 deliveries (10,000 quick): 10 (2) messages per channel at 1,000 x 5; the service
        # pays about 2 ms per publish with 1,000 channels (see docs/performance.md).
        burst_deliveries=10_000 if ctx.quick else 50_000,
        min_messages=1,
        # Each warm-up tick sends one message per channel: at 1,000 channels one tick every 2 s, so
        # the warm-up never asks more of the service than it can do (it would queue up otherwise).
        warmup_interval=max(0.05, channels * 0.002),
    )
    if ctx.settings.min_messages == ctx.settings.max_messages:  # --messages: per channel here
        settings.min_messages = settings.max_messages = ctx.settings.max_messages
    ctx.log(f"many channels: {channels} channels x {per_channel} subscribers, WebSocket publish round-robin")
    rows = run_fanout(settings, ctx.pool, ctx.work_dir, ctx.log, ctx.source)
    return {
        "channels": channels,
        "subscribers_per_channel": per_channel,
        "publish": "WebSocket frames, one publishing connection per channel, round-robin",
        "rate": CHANNELS_RATE,
        "rows": rows,
    }


def scenario_procs(ctx: Context) -> dict:
    """1 and 2 service processes on one Redis (``layer: pubsub``): subscribers split, WS publish on the first.

    Each setup has its own key prefix, so their histories and presence never mix.
    """
    redis = RedisServer(ctx.work_dir)
    rows = []
    settings = dataclasses.replace(ctx.settings, channels=0)
    phases = PhaseNames()
    try:
        redis.start()
        for n in [max(ctx.counts)] if ctx.quick else ctx.counts:
            ctx.log(f"processes per machine, N={n}: 1 and 2 service processes on Redis, publish on the first")

            def instance(name: str, prefix: str, n=n) -> ServiceServer:
                return ctx.service(n, name, redis_url=redis.url(), layer="pubsub", prefix=prefix)

            targets = {
                "1-process": [instance("procs1", "bench1")],
                "2-processes": [instance("procs2-a", "bench2"), instance("procs2-b", "bench2")],
            }
            row = run_count(targets, ctx.pool, settings, n, phases, ctx.log, ours="2-processes")
            row["scaling"] = row["ratios"].get("1-process")
            rows.append(row)
    finally:
        redis.stop()
    return {"layer": "pubsub", "rows": rows}


def _django_publisher(worker, channel: str, mode: str, concurrency: int = 16):
    """A ``Setup.burst`` publisher: ``messages`` publishes through the Python API in the Django process."""

    def publish(phase: str, messages: int, size: int) -> dict:
        done = worker.call(
            "publish",
            timeout=300,
            channel=channel,
            phase=phase,
            count=messages,
            size=size,
            mode=mode,
            concurrency=concurrency,
        )
        done["statuses"] = {200: done["sent"]}
        done["errors"] = [f"{count} x {name}" for name, count in done["errors"].items()]
        return done

    return publish


def scenario_publish(ctx: Context) -> dict:
    """publish() and apublish() from a separate Django process vs HTTP push, one Redis-mode instance.

    In memory mode another process cannot reach the server's in-process layer, so this runs in
    Redis mode: the publisher process reads the same config (same Redis, same database).
    """
    n = min(ctx.counts)
    messages = 300 if ctx.quick else 2000
    redis = RedisServer(ctx.work_dir)
    service = None
    workers: dict[str, object] = {}
    results: dict[str, dict] = {}
    try:
        redis.start()
        service = ctx.service(n, "publish", redis_url=redis.url(), layer="pubsub", prefix="benchpub")
        service.start()
        # One Django process per API: what publish() leaves bound to its per-call event loops must
        # not be mistaken for a fault of apublish().
        for name, mode in (("publish()", "sync"), ("apublish()", "async")):
            worker = workers[name] = ctx.pool.extra("django-publisher")
            worker.call("setup", timeout=120, env=service.env, source=str(service.source))
            # The first publish loads the registry and opens Redis connections: not part of any measure.
            warm = {"channel": CHANNEL_ID, "phase": "x", "count": 3, "size": 100, "mode": mode, "concurrency": 1}
            worker.call("publish", timeout=60, **warm)
        ctx.log(f"publish(): {messages} messages to {n} WS subscribers (Redis mode), against HTTP push")
        urls = _urls(service.subscriber_url, n)
        setup = Setup(ctx.pool, "publish", [service], urls, "raw", service, CHANNEL_ID, ctx.log)
        try:
            setup.connect(n)
            setup.warmup()
            runs: dict[str, list[dict]] = {"http push": [], "publish()": [], "apublish()": []}
            for _ in range(ctx.rounds):
                runs["http push"].append(setup.burst(messages, 100, 120.0, concurrency=16))
                for name, mode in (("publish()", "sync"), ("apublish()", "async")):
                    worker = workers[name]
                    publisher = _django_publisher(worker, CHANNEL_ID, mode)
                    pids = {worker.name: worker.pid}
                    runs[name].append(setup.burst(messages, 100, 120.0, publisher=publisher, publisher_pids=pids))
            results = {name: median_round(rows) for name, rows in runs.items()}
        finally:
            setup.close()
    finally:
        for worker in workers.values():
            worker.stop()
        if service is not None:
            service.stop()
        redis.stop()
    push = results.get("http push") or {}
    ratios = {
        name: {
            "publishes_per_s": _ratio(r["pushes_per_s"], push.get("pushes_per_s")),
            "deliveries_per_server_cpu_s": _ratio(
                r["deliveries_per_server_cpu_s"], push.get("deliveries_per_server_cpu_s")
            ),
        }
        for name, r in results.items()
        if name != "http push"
    }
    return {"subscribers": n, "messages": messages, "results": results, "ratios_to_http_push": ratios}


# Handshakes in flight at each step of the ramp (over all client processes).
CONNECT_LEVELS = (8, 32, 128, 512)


def _connect_ramp(ctx: Context, server, group: str, url_of, impl: str, cap: int) -> dict:
    """Open ``cap`` connections in ``len(CONNECT_LEVELS)`` steps of more handshakes in flight; stop at
    the first step with an error. Connections stay open until the end."""
    batch = max(1, cap // len(CONNECT_LEVELS))
    steps = []
    first_error = None
    opened = 0
    # A server still busy with the previous ramp's closes would be measured with them.
    idle_after = wait_idle([server], longest=30.0)
    try:
        for level in CONNECT_LEVELS:
            urls = [url_of(f"c-{group}-{opened + i}") for i in range(batch)]
            with CpuWindow({server.name: server.pid} | ctx.pool.pids()) as window:
                connected, failed, errors, seconds = _connect(ctx.pool, group, urls, impl, level, open_timeout=10.0)
            cores = window.result["cores"]
            step = {
                "in_flight": level,
                "attempted": batch,
                "connected": connected,
                "failed": failed,
                "seconds": seconds,
                "per_second": connected / seconds if seconds > 0 else None,
                "server_cores": cores.get(server.name),
                "client_cores_max": max((v or 0.0 for k, v in cores.items() if k.startswith("subscriber")), default=0),
                "other_cores": window.result["other_cores"],
                "errors": dict(list(errors.items())[:3]),
            }
            steps.append(step)
            ctx.log(
                f"  {group}: {connected}/{batch} new connections with {level} in flight in {seconds:.1f} s "
                f"({step['per_second'] or 0:,.0f}/s, server {step['server_cores'] or 0:.2f} cores)"
                + (f", {failed} failed: {next(iter(errors))}" if failed else "")
            )
            if failed and first_error is None:
                first_error = {"after_open": opened + connected, "in_flight": level, "errors": step["errors"]}
            opened += connected
            if failed:
                break
    finally:
        with contextlib.suppress(Exception):
            ctx.pool.call_all("close", timeout=120, group=group, close_timeout=2.0)
    best = max((s["per_second"] or 0.0 for s in steps), default=0.0)
    return {
        "cap": cap,
        "opened": opened,
        "best_per_second": best,
        "first_error": first_error,
        "server_idle_after_s": idle_after,
        "steps": steps,
    }


def scenario_connect(ctx: Context) -> dict:
    """Connections per second accepted, WS and SSE, service and bare baselines, until an error or the cap."""
    cap = min(ctx.connect_cap, 1000) if ctx.quick else ctx.connect_cap
    results: dict[str, dict] = {}
    service = ctx.service(cap, "service-connect")
    servers = [(name, "ws", SERVERS[name]) for name in ctx.settings.servers if name != "service"]
    plan = [("service ws", service, "subscriber_url", "raw"), ("service sse", service, "sse_url", "sse")]
    plan += [
        (f"{name} ws", cls(ctx.work_dir, server_cmd=ctx.asgi_server), "subscriber_url", "raw")
        for name, _, cls in servers
    ]
    plan.append(("sse-baseline sse", SSEBaselineServer(ctx.work_dir, server_cmd=ctx.asgi_server), "sse_url", "sse"))
    try:
        for label, server, url_attr, impl in plan:
            if not server.alive():
                server.start()
            ctx.log(f"connect rate: {label}, up to {cap} connections")
            results[label] = _connect_ramp(ctx, server, label.replace(" ", "-"), getattr(server, url_attr), impl, cap)
            if server is not service:
                server.stop()
    finally:
        for _, server, _, _ in plan:
            server.stop()
    return {"cap": cap, "levels": list(CONNECT_LEVELS), "results": results}


SCENARIOS = {
    "sse": scenario_sse,
    "memory": scenario_memory,
    "push": scenario_push,
    "redis": scenario_redis,
    "channels": scenario_channels,
    "publish": scenario_publish,
    "connect": scenario_connect,
    "procs": scenario_procs,
    "hooks": scenario_hooks,
}

__all__ = ["SCENARIOS", "Context", "percentiles"]
