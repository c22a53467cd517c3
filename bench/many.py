"""``python -m bench --scenario many``: N channels with two subscribers each, a steady publish rate.

Each run ("case") starts the service in MEMORY mode (one instance) or in REDIS mode (two
instances on a fresh ``redis-server``), with ``N`` channels declared in its YAML config and
synced into its database (the time this takes is reported). Subscribers use multiplexed
WebSockets (``/api/v1/connect``), up to ``server.max_channels_per_connection`` (1000 here)
channels per connection, spread over several load processes; in REDIS mode the two subscribers
of a channel sit on different instances, so every message crosses instances. A publisher process
posts ``POST /api/v1/messages`` batches to random channels at a steady rate (2,000 messages/s for
60 s by default, alternating instances), then every subscription's count is checked against what
the service accepted for its channel.

Reported per case: delivery latency (p50/p99/max), expected vs received, the servers' RSS sampled
every second (slope after warm-up), server CPU per delivery, and in REDIS mode what each
instance holds in Redis (connections, SUBSCRIBE / PSUBSCRIBE counts) and the Redis commands,
ops/s and bytes per published message during the publish phase.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

from . import many_redis
from .many_clients import SUBSCRIBE_TIMEOUT, LoadProcess
from .servers import RedisServer, ServiceServer, asgi_server_args, room_channel_id
from .sysstat import CpuWindow, process_rss_bytes

logger = logging.getLogger(__name__)

CHANNELS_PER_CONNECTION = 1000  # the highest server.max_channels_per_connection allows
SUBSCRIBERS_PER_CHANNEL = 2
TARGET_P99_S = 0.100
WARMUP_SHARE = 0.25  # RSS samples of the first quarter of the publish phase are warm-up
FLAT_SHARE = 0.02  # "flat": RSS growth over the rest of the phase under 2% of RSS
BATCH = 20  # messages per POST /api/v1/messages (at 2,000 msg/s: a batch every 10 ms)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The many scenario's options on ``python -m bench``."""
    parser.add_argument(
        "--many-channels",
        default=None,
        help="many scenario: channel counts, comma-separated (default 100000; quick 200)",
    )
    parser.add_argument(
        "--many-modes", default="memory,redis", help="many scenario: memory, redis or both (default both)"
    )
    parser.add_argument("--many-rate", type=float, default=2000.0, help="many scenario: msg/s (default 2000)")
    parser.add_argument("--many-seconds", type=float, help="many scenario: publish phase, s (default 60, quick 5)")
    parser.add_argument(
        "--many-profile", action="store_true", help="many scenario: servers under cProfile (stats in the work dir)"
    )
    parser.add_argument(
        "--many-publisher",
        choices=("http", "django"),
        default="http",
        help="many scenario: POST /api/v1/messages batches (http), or channels_app.apublish() from a\n"
        "separate Django process, as a backend would (django; REDIS mode only) (default http)",
    )
    parser.add_argument("--many-procs", type=int, default=2, help="many scenario: subscriber processes (default 2)")
    parser.add_argument(
        "--many-subscribe-concurrency",
        type=int,
        default=4,
        help="many scenario: connections each subscriber process subscribes at once (default 4)",
    )
    parser.add_argument(
        "--many-prime",
        action="store_true",
        help="many scenario: before the measured phase, publish one message to every channel in turn (at\n"
        "--many-rate), so that each channel's first-use cost is spent before memory is judged flat",
    )
    parser.add_argument(
        "--many-history-ttl",
        type=int,
        help="many scenario: server.history_ttl, s (default the service's, 3600): shorter than the warm-up\n"
        "lets history reach its steady size, rate x ttl messages, before memory is judged flat",
    )


