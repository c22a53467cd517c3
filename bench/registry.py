"""``python -m bench.registry``: the channel registry with a million channels in PostgreSQL.

Creates a fresh PostgreSQL database and fills it with ``--channels`` channels: the first
``--api-channels`` through the HTTP API (``POST /api/v1/channels``, to prove that path and measure
its rate), the rest in one ``INSERT ... SELECT`` copying an API-made row (the API path at ~1M
channels would take over an hour here). Then, for each configuration, it starts a real daphne on
that database and measures:

- start-up: from spawning the server to the first channel looked up (a preflight) and the first
  subscriber accepted (the old cache loads every channel on the first lookup, so ``/readyz`` alone
  would hide the cost);
- RSS after start-up and after the lookups;
- connect time of a real WebSocket handshake, uncached (a channel this process never looked up)
  and cached (the same channel again), in pairs, p50 and p99, and their difference;
- a burst of concurrent connects to uncached channels (the misses share queries);
- the time to refuse an unknown channel name (close 4404), each name new.

Configurations, one process each, in the same run: the old load-everything registry (the code at
``--baseline-ref``, skipped if that commit is not in the clone), this code with the cache larger
than the registry (loaded whole at start), and this code with a bounded lazy cache
(``--cache-size``). It prints the figures, the ratios to the old code, and the targets:
start-up under 5 s, and an uncached connect under 5 ms more than a cached one (p50 and p99).
Heavy: wrap a full run in ``flock /tmp/bench.lock``. Results: docs/performance-registry.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import websockets

from bench.servers import API_KEY, snapshot, spawn, stop_child, work_directory
from tests.support.liveserver import server_command
from tests.support.processes import ROOT, base_environment, free_port, manage, resident_kib

logger = logging.getLogger(__name__)

POSTGRES = "postgresql://postgres@127.0.0.1:5432"
# The last commit whose registry cache loaded every active channel in one query.
OLD_REGISTRY_REF = "caf915c"
START_UP_TARGET_SECONDS = 5.0
UNCACHED_EXTRA_TARGET_MS = 5.0
START_TIMEOUT = 180.0
CONFIG = 'server:\n  allow_create_new_channels: true\npubsub:\n  driver: "MEMORY"\n'
# Time the unknown-name samples may take in one configuration (the old code reloads every channel
# for an unknown name, once a second).
UNKNOWN_BUDGET_SECONDS = 60.0


def channel_id(index: int) -> str:
    """The id (and name) of channel ``index``."""
    return f"user-{index:07d}"


@dataclass
class Measurement:
    """What one configuration measured; times in ms unless named in seconds."""

    label: str
    cache_size: int | None
    listening_s: float = 0.0
    start_up_s: float = 0.0
    rss_start_mib: float = 0.0
    rss_end_mib: float = 0.0
    uncached_ms: list[float] = field(default_factory=list)
    cached_ms: list[float] = field(default_factory=list)
    burst_uncached_ms: list[float] = field(default_factory=list)
    burst_cached_ms: list[float] = field(default_factory=list)
    unknown_ms: list[float] = field(default_factory=list)
    unknown_dropped: int = 0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """The figures printed and written with ``--json``."""
        extra = [uncached - cached for uncached, cached in zip(self.uncached_ms, self.cached_ms, strict=True)]
        return {
            "label": self.label,
            "cache_size": self.cache_size,
            "listening_s": round(self.listening_s, 3),
            "start_up_s": round(self.start_up_s, 3),
            "rss_start_mib": round(self.rss_start_mib, 1),
            "rss_end_mib": round(self.rss_end_mib, 1),
            "cached_p50_ms": percentile(self.cached_ms, 50),
            "cached_p99_ms": percentile(self.cached_ms, 99),
            "uncached_p50_ms": percentile(self.uncached_ms, 50),
            "uncached_p99_ms": percentile(self.uncached_ms, 99),
            "extra_p50_ms": round(percentile(self.uncached_ms, 50) - percentile(self.cached_ms, 50), 3),
            "extra_p99_ms": round(percentile(self.uncached_ms, 99) - percentile(self.cached_ms, 99), 3),
            "pair_extra_median_ms": round(statistics.median(extra), 3) if extra else 0.0,
            "burst_uncached_p50_ms": percentile(self.burst_uncached_ms, 50),
            "burst_uncached_p99_ms": percentile(self.burst_uncached_ms, 99),
            "burst_cached_p50_ms": percentile(self.burst_cached_ms, 50),
            "burst_cached_p99_ms": percentile(self.burst_cached_ms, 99),
            "unknown_p50_ms": percentile(self.unknown_ms, 50),
            "unknown_max_ms": round(max(self.unknown_ms), 3) if self.unknown_ms else 0.0,
            "unknown_samples": len(self.unknown_ms),
            "unknown_dropped": self.unknown_dropped,
            "errors": self.errors[:5],
        }


def percentile(values: list[float], pct: float) -> float:
    """The ``pct`` percentile of ``values`` (nearest rank), 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return round(ordered[rank], 3)


