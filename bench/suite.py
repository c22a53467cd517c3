"""Scenarios beyond WebSocket fan-out: SSE fan-out, idle memory, HTTP push, Redis mode.

Each publishes over HTTP (the orchestrator's own keep-alive client, ``http_burst``) and counts
deliveries in the subscriber processes of the ``ClientPool`` (``raw`` WebSocket or ``sse``
subscribers). Server CPU comes from ``/proc``, summed over every server process of a setup, so
``/cpu-s`` (deliveries per second of server CPU) compares setups of one or two instances alike.

- ``sse``: N SSE subscribers on the service's SSE channel vs the bare ASGI SSE app
  (bench/sse_baseline.py) under the same server (daphne).
- ``memory``: RSS growth of the server per idle connection (WS and SSE, service and baselines).
- ``push``: HTTP pushes with 16 keep-alive connections; pushes/s accepted and deliveries/s to
  a few WS subscribers.
- ``redis``: two service instances on one redis-server, subscribers split across them, publish
  on one; with ``layer: pubsub`` and ``layer: core``, against one instance in memory mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time

from .clients import ClientPool, make_payload
from .fanout import _merge, percentiles
from .servers import (
    CHANNEL_ID,
    SSE_CHANNEL_ID,
    BaselineServer,
    RedisServer,
    ServiceServer,
    SSEBaselineServer,
)
from .sysstat import CpuWindow, process_rss_bytes

WARMUP_TIMEOUT = 30.0


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

    def burst(self, messages: int, size: int, timeout: float, concurrency: int = 8) -> dict:
        phase = self.phase("b")
        armed = self.pool.call_all("arm", timeout=30, group=self.name, phase=phase, expected=messages, latencies=True)
        live = sum(a["target"] for a in armed)
        bodies = [make_payload(phase, seq, size) for seq in range(messages)]
        with CpuWindow(self.pids()) as window:
            self.pool.send_all("wait", group=self.name, deadline=timeout, idle=min(10.0, timeout))
            published = http_burst(self.publish_on, bodies, concurrency, self.channel_id)
            merged, _ = _merge(self.pool.recv_all(timeout + 30))
        cpu = window.result
        server_cores = self.server_cpu(cpu)
        elapsed = (merged["last_recv"] - published["t_first"]) if merged["received"] else None
        accepted = sum(v for k, v in published["statuses"].items() if 200 <= k < 300)
        publish_seconds = max(published["t_last"] - published["t_first"], 1e-9)
        expected = messages * live
        result = {
            "subscribers": live,
            "messages": messages,
            "expected": expected,
            "received": merged["received"],
            "lost": expected - merged["received"],
            "deliveries_per_s": merged["received"] / elapsed if elapsed else 0.0,
            "deliveries_per_server_cpu_s": merged["received"] / (server_cores * cpu["wall_s"])
            if server_cores
            else None,
            "pushes_accepted": accepted,
            "pushes_per_s": accepted / publish_seconds,
            "push_statuses": {str(k): v for k, v in published["statuses"].items()},
            "push_errors": published["errors"][:3],
            "server_cores": server_cores,
            "per_server_cores": {s.name: cpu["cores"].get(s.name) for s in self.servers},
            "client_cores_max": max(
                (v or 0.0 for k, v in cpu["cores"].items() if k.startswith("subscriber")), default=0.0
            ),
            "other_cores": cpu["other_cores"],
            "latency": merged["latency"],
            "close_codes": merged["close_codes"],
            "other_frames": merged["other_frames"],
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


def scenario_sse(pool, work_dir, counts, quick, log, service_source, rounds) -> dict:
    service = ServiceServer(work_dir, max_connections=max(counts) + 100, source=service_source, name="service-sse")
    baseline = SSEBaselineServer(work_dir)
    rows = []
    try:
        service.start()
        baseline.start()
        for n in counts:
            log(f"SSE fan-out, N={n}")
            setups = [
                Setup(pool, "service", [service], _urls(service.sse_url, n), "sse", service, SSE_CHANNEL_ID, log),
                Setup(pool, "sse-baseline", [baseline], _urls(baseline.sse_url, n), "sse", baseline, "", log),
            ]
            deliveries = 30_000 if quick else 150_000
            by = run_bursts(setups, n, deliveries, 20.0 if quick else 120.0, rounds)
            rows.append(_pair_row(n, by, "service", "sse-baseline"))
    finally:
        service.stop()
        baseline.stop()
    return {"rows": rows}


def _urls(maker, n: int):
    return lambda count: [maker(f"bench-{n}-{i}") for i in range(count)]


def _pair_row(n: int, by: dict, ours: str, base: str) -> dict:
    return {
        "subscribers": n,
        "results": by,
        "ratio_deliveries_per_s": _ratio(by[ours]["deliveries_per_s"], by[base]["deliveries_per_s"]),
        "ratio_per_cpu_s": _ratio(by[ours]["deliveries_per_server_cpu_s"], by[base]["deliveries_per_server_cpu_s"]),
    }


def _idle_rss(pool, server, group: str, urls: list[str], impl: str, log) -> dict:
    """RSS of ``server`` before and after ``len(urls)`` idle connections (after 2 s to settle)."""
    time.sleep(1.0)
    before = process_rss_bytes(server.pid) or 0
    parts = pool.call_all(
        "connect",
        timeout=60 + len(urls) / 20,
        per_worker=[{"urls": part} for part in pool.split(urls)],
        group=group,
        impl=impl,
        concurrency=16,
        open_timeout=30.0,
    )
    connected = sum(p["connected"] for p in parts)
    time.sleep(2.0)
    after = process_rss_bytes(server.pid) or 0
    with contextlib.suppress(Exception):
        pool.call_all("close", timeout=60, group=group, close_timeout=2.0)
    per = (after - before) / connected if connected else None
    growth = (after - before) / 1e6
    log(f"  {server.name} {impl}: {connected} idle connections, RSS +{growth:.1f} MB, {per or 0:,.0f} B each")
    return {"connected": connected, "rss_before": before, "rss_after": after, "bytes_per_connection": per}


def scenario_memory(pool, work_dir, counts, quick, log, service_source, rounds) -> dict:
    rows = []
    for n in counts:
        log(f"idle memory, N={n}")
        row: dict = {"subscribers": n}
        # A fresh process per measurement, so one measurement's freed memory does not hide the next.
        service = _service(work_dir, n, service_source, "service-mem")
        for key, server, url_of, impl in (
            ("service_ws", service, "subscriber_url", "raw"),
            ("service_sse", service, "sse_url", "sse"),
            ("baseline_ws", BaselineServer(work_dir), "subscriber_url", "raw"),
            ("sse_baseline", SSEBaselineServer(work_dir), "sse_url", "sse"),
        ):
            try:
                server.start()
                maker = getattr(server, url_of)
                row[key] = _idle_rss(pool, server, f"mem-{key}", [maker(f"m-{i}") for i in range(n)], impl, log)
            finally:
                server.stop()
        rows.append(row)
    return {"rows": rows}


def _service(work_dir, n, source, name, **kwargs) -> ServiceServer:
    return ServiceServer(work_dir, max_connections=n + 100, source=source, name=name, **kwargs)


def scenario_push(pool, work_dir, counts, quick, log, service_source, rounds) -> dict:
    service = _service(work_dir, 100, service_source, "service-push")
    rows = []
    try:
        service.start()
        for subscribers in (1, 10):
            log(f"HTTP push, {subscribers} WS subscriber(s)")
            setup = Setup(
                pool, "service", [service], _urls(service.subscriber_url, subscribers), "raw", service, CHANNEL_ID, log
            )
            messages = 300 if quick else 5000
            try:
                setup.connect(subscribers)
                setup.warmup()
                results = [setup.burst(messages, 100, 60.0, concurrency=16) for _ in range(rounds)]
            finally:
                setup.close()
            rows.append({"subscribers": subscribers, "results": {"service": median_round(results)}})
    finally:
        service.stop()
    return {"rows": rows}


def scenario_redis(pool, work_dir, counts, quick, log, service_source, rounds) -> dict:
    redis = RedisServer(work_dir)
    rows = []
    try:
        redis.start()
        for n in counts:
            log(f"Redis mode, N={n} (split over two instances, publish on the first)")
            started = []
            try:
                memory = _service(work_dir, n, service_source, "memory")
                memory.start()
                started.append(memory)
                setups = [
                    Setup(pool, "memory", [memory], _urls(memory.subscriber_url, n), "raw", memory, CHANNEL_ID, log)
                ]
                for layer in ("pubsub", "core"):
                    pair = [
                        # The channel's connection count is shared in Redis by every setup of this run.
                        _service(work_dir, 3 * n, service_source, f"{layer}-{i}", redis_url=redis.url(), layer=layer)
                        for i in (1, 2)
                    ]
                    for server in pair:
                        server.start()
                        started.append(server)

                    def urls(count, pair=pair, n=n):
                        # Client ids are unique across setups: presence lives in the shared Redis.
                        return [pair[i % 2].subscriber_url(f"bench-{pair[0].name}-{n}-{i}") for i in range(count)]

                    setups.append(Setup(pool, f"redis-{layer}", pair, urls, "raw", pair[0], CHANNEL_ID, log))
                by = run_bursts(setups, n, 30_000 if quick else 150_000, 20.0 if quick else 120.0, rounds)
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


SCENARIOS = {"sse": scenario_sse, "memory": scenario_memory, "push": scenario_push, "redis": scenario_redis}

__all__ = ["SCENARIOS", "percentiles"]