class ManyService(ServiceServer):
    """The service with ``server.max_channels_per_connection`` at its maximum, and no sync timeout."""

    history_ttl: int | None = None

    def config_text(self) -> str:
        limit = f"server:\n  max_channels_per_connection: {CHANNELS_PER_CONNECTION}\n"
        if self.history_ttl is not None:
            limit += f"  history_ttl: {self.history_ttl}\n"
        return super().config_text().replace("server:\n", limit, 1)

    manage_timeout = 3600  # sync_channels of 100,000 channels

    profile_path: Path | None = None  # run the server under cProfile, stats written here at exit

    def start(self) -> None:
        """Start the server (under cProfile when ``profile_path`` is set)."""
        if self.profile_path is None:
            super().start()
            return
        self.prepare()
        args = asgi_server_args(self.server_cmd, "realtime_project.asgi:application")
        args = [args[0], "-m", "cProfile", "-o", str(self.profile_path), *args[1:]]
        self._launch(args, env=self.env, cwd=self.source, ready=self._answers)

    def connect_url(self, client_id: str) -> str:
        """The multiplexed WebSocket URL."""
        return f"ws://127.0.0.1:{self.port}/api/v1/connect?clientId={client_id}"

    def base_url(self) -> str:
        """The HTTP root, for the batch publish."""
        return f"http://127.0.0.1:{self.port}"


class RssSampler(threading.Thread):
    """Samples the servers' RSS once a second until ``stop()``."""

    def __init__(self, pids: dict[str, int], interval: float = 1.0):
        super().__init__(daemon=True)
        self.pids = pids
        self.interval = interval
        self.samples: list[tuple[float, dict[str, int | None]]] = []
        self.started = time.monotonic()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append(
                (time.monotonic() - self.started, {name: process_rss_bytes(pid) for name, pid in self.pids.items()})
            )
            self._halt.wait(self.interval)

    def stop(self) -> dict:
        """Stop sampling; per server the samples, and the slope after warm-up."""
        self._halt.set()
        self.join(5)
        result = {}
        for name in self.pids:
            points = [(t, rss[name]) for t, rss in self.samples if rss.get(name)]
            result[name] = rss_trend(points)
        return result


def rss_trend(points: list[tuple[float, int]]) -> dict:
    """Least-squares slope of RSS after the warm-up share of the samples, and whether it is flat."""
    if len(points) < 4:
        return {"samples_mb": [round(v / 2**20, 1) for _, v in points], "flat": None}
    after = points[int(len(points) * WARMUP_SHARE) :]
    n = len(after)
    mean_t = sum(t for t, _ in after) / n
    mean_v = sum(v for _, v in after) / n
    var = sum((t - mean_t) ** 2 for t, _ in after) or 1e-9
    slope = sum((t - mean_t) * (v - mean_v) for t, v in after) / var
    span = after[-1][0] - after[0][0]
    growth = slope * span
    return {
        "samples_mb": [round(v / 2**20, 1) for _, v in points],
        "start_mb": round(points[0][1] / 2**20, 1),
        "end_mb": round(points[-1][1] / 2**20, 1),
        "slope_kb_per_s": round(slope / 1024, 2),
        "growth_after_warmup_mb": round(growth / 2**20, 2),
        "growth_share": round(growth / mean_v, 4),
        "flat": growth < FLAT_SHARE * mean_v,
    }


def percentile(values: list[float], share: float) -> float | None:
    """The ``share`` percentile (0..1) of ``values``, nearest rank."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def plan_connections(services: list[ManyService], channels: list[str], procs: int, label: str) -> list[list]:
    """Per load process, its ``(url, channels)`` connections: a channel's two subscribers on two sides."""
    sides = [services[i % len(services)] for i in range(SUBSCRIBERS_PER_CHANNEL)]
    plans: list[list] = [[] for _ in range(procs)]
    k = 0
    for side, service in enumerate(sides):
        for start in range(0, len(channels), CHANNELS_PER_CONNECTION):
            chunk = channels[start : start + CHANNELS_PER_CONNECTION]
            plans[k % procs].append((service.connect_url(f"{label}-s{side}-c{k}"), chunk))
            k += 1
    return plans