def create_database() -> str:
    """A fresh PostgreSQL database for this run; its name."""
    name = f"realtime_bench_registry_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return name


def drop_database(name: str) -> None:
    """Drop the run's database, whoever is still connected."""
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def bulk_insert(database: str, *, template_id: str, first: int, last: int) -> float:
    """Insert channels ``first``..``last`` as copies of the API-made channel ``template_id``; seconds taken."""
    started = time.perf_counter()
    with psycopg.connect(f"{POSTGRES}/{database}", autocommit=True) as connection:
        columns = [
            row[0]
            for row in connection.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'channels_app_channel' "
                "AND column_name NOT IN ('id', 'name', 'public_id') ORDER BY ordinal_position"
            )
        ]
        copied = ", ".join(columns)
        identifier = "'user-' || lpad(g::text, 7, '0')"
        connection.execute(
            f"INSERT INTO channels_app_channel (name, public_id, {copied}) "
            f"SELECT {identifier}, {identifier}, {copied} "
            "FROM channels_app_channel t, generate_series(%s::int, %s::int) g WHERE t.public_id = %s",
            [first, last, template_id],
        )
        connection.execute("ANALYZE channels_app_channel")
    return time.perf_counter() - started


def server_environment(work: Path, database: str, cache_size: int | None) -> dict[str, str]:
    """The server's environment: PostgreSQL, MEMORY driver, the bench's API key, the cache size."""
    config_path = work / "realtime.config.yaml"
    config_path.write_text(CONFIG)
    env = base_environment(
        CONFIG_FOLDER_PATH=str(config_path),
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{database}",
        REALTIME_API_KEYS=API_KEY,
        REALTIME_DATA_DIR=str(work),
        LOG_LEVEL="WARNING",
    )
    if cache_size is not None:
        env["REALTIME_REGISTRY_CACHE_SIZE"] = str(cache_size)
    return env