def create_channels(service: ManyService, n: int) -> float:
    """Create the ``n`` channels in the service's database in bulk; the seconds the inserts took."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.many_create", str(n)]
        + ([] if service.history_ttl is None else [str(service.history_ttl)]),
        cwd=service.source,
        env=dict(service.env, DATABASE_URL=f"sqlite:///{service.database_path}"),
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"creating {n} channels failed:\n{done.stdout}\n{done.stderr}")
    return round(float(done.stdout.split()[-1]), 2)


def run_case(
    *,
    mode: str,
    n: int,
    rate: float,
    seconds: float,
    procs: int,
    work_dir: Path,
    log,
    profile: bool = False,
    publisher_kind: str = "http",
    history_ttl: int | None = None,
    subscribe_concurrency: int = 4,
    prime: bool = False,
) -> dict:
    """One case: ``n`` channels in ``mode`` (memory: one instance; redis: two), publish, check."""
    label = f"{mode}-{n}"
    case_dir = work_dir / label
    case_dir.mkdir(parents=True, exist_ok=True)
    redis_server = None
    services: list[ManyService] = []
    loads: list[LoadProcess] = []
    if publisher_kind == "django" and mode != "redis":
        raise ValueError("--many-publisher django needs REDIS mode: a MEMORY-mode instance hears only itself")
    result: dict = {"mode": mode, "channels": n, "rate": rate, "seconds": seconds, "publisher": publisher_kind}
    result["subscribe_concurrency"] = subscribe_concurrency
    if history_ttl is not None:
        result["history_ttl"] = history_ttl
    try:
        if mode == "redis":
            redis_server = RedisServer(case_dir)
            redis_server.start()
        count = 2 if mode == "redis" else 1
        for i in range(count):
            services.append(
                ManyService(
                    case_dir,
                    max_connections=100,
                    redis_url=redis_server.url() if redis_server else None,
                    name=f"{mode}-{i}",
                )
            )
        for service in services:
            service.history_ttl = history_ttl
            if profile:
                service.profile_path = case_dir / f"{service.name}.prof"
        started = time.monotonic()
        services[0].prepare()  # the config's two bench channels, in a fresh database
        result["prepare_s"] = round(time.monotonic() - started, 2)
        result["create_s"] = create_channels(services[0], n)
        for service in services[1:]:  # the second instance shares the first one's database
            service.env, service.database_path = dict(services[0].env), services[0].database_path
            service._prepared = True
            service.config_path = services[0].config_path
            service.env["CONFIG_FOLDER_PATH"] = str(services[0].config_path)
        result["start_s"] = {}
        for service in services:
            started = time.monotonic()
            service.start()
            result["start_s"][service.name] = round(time.monotonic() - started, 2)
        log(f"  {label}: created {n} channels in bulk in {result['create_s']} s, started in {result['start_s']}")
        pids = {service.name: service.pid for service in services}
        result["rss_idle_mb"] = {name: round(process_rss_bytes(pid) / 2**20, 1) for name, pid in pids.items()}

        channels = [room_channel_id(i) for i in range(n)]
        loads = [LoadProcess() for _ in range(procs)]
        publisher = LoadProcess()
        loads.append(publisher)
        plans = plan_connections(services, channels, procs, label)
        started = time.monotonic()
        for load, plan in zip(loads, plans, strict=False):
            load.send("subscribe", {"connections": plan, "concurrency": subscribe_concurrency})
        subscribed = [load.reply() for load, _ in zip(loads, plans, strict=False)]
        result["subscribe_s"] = round(time.monotonic() - started, 2)
        result["subscribe"] = {
            "connections": sum(s["connections"] for s in subscribed),
            "subscriptions": sum(s["subscriptions"] for s in subscribed),
            "errors": sum(s["errors"] for s in subscribed),
            "error_examples": [e for s in subscribed for e in s["error_examples"]][:5],
        }
        result["rss_subscribed_mb"] = {name: round(process_rss_bytes(pid) / 2**20, 1) for name, pid in pids.items()}
        log(
            f"  {label}: {result['subscribe']['subscriptions']} subscriptions on "
            f"{result['subscribe']['connections']} connections in {result['subscribe_s']} s "
            f"({result['subscribe']['errors']} errors); RSS {result['rss_subscribed_mb']} MB"
        )
        client = redis.Redis(port=redis_server.port) if redis_server else None
        if client is not None:
            result["redis_subscribed"] = many_redis.pubsub_snapshot(client, redis_server.port, pids)
        targets = [(service.base_url(), service.push_target()[1]) for service in services]
        for load in loads[:procs]:
            load.call("reset")
        if prime:
            result["prime"] = prime_channels(loads[:procs], publisher, targets, channels, rate)
            result["rss_primed_mb"] = {name: round(process_rss_bytes(pid) / 2**20, 1) for name, pid in pids.items()}
            log(
                f"  {label}: primed {result['prime']['accepted']} channels in {result['prime']['seconds']} s "
                f"({result['prime']['lost']} lost); RSS {result['rss_primed_mb']} MB"
            )
            for load in loads[:procs]:
                load.call("reset")

        before = many_redis.stats(client) if client is not None else None
        sampler = RssSampler(pids)
        window = CpuWindow({**pids, **{f"load-{i}": load.pid for i, load in enumerate(loads)}})
        if publisher_kind == "django":
            publisher.call("django_setup", {"env": services[0].env, "source": str(services[0].source)})
            targets = [("django", {})]
        sampler.start()
        publish_started = time.monotonic()
        with window:
            sent = publisher.call(
                "publish",
                {"targets": targets, "channels": channels, "rate": rate, "seconds": seconds, "batch": BATCH},
                timeout=seconds + 200,
            )
        cpu = window.stop()
        published = sent.pop("published")
        for load in loads[:procs]:
            load.send("collect", {"published": published, "grace": 10.0})
        collected = [load.reply(timeout=SUBSCRIBE_TIMEOUT) for load in loads[:procs]]
        # Redis is read after the deliveries settled: a publish answered 201 may still be fanned out.
        if client is not None:
            after = many_redis.stats(client)
            result["redis_publish"] = many_redis.stats_delta(
                before, after, seconds=time.monotonic() - publish_started, messages=sent["accepted"]
            )
            result["redis_after"] = many_redis.pubsub_snapshot(client, redis_server.port, pids)
        result["rss"] = sampler.stop()
        result["publish"] = sent
        result.update(delivery_summary(collected, sent["accepted"]))
        deliveries = result["received"]
        server_cpu_s = sum(cpu["cores"][name] or 0.0 for name in pids) * cpu["wall_s"]
        result["cpu"] = {
            "wall_s": round(cpu["wall_s"], 2),
            "server_cores": {name: round(cpu["cores"][name] or 0.0, 3) for name in pids},
            "load_cores": {k: round(v or 0.0, 3) for k, v in cpu["cores"].items() if k.startswith("load-")},
            "other_cores": round(cpu["other_cores"], 3),
            "server_cpu_s": round(server_cpu_s, 2),
            "server_us_per_delivery": round(1e6 * server_cpu_s / max(deliveries, 1), 1),
            "server_us_per_message": round(1e6 * server_cpu_s / max(sent["accepted"], 1), 1),
        }
        result["pids"] = {**pids, **{f"load-{i}": load.pid for i, load in enumerate(loads)}}
        if redis_server is not None:
            result["pids"]["redis"] = redis_server.pid
        result["problems"] = {service.name: service.problems() for service in services}
        result["targets"] = targets_met(result)
        if profile:
            for service in services:
                service.stop()  # cProfile writes its stats when the server exits
            result["profiles"] = {s.name: profile_top(s.profile_path) for s in services}
        return result
    finally:
        for load in loads:
            load.stop()
        for service in services:
            service.stop()
        if redis_server is not None:
            redis_server.stop()


def prime_channels(subscribers: list[LoadProcess], publisher: LoadProcess, targets, channels, rate) -> dict:
    """One message to every channel in turn, and every delivery waited for; what it took."""
    started = time.monotonic()
    sent = publisher.call(
        "publish",
        {"targets": targets, "channels": channels, "rate": rate, "seconds": len(channels) / rate, "batch": BATCH,
         "sweep": True},
        timeout=len(channels) / rate + 200,
    )  # fmt: skip
    for load in subscribers:
        load.send("collect", {"published": sent["published"], "grace": 10.0})
    collected = [load.reply(timeout=SUBSCRIBE_TIMEOUT) for load in subscribers]
    return {
        "seconds": round(time.monotonic() - started, 1),
        "accepted": sent["accepted"],
        "failures": sent["failures"],
        "received": sum(part["received"] for part in collected),
        "lost": sum(part["lost"] for part in collected),
    }


def profile_top(path: Path | None, limit: int = 25) -> str:
    """The functions with the most cumulative time in a server's cProfile stats."""
    import io
    import pstats

    if path is None or not path.exists():
        return "no profile written"
    out = io.StringIO()
    pstats.Stats(str(path), stream=out).sort_stats("tottime").print_stats(limit)
    return out.getvalue()


def delivery_summary(collected: list[dict], accepted: int) -> dict:
    """Expected vs received over every subscription, and the latency percentiles in ms."""
    import array

    latencies = array.array("d")
    for part in collected:
        latencies.frombytes(part.pop("latencies"))
    values = list(latencies)
    expected = sum(part["expected"] for part in collected)
    return {
        "expected": expected,
        "received": sum(part["received"] for part in collected),
        "lost": sum(part["lost"] for part in collected),
        "extra": sum(part["extra"] for part in collected),
        "subscriptions_wrong": sum(part["subscriptions_wrong"] for part in collected),
        "wrong_examples": [e for part in collected for e in part["wrong_examples"]][:5],
        "closed_connections": sum(part["closed"] for part in collected),
        "closed_examples": [e for part in collected for e in part["closed_examples"]][:5],
        "controls": {k: v for part in collected for k, v in part["controls"].items()},
        "control_samples": [s for part in collected for s in part["control_samples"]][:5],
        "latency_ms": {
            "p50": _ms(percentile(values, 0.50)),
            "p99": _ms(percentile(values, 0.99)),
            "max": _ms(max(values, default=None)),
            "count": len(values),
        },
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(1000 * value, 1)


def targets_met(result: dict) -> dict:
    """PASS/FAIL of each target of the issue for this case."""
    p99 = result["latency_ms"]["p99"]
    flats = [trend.get("flat") for trend in result["rss"].values()]
    return {
        "p99_under_100ms": p99 is not None and p99 < 1000 * TARGET_P99_S,
        "nothing_lost": result["lost"] == 0
        and result["extra"] == 0
        and result["expected"] > 0
        and not result["publish"]["failures"]
        and result["subscribe"]["errors"] == 0
        and result.get("prime", {}).get("lost", 0) == 0
        and not result.get("prime", {}).get("failures"),
        "memory_flat": all(flag is True for flag in flats) if flats else False,
    }


def scenario_many(ctx) -> dict:
    """Every (mode, channel count) case of the run (the ``--many-*`` options), then the tables."""
    args = ctx.options
    counts = [int(part) for part in (args.many_channels or ("200" if ctx.quick else "100000")).split(",")]
    modes = [mode.strip() for mode in args.many_modes.split(",") if mode.strip()]
    for mode in modes:
        if mode not in ("memory", "redis"):
            raise ValueError(f"--many-modes: unknown mode {mode!r}: choose memory, redis or both")
    seconds = args.many_seconds or (5.0 if ctx.quick else 60.0)
    cases = []
    for n in counts:
        for mode in modes:
            ctx.log(f"many: {mode} mode, {n} channels x 2, {args.many_rate:g} msg/s for {seconds:g} s")
            cases.append(
                run_case(
                    mode=mode,
                    n=n,
                    rate=args.many_rate,
                    seconds=seconds,
                    procs=args.many_procs,
                    work_dir=ctx.work_dir,
                    log=ctx.log,
                    profile=args.many_profile,
                    publisher_kind=args.many_publisher if mode == "redis" else "http",
                    history_ttl=args.many_history_ttl,
                    subscribe_concurrency=args.many_subscribe_concurrency,
                    prime=args.many_prime,
                )
            )
    result = {"cases": cases, "batch": BATCH, "channels_per_connection": CHANNELS_PER_CONNECTION}
    for line in render(result):
        ctx.log(line)
    return result


def render(result: dict) -> list[str]:
    """The tables of a many run: one line per case, then Redis per instance."""
    lines = [
        "",
        "Many channels (2 subscribers each, multiplexed WebSockets; HTTP batch publish to random channels):",
        f"{'mode':<7}{'publisher':<11}{'channels':>9}{'create s':>9}{'subscr s':>9}{'msg/s':>8}"
        f"{'received/expected':>22}"
        f"{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'us/deliv':>9}  RSS start->end MB (slope KB/s)   p99 lost flat",
    ]
    for case in result["cases"]:
        rss = "; ".join(
            f"{trend.get('start_mb')}->{trend.get('end_mb')} ({trend.get('slope_kb_per_s')})"
            for trend in case["rss"].values()
        )
        met = case["targets"]
        lines.append(
            f"{case['mode']:<7}{case.get('publisher', 'http'):<11}{case['channels']:>9,}"
            f"{case['create_s']:>9.1f}{case['subscribe_s']:>9.1f}"
            f"{case['publish']['rate_achieved']:>8.0f}{case['received']:>11,}/{case['expected']:<10,}"
            f"{_f(case['latency_ms']['p50'])}{_f(case['latency_ms']['p99'])}{_f(case['latency_ms']['max'])}"
            f"{case['cpu']['server_us_per_delivery']:>9.1f}  {rss}   "
            + " ".join("PASS" if met[key] else "FAIL" for key in ("p99_under_100ms", "nothing_lost", "memory_flat"))
        )
    redis_cases = [case for case in result["cases"] if "redis_publish" in case]
    if redis_cases:
        lines += [
            "",
            "Redis work (REDIS mode, two instances; per instance: Redis connections / SUBSCRIBEd channels / patterns):",
            f"{'channels':>9}  {'instance 0':<20}{'instance 1':<20}{'CHANNELS':>9}{'NUMPAT':>7}{'ops/s':>9}"
            f"{'ops/msg':>8}{'bytes/msg':>10}{'MB/s in+out':>12}  top commands (calls)",
        ]
        for case in redis_cases:
            snap, work = case["redis_subscribed"], case["redis_publish"]
            inst = [f"{v['connections']}/{v['sub']}/{v['psub']}" for v in snap["per_instance"].values()]
            top = sorted(work["commands"].items(), key=lambda item: -item[1])[:4]
            lines.append(
                f"{case['channels']:>9,}  {inst[0]:<20}{(inst[1] if len(inst) > 1 else '-'):<20}"
                f"{snap['channels']:>9,}{snap['numpat']:>7}{work['ops_per_s']:>9,.0f}{work['ops_per_message']:>8.2f}"
                f"{work['net_bytes_per_message']:>10,.0f}"
                f"{(work['net_in_bytes_per_s'] + work['net_out_bytes_per_s']) / 1e6:>12.2f}  "
                + ", ".join(f"{name} {calls:,}" for name, calls in top)
            )
    return lines


def _f(value) -> str:
    return f"{value:>8.1f}" if value is not None else f"{'-':>8}"