class Server:
    """One daphne serving ``code`` (a project folder) on a free port."""

    def __init__(self, *, code: Path, env: dict[str, str], log_path: Path):
        self.port = free_port()
        self.started = time.perf_counter()
        self.process = spawn(
            server_command("daphne", port=self.port, env=env, extra_args=[]), log_path=log_path, env=env, cwd=code
        )
        self.log_path = log_path

    @property
    def http(self) -> str:
        """The base URL of its HTTP API."""
        return f"http://127.0.0.1:{self.port}"

    def url(self, channel: str) -> str:
        """A subscriber's WebSocket URL for ``channel``."""
        return f"ws://127.0.0.1:{self.port}/api/v1/channels/{channel}?clientId=bench-{uuid.uuid4().hex[:8]}"

    def wait_listening(self) -> float:
        """Seconds from spawn until ``/healthz`` answers."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.http}/healthz", timeout=1).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"the server did not start within {START_TIMEOUT:.0f} s")

    def rss_mib(self) -> float:
        """Its resident memory in MiB."""
        return resident_kib(self.process.pid) / 1024

    def stop(self) -> None:
        """Stop it."""
        stop_child(self.process)


async def connect_ms(server: Server, channel: str) -> float:
    """Milliseconds for a real WebSocket handshake to ``channel`` to complete; then close."""
    started = time.perf_counter()
    async with websockets.connect(server.url(channel), open_timeout=START_TIMEOUT, close_timeout=5):
        elapsed = (time.perf_counter() - started) * 1000
    return elapsed


async def refused_ms(server: Server, channel: str) -> tuple[float, bool]:
    """Milliseconds until a connect to an unknown ``channel`` is refused (close 4404), and whether it was
    dropped instead: daphne drops a handshake the application has not answered within 5 s."""
    started = time.perf_counter()
    try:
        async with websockets.connect(server.url(channel), open_timeout=START_TIMEOUT, close_timeout=5) as socket:
            try:
                while True:
                    frame = await asyncio.wait_for(socket.recv(), START_TIMEOUT)
                    if '"close"' in frame:
                        break
            except websockets.ConnectionClosed as closed:
                if closed.rcvd is None or closed.rcvd.code != 4404:
                    raise RuntimeError(f"expected close 4404 for {channel!r}, got {closed.rcvd}") from None
    except websockets.InvalidMessage:
        return (time.perf_counter() - started) * 1000, True
    return (time.perf_counter() - started) * 1000, False


async def create_through_api(http: str, count: int, concurrency: int = 8) -> float:
    """Create channels 0..``count``-1 with ``POST /api/v1/channels``; seconds taken."""
    queue = iter(range(count))
    started = time.perf_counter()

    async def creator(client: httpx.AsyncClient) -> None:
        for index in queue:
            response = await client.post("/api/v1/channels", json={"id": channel_id(index), "type": "WS"})
            if response.status_code != 201:
                raise RuntimeError(f"creating {channel_id(index)}: {response.status_code} {response.text[:200]}")

    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=http, headers=headers, timeout=30) as client:
        await asyncio.gather(*(creator(client) for _ in range(concurrency)))
    return time.perf_counter() - started


async def measure(
    measurement: Measurement, server: Server, *, samples: list[int], burst: list[int], unknown: int
) -> None:
    """Fill ``measurement`` from the running ``server``."""
    measurement.listening_s = server.wait_listening()
    # The first lookup through the preflight (GET ...?upgrade=0): daphne drops a WebSocket handshake the
    # application has not answered within 5 s, and while the old registry loads every channel each
    # dropped connect cancels the load it was waiting for, so a WebSocket alone might never get in.
    async with httpx.AsyncClient(base_url=server.http, timeout=START_TIMEOUT) as client:
        preflight = await client.get(f"/api/v1/channels/{channel_id(0)}?upgrade=0")
    if preflight.status_code != 200:
        raise RuntimeError(f"preflight of {channel_id(0)}: {preflight.status_code} {preflight.text[:200]}")
    await connect_ms(server, channel_id(0))
    measurement.start_up_s = time.perf_counter() - server.started
    measurement.rss_start_mib = server.rss_mib()
    for index in samples:
        measurement.uncached_ms.append(await connect_ms(server, channel_id(index)))
        measurement.cached_ms.append(await connect_ms(server, channel_id(index)))
    for target in (measurement.burst_uncached_ms, measurement.burst_cached_ms):
        target.extend(await asyncio.gather(*(connect_ms(server, channel_id(index)) for index in burst)))
    deadline = time.perf_counter() + UNKNOWN_BUDGET_SECONDS
    for attempt in range(unknown):
        if time.perf_counter() > deadline:
            measurement.errors.append(f"unknown names: stopped after {attempt} within {UNKNOWN_BUDGET_SECONDS:.0f} s")
            break
        elapsed, dropped = await refused_ms(server, f"nobody-{uuid.uuid4().hex[:12]}")
        measurement.unknown_ms.append(elapsed)
        measurement.unknown_dropped += dropped
        # Past the old registry's once-a-second reload limit, so each name is a first miss.
        await asyncio.sleep(1.05)
    measurement.rss_end_mib = server.rss_mib()


def run(args: argparse.Namespace) -> dict:
    """Create the registry, measure each configuration, print the report; return the results."""
    work = work_directory(args.keep)
    if args.reuse_database:
        return _run(args, work, args.reuse_database)
    database = create_database()
    try:
        return _run(args, work, database)
    finally:
        drop_database(database)


def fill(work: Path, database: str, *, api_count: int, channels: int) -> tuple[float, float]:
    """Migrate ``database`` and create its channels: ``api_count`` through the API, the rest in bulk; the
    seconds each part took."""
    env = server_environment(work, database, None)
    manage("migrate", "--noinput", env=env)
    creator = Server(code=ROOT, env=env, log_path=work / "create.log")
    try:
        creator.wait_listening()
        api_seconds = asyncio.run(create_through_api(creator.http, api_count))
    finally:
        creator.stop()
    return api_seconds, bulk_insert(database, template_id=channel_id(0), first=api_count, last=channels - 1)


def _run(args: argparse.Namespace, work: Path, database: str) -> dict:
    api_count = min(args.api_channels, args.channels)
    if args.reuse_database:
        api_seconds = bulk_seconds = float("nan")
    else:
        api_seconds, bulk_seconds = fill(work, database, api_count=api_count, channels=args.channels)
    if args.reuse_database:
        print(f"registry: {args.channels:,} channels in {database}, filled by an earlier run", flush=True)
    else:
        print(
            f"registry: {args.channels:,} channels; {api_count:,} through the API in {api_seconds:.1f} s "
            f"({api_count / api_seconds:,.0f}/s), {args.channels - api_count:,} in bulk in {bulk_seconds:.1f} s",
            flush=True,
        )
    configurations: list[tuple[str, Path, int | None]] = []
    if args.baseline_ref and not args.lazy_only:
        try:
            commit = snapshot(args.baseline_ref, work / "old")
            configurations.append((f"old registry ({commit[:7]}), loads every channel", work / "old", None))
        except subprocess.CalledProcessError:
            print(f"registry: {args.baseline_ref} is not in this clone; the old registry is not measured")
    if not args.lazy_only:
        configurations.append(("this registry, cache above the channel count", ROOT, args.channels + 1))
    configurations.append((f"this registry, lazy LRU of {args.cache_size:,}", ROOT, args.cache_size))
    picker = random.Random(args.seed)
    chosen = picker.sample(range(1, args.channels), min(args.samples + args.burst, args.channels - 1))
    samples, burst = chosen[: args.samples], chosen[args.samples :]
    results = []
    for label, code, cache_size in configurations:
        measurement = Measurement(label, cache_size)
        server = Server(code=code, env=server_environment(work, database, cache_size), log_path=work / "server.log")
        try:
            asyncio.run(measure(measurement, server, samples=samples, burst=burst, unknown=args.unknown))
        except Exception as exc:
            measurement.errors.append(f"{exc.__class__.__name__}: {exc}")
        finally:
            server.stop()
        results.append(measurement.summary())
        print(json.dumps(results[-1]), flush=True)
    report = {
        "database": database,
        "channels": args.channels,
        "api_channels": api_count,
        "api_create_per_second": round(api_count / api_seconds, 1),
        "bulk_seconds": round(bulk_seconds, 1),
        "samples": len(samples),
        "burst": len(burst),
        "results": results,
    }
    print_report(report)
    return report


def print_report(report: dict) -> None:
    """The table, the ratios to the first configuration, and each target PASS or FAIL."""
    results = report["results"]
    rows = [
        ("start-up to first subscriber (s)", "start_up_s"),
        ("server listening (s)", "listening_s"),
        ("RSS after start-up (MiB)", "rss_start_mib"),
        ("RSS after the lookups (MiB)", "rss_end_mib"),
        ("connect, cached p50 (ms)", "cached_p50_ms"),
        ("connect, cached p99 (ms)", "cached_p99_ms"),
        ("connect, uncached p50 (ms)", "uncached_p50_ms"),
        ("connect, uncached p99 (ms)", "uncached_p99_ms"),
        ("uncached - cached p50 (ms)", "extra_p50_ms"),
        ("uncached - cached p99 (ms)", "extra_p99_ms"),
        (f"burst of {report['burst']}, uncached p99 (ms)", "burst_uncached_p99_ms"),
        (f"burst of {report['burst']}, cached p99 (ms)", "burst_cached_p99_ms"),
        ("unknown name refused p50 (ms)", "unknown_p50_ms"),
        ("unknown name refused max (ms)", "unknown_max_ms"),
        ("unknown names dropped, not refused", "unknown_dropped"),
    ]
    print(f"\nregistry at {report['channels']:,} channels ({report['samples']} connect pairs per configuration)")
    for index, result in enumerate(results):
        print(f"  [{index}] {result['label']}" + (f"  errors: {result['errors']}" if result["errors"] else ""))
    print(f"  {'':36}" + "".join(f"{f'[{index}]':>12}" for index in range(len(results))))
    for title, key in rows:
        print(f"  {title:36}" + "".join(f"{result[key]:>12,.2f}" for result in results))
    baseline, lazy = results[0], results[-1]
    if len(results) > 1:
        print(f"\nratios, [{len(results) - 1}] / [0]:")
        for title, key in (
            ("start-up", "start_up_s"),
            ("RSS after the lookups", "rss_end_mib"),
            ("unknown name p50", "unknown_p50_ms"),
        ):
            ratio = lazy[key] / baseline[key] if baseline[key] else float("nan")
            print(f"  {title:24} {ratio:8.3f}")
    extra = UNCACHED_EXTRA_TARGET_MS
    checks = [
        (f"start-up under {START_UP_TARGET_SECONDS:.0f} s", lazy["start_up_s"], START_UP_TARGET_SECONDS),
        *(
            (f"uncached - cached {pct} under {UNCACHED_EXTRA_TARGET_MS:.0f} ms", lazy[f"extra_{pct}_ms"], extra)
            for pct in ("p50", "p99")
        ),
    ]
    print(f"\ntargets ({lazy['label']}):")
    for title, value, limit in checks:
        verdict = "PASS" if value < limit and not lazy["errors"] else "FAIL"
        print(f"  {verdict}  {title}: {value:.2f}")


def main(argv: list[str] | None = None) -> None:
    """Parse the options and run."""
    parser = argparse.ArgumentParser(prog="python -m bench.registry", description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=1_000_000, help="channels in the registry")
    parser.add_argument("--api-channels", type=int, default=2_000, help="of those, created through the HTTP API")
    parser.add_argument("--cache-size", type=int, default=100_000, help="REALTIME_REGISTRY_CACHE_SIZE of the lazy run")
    parser.add_argument("--samples", type=int, default=300, help="uncached/cached connect pairs")
    parser.add_argument("--burst", type=int, default=100, help="concurrent connects to uncached channels")
    parser.add_argument("--unknown", type=int, default=10, help="connects to unknown names")
    parser.add_argument("--baseline-ref", default=OLD_REGISTRY_REF, help="git ref of the old registry ('' skips it)")
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument(
        "--lazy-only", action="store_true", help="measure the lazy cache alone (a light run: no baselines, no ratios)"
    )
    parser.add_argument(
        "--reuse-database", metavar="NAME", help="measure a database an earlier run filled (and left: not dropped)"
    )
    parser.add_argument("--keep", type=Path, help="keep configs and logs in this folder")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.channels < 2 or args.samples + args.burst >= args.channels:
        parser.error("--channels must exceed --samples + --burst")
    report = run(args)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
