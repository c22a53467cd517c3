"""``--scenario scale``: one server process filled to its file limit, and one machine to 100,000 subscribers.

Parts (each on fresh server processes):

- ``ws`` / ``sse``: one service process (MEMORY mode) with ``per_process`` idle WebSocket
  subscribers, then as many event streams;
- ``machine``: ``total`` WebSocket subscribers over as many service processes as it takes
  (``per_server`` each, own port), in REDIS mode (``layer: pubsub``, one throw-away
  ``redis-server``) so that one HTTP publish reaches every process.

The load clients are ``client_procs`` processes, each connecting from its own loopback source
address (127.0.0.2, 127.0.0.3, ...): one source address runs out of ephemeral ports near 28,000,
and each process stays under the 20,000 open files a process may hold here.

Each part reports the connect rate, RSS growth per connection of the servers and of the clients,
idle CPU over ``idle_seconds`` (WebSocket pings every 20 s, SSE keep-alives every 15 s), one
broadcast to everyone (time from publish to the last delivery, p50/p99 latency, expected vs
received) and what went wrong (refused connections, problem lines in the server logs). ``verdicts``
judges the issue's targets.

``python -m bench --scenario scale [--quick] [--asgi-server uvicorn]`` runs the defaults;
``python -m bench.scale --help`` sizes the run.
"""

from __future__ import annotations

import argparse
import array
import json
import logging
import math
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from . import servers
from .clients import ClientPool, make_payload
from .fanout import percentiles
from .servers import CHANNEL_ID, SSE_CHANNEL_ID, RedisServer, ServiceServer
from .sysstat import CpuWindow, process_rss_bytes

logger = logging.getLogger(__name__)

PARTS = ("ws", "sse", "machine")
FILES_PER_CLIENT = 18_000  # under the 20,000 open files of a process, with room for its own files
KB = 1000
# The targets.
MAX_KB_PER_CONNECTION = 25.0
MAX_IDLE_CORES_PER_20K = 0.10
MAX_BROADCAST_S = {"uvicorn": 3.0, "daphne": 6.0}


@dataclass
class ScaleSettings:
    """How big the run is; ``quick()`` gives the smoke-test size."""

    asgi_server: str = "daphne"
    parts: tuple[str, ...] = PARTS
    per_process: int = 19_000
    total: int = 100_000
    per_server: int = 17_000
    client_procs: int = 0  # 0: as many as the largest part needs at FILES_PER_CLIENT each
    concurrency: int = 32  # handshakes in flight per client process
    idle_seconds: float = 30.0
    open_timeout: float = 60.0
    broadcast_timeout: float = 60.0
    settle_seconds: float = 3.0

    @classmethod
    def quick(cls, **changes) -> ScaleSettings:
        """A scaled-down run: 200 per process, 400 over 2 processes, 3 s idle."""
        base = {"per_process": 200, "total": 400, "per_server": 200, "client_procs": 2, "idle_seconds": 3.0}
        base["settle_seconds"] = 1.0
        return cls(**{**base, **changes})

    def servers_needed(self) -> int:
        return math.ceil(self.total / self.per_server)

    def clients_needed(self) -> int:
        if self.client_procs:
            return self.client_procs
        largest = max(self.total if "machine" in self.parts else 0, self.per_process)
        return max(2, math.ceil(largest / FILES_PER_CLIENT))


def source_address(index: int) -> str:
    """The loopback source address of client process ``index``: 127.0.0.2, 127.0.0.3, ..."""
    return f"127.0.0.{2 + index}"


@dataclass
class Part:
    """One measured setup: its servers, how subscribers reach them, and the results."""

    name: str
    servers: list[ServiceServer]
    impl: str  # "raw" WebSocket or "sse"
    count: int
    result: dict = field(default_factory=dict)

    def urls(self) -> list[str]:
        """Subscriber URLs, dealt round-robin over the servers."""
        urls = []
        for index in range(self.count):
            server = self.servers[index % len(self.servers)]
            client_id = f"{self.name}-{index}"
            urls.append(server.sse_url(client_id) if self.impl == "sse" else server.subscriber_url(client_id))
        return urls


def _rss(pids: dict[str, int]) -> dict[str, int]:
    return {name: process_rss_bytes(pid) or 0 for name, pid in pids.items()}


def _publish(server: ServiceServer, channel: str, phase: str, size: int = 100) -> float:
    """One HTTP publish to ``channel``; returns the send time carried in the payload."""
    path, headers, wrap = server.push_target(channel)
    payload = make_payload(phase, 0, size)
    sent = float(payload.split("~")[4])
    body = json.dumps({"payload": payload} if wrap else payload)
    response = httpx.post(f"http://127.0.0.1:{server.port}{path}", content=body, headers=headers, timeout=30)
    if response.status_code >= 300:
        raise RuntimeError(f"publish refused: {response.status_code} {response.text[:300]}")
    return sent


def _connect(pool: ClientPool, part: Part, settings: ScaleSettings) -> dict:
    urls = pool.split(part.urls())
    started = time.monotonic()
    replies = pool.call_all(
        "connect",
        timeout=120 + part.count / 50,
        per_worker=[{"urls": chunk, "local_host": source_address(i)} for i, chunk in enumerate(urls)],
        group=part.name,
        impl=part.impl,
        concurrency=settings.concurrency,
        open_timeout=settings.open_timeout,
    )
    seconds = time.monotonic() - started
    errors: dict[str, int] = {}
    for reply in replies:
        for name, count in reply["errors"].items():
            errors[name] = errors.get(name, 0) + count
    connected = sum(reply["connected"] for reply in replies)
    return {
        "wanted": part.count,
        "connected": connected,
        "refused": sum(reply["failed"] for reply in replies),
        "errors": errors,
        "seconds": round(seconds, 2),
        "per_s": round(connected / seconds, 1) if seconds else None,
    }


def _deliver(pool: ClientPool, part: Part, phase: str, settings: ScaleSettings, latencies: bool) -> dict:
    """Publish one message to everyone and wait until each open connection has it (or the timeout)."""
    channel = SSE_CHANNEL_ID if part.impl == "sse" else CHANNEL_ID
    pool.call_all("arm", timeout=60, group=part.name, phase=phase, expected=1, latencies=latencies)
    sent = _publish(part.servers[0], channel, phase)
    replies = pool.call_all(
        "wait", timeout=settings.broadcast_timeout + 60, group=part.name, deadline=settings.broadcast_timeout, idle=10.0
    )
    values = array.array("d")
    for reply in replies:
        values.frombytes(reply["latencies"])
    received = sum(reply["received"] for reply in replies)
    expected = sum(reply["target"] for reply in replies)
    last = max((reply["last_recv"] for reply in replies), default=0.0)
    close_codes: dict[str, int] = {}
    for reply in replies:
        for code, count in reply["close_codes"].items():
            close_codes[str(code)] = close_codes.get(str(code), 0) + count
    return {
        "expected": expected,
        "received": received,
        "lost": expected - received,
        "connections_open": sum(reply["connections_open"] for reply in replies),
        "to_last_delivery_s": round(last - sent, 3) if last else None,
        "latency": {key: round(value, 1) for key, value in percentiles(values).items() if value is not None},
        "other_frames": sum(reply["others"] for reply in replies),
        "other_samples": [sample for reply in replies for sample in reply["other_samples"]][:5],
        "close_codes": close_codes,
    }


def _measure(pool: ClientPool, part: Part, settings: ScaleSettings, log) -> dict:
    server_pids = {server.name: server.pid for server in part.servers}
    client_pids = {worker.name: worker.pid for worker in pool.subscribers}
    time.sleep(1.0)
    rss_before = _rss(server_pids), _rss(client_pids)
    connect = _connect(pool, part, settings)
    log(
        f"  {part.name}: {connect['connected']:,}/{part.count:,} connected in {connect['seconds']} s "
        f"({connect['per_s']}/s), {connect['refused']} refused {connect['errors'] or ''}"
    )
    time.sleep(settings.settle_seconds)
    rss_after = _rss(server_pids), _rss(client_pids)
    connected = max(connect["connected"], 1)
    server_growth = sum(rss_after[0].values()) - sum(rss_before[0].values())
    client_growth = sum(rss_after[1].values()) - sum(rss_before[1].values())
    memory = {
        "server_rss_before": rss_before[0],
        "server_rss_after": rss_after[0],
        "server_bytes_per_connection": round(server_growth / connected),
        "client_bytes_per_connection": round(client_growth / connected),
    }
    log(
        f"  {part.name}: RSS per connection: servers {memory['server_bytes_per_connection'] / KB:.1f} KB, "
        f"clients {memory['client_bytes_per_connection'] / KB:.1f} KB"
    )
    # Every subscription is live before the measured broadcast (a warm-up publish reached each).
    warmup = _deliver(pool, part, f"{part.name}-warm", settings, latencies=False)
    log(f"  {part.name}: warm-up broadcast {warmup['received']:,}/{warmup['expected']:,}")
    with CpuWindow({**server_pids, **client_pids}) as window:
        time.sleep(settings.idle_seconds)
    cpu = window.stop()
    server_cores = sum(cpu["cores"][name] or 0.0 for name in server_pids)
    idle = {
        "seconds": round(cpu["wall_s"], 1),
        "server_cores": round(server_cores, 4),
        "server_cores_per_20k": round(server_cores / connected * 20_000, 4),
        "client_cores": round(sum(cpu["cores"][name] or 0.0 for name in client_pids), 4),
        "other_cores": round(cpu["other_cores"], 3),
    }
    log(
        f"  {part.name}: idle {idle['seconds']} s: servers {idle['server_cores']:.3f} cores "
        f"({idle['server_cores_per_20k']:.3f} per 20k), clients {idle['client_cores']:.3f}"
    )
    broadcast = _deliver(pool, part, f"{part.name}-bcast", settings, latencies=True)
    lat = broadcast["latency"]
    log(
        f"  {part.name}: broadcast {broadcast['received']:,}/{broadcast['expected']:,}, last after "
        f"{broadcast['to_last_delivery_s']} s, p50 {lat.get('p50_ms')} ms, p99 {lat.get('p99_ms')} ms"
    )
    problems = {server.name: server.problems() for server in part.servers}
    for server in part.servers:
        server.log_offset = len(server.log_text())
    closed = pool.call_all("close", timeout=120 + part.count / 200, group=part.name, close_timeout=5.0)
    time.sleep(1.0)
    on_close = {server.name: server.problems() for server in part.servers}
    return {
        "asgi_server": settings.asgi_server,
        "servers": len(part.servers),
        "subscribers": part.count,
        "transport": "sse" if part.impl == "sse" else "ws",
        "connect": connect,
        "memory": memory,
        "idle": idle,
        "warmup": warmup,
        "broadcast": broadcast,
        "closed_by_server": sum(sum(reply["closed_by_server"].values()) for reply in closed),
        "server_log_problems": sum(found["count"] for found in problems.values()),
        "server_log_examples": [line for found in problems.values() for line in found["examples"]][:8],
        # Closing everyone at once is not part of the targets: what it logs is reported apart.
        "close_log_problems": sum(found["count"] for found in on_close.values()),
        "close_log_examples": sorted({line for found in on_close.values() for line in found["examples"]})[:4],
        "servers_alive": all(server.alive() for server in part.servers),
        "server_pids": list(server_pids.values()),
    }


def _service(settings: ScaleSettings, work_dir: Path, source: Path, name: str, **kwargs) -> ServiceServer:
    limit = max(settings.total, settings.per_process) * 2
    return ServiceServer(
        work_dir,
        source=source,
        name=name,
        server_cmd=settings.asgi_server,
        max_connections=limit,
        as_deployed=True,
        **kwargs,
    )


def _start(group: list[ServiceServer]) -> None:
    """Start ``group``: the slow part (migrate, sync_channels) in parallel once the first has migrated."""
    group[0].prepare()
    with ThreadPoolExecutor(max_workers=4) as executor:
        list(executor.map(ServiceServer.prepare, group[1:]))
    # Launched one by one: spawn() sets PR_SET_PDEATHSIG in preexec_fn, which is unsafe with threads.
    for server in group:
        server.start()


def run(settings: ScaleSettings, work_dir: Path, source: Path = servers.ROOT, log=print) -> dict:
    """Run the parts of ``settings``; every process started here is stopped when it returns or raises."""
    results: dict = {"settings": asdict(settings)}
    pool = ClientPool(settings.clients_needed())
    started: list = []
    try:
        results["client_processes"] = len(pool.subscribers)
        results["client_pids"] = list(pool.pids().values())
        for name in settings.parts:
            log(f"scale {name} under {settings.asgi_server}")
            if name == "machine":
                redis = RedisServer(work_dir)
                started.append(redis)
                redis.start()
                results.setdefault("redis_pids", []).append(redis.pid)
                group = [
                    _service(settings, work_dir, source, f"scale-{i}", redis_url=redis.url(), prefix="scale")
                    for i in range(settings.servers_needed())
                ]
                part = Part(name, group, "raw", settings.total)
            else:
                group = [_service(settings, work_dir, source, f"scale-one-{name}")]
                part = Part(name, group, "sse" if name == "sse" else "raw", settings.per_process)
            started.extend(group)
            try:
                _start(group)
                startup = {server.name: server.problems() for server in group}
                for server in group:
                    # Connecting must log nothing: count from here; what the start logged is reported apart.
                    server.log_offset = len(server.log_text())
                results[name] = _measure(pool, part, settings, log)
                results[name]["startup_log_examples"] = sorted(
                    {line for found in startup.values() for line in found["examples"]}
                )
            except Exception as error:  # noqa: BLE001 - reported; the next part still runs
                logger.exception("scale part %s failed", name)
                results[name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
                log(f"! scale {name} failed: {results[name]['error']}")
            finally:
                for server in started:
                    server.stop()
                started.clear()
        results["verdicts"] = verdicts(results, settings.asgi_server)
    finally:
        pool.stop()
        for server in started:
            server.stop()
    results["client_processes_alive"] = sum(worker.process.is_alive() for worker in pool.subscribers)
    log(render(results))
    return results


def verdicts(results: dict, asgi_server: str) -> list[dict]:
    """The issue's targets, each with the measured number and PASS or FAIL."""
    found = []

    def judge(target: str, value, ok: bool) -> None:
        found.append({"target": target, "value": value, "pass": bool(ok)})

    for name in PARTS:
        part = results.get(name)
        if not part or "error" in part:
            if part:
                judge(f"{name}: runs", part["error"][:200], False)
            continue
        n = part["connect"]["connected"]
        kb = part["memory"]["server_bytes_per_connection"] / KB
        judge(f"{name}: <= {MAX_KB_PER_CONNECTION:g} KB per idle connection ({n:,})", f"{kb:.1f} KB", kb <= 25)
        cores = part["idle"]["server_cores_per_20k"]
        judge(
            f"{name}: idle CPU < {MAX_IDLE_CORES_PER_20K:.0%} of a core per 20,000",
            f"{cores:.1%}",
            cores < MAX_IDLE_CORES_PER_20K,
        )
        refused, problems = part["connect"]["refused"], part["server_log_problems"]
        judge(
            f"{name}: connecting {part['subscribers']:,} causes no refusals, no log errors",
            f"{refused} refused, {problems} log problems",
            refused == 0 and problems == 0 and n == part["subscribers"],
        )
        b = part["broadcast"]
        if name == "machine":
            limit = MAX_BROADCAST_S[asgi_server]
            judge(
                f"machine: broadcast to {n:,} reaches the last in < {limit:g} s, nothing lost",
                f"{b['to_last_delivery_s']} s, {b['received']:,}/{b['expected']:,}",
                b["to_last_delivery_s"] is not None and b["to_last_delivery_s"] < limit and b["lost"] == 0,
            )
        else:
            judge(f"{name}: broadcast loses nothing", f"{b['received']:,}/{b['expected']:,}", b["lost"] == 0)
    return found


def render(results: dict) -> str:
    """The result tables and the PASS/FAIL lines, as printed."""
    server = results["settings"]["asgi_server"]
    lines = [
        "",
        f"Scale under {server} ({results.get('client_processes')} client processes, one source address each):",
        f"{'part':<8} {'procs':>5} {'subscribers':>11} {'conn/s':>7} {'refused':>7} {'srv KB/conn':>11} "
        f"{'cli KB/conn':>11} {'idle srv cores':>14} {'/20k':>6} {'bcast last s':>12} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'received':>17} {'log':>4}",
    ]
    for name in PARTS:
        part = results.get(name)
        if not part:
            continue
        if "error" in part:
            lines.append(f"{name:<8} error: {part['error'][:300]}")
            continue
        c, m, i, b = part["connect"], part["memory"], part["idle"], part["broadcast"]
        lines.append(
            f"{name:<8} {part['servers']:>5} {c['connected']:>11,} {c['per_s'] or 0:>7,.0f} {c['refused']:>7} "
            f"{m['server_bytes_per_connection'] / KB:>11.1f} {m['client_bytes_per_connection'] / KB:>11.1f} "
            f"{i['server_cores']:>14.3f} {i['server_cores_per_20k']:>6.3f} {b['to_last_delivery_s'] or 0:>12.3f} "
            f"{b['latency'].get('p50_ms', 0):>7.1f} {b['latency'].get('p99_ms', 0):>7.1f} "
            f"{b['received']:>8,}/{b['expected']:<8,} {part['server_log_problems']:>4}"
        )
        for example in part["server_log_examples"][:3]:
            lines.append(f"         log: {example[:200]}")
        if part.get("close_log_problems"):
            lines.append(f"         {part['close_log_problems']} problem lines while all closed at once (not counted):")
            lines += [f"           {example[:200]}" for example in part["close_log_examples"][:2]]
        for example in part.get("startup_log_examples", [])[:2]:
            lines.append(f"         at start-up (not counted): {example[:200]}")
    lines.append("")
    for verdict in results.get("verdicts", []):
        lines.append(f"{'PASS' if verdict['pass'] else 'FAIL'}  {verdict['target']}: {verdict['value']}")
    return "\n".join(lines)


def scenario_scale(ctx) -> dict:
    """``python -m bench --scenario scale``: the defaults (or ``quick()`` with ``--quick``)."""
    make = ScaleSettings.quick if ctx.quick else ScaleSettings
    return run(make(asgi_server=ctx.asgi_server), ctx.work_dir, ctx.source, ctx.log)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.scale``: the scale scenario with its sizes on the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--asgi-server", choices=servers.ASGI_SERVERS, default="daphne")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated: ws, sse, machine")
    parser.add_argument("--quick", action="store_true", help="the scaled-down smoke size")
    for name in ("per_process", "total", "per_server", "client_procs", "concurrency"):
        parser.add_argument("--" + name.replace("_", "-"), type=int)
    parser.add_argument("--idle-seconds", type=float)
    parser.add_argument("--json", metavar="PATH", help="also save the results as JSON here")
    parser.add_argument("--work-dir", type=Path, help="keep configs and server logs here")
    args = parser.parse_args(argv)
    parts = tuple(part.strip() for part in args.parts.split(",") if part.strip())
    if not parts or set(parts) - set(PARTS):
        parser.error(f"--parts takes {', '.join(PARTS)}")
    changes = {
        key: getattr(args, key)
        for key in ("per_process", "total", "per_server", "client_procs", "concurrency", "idle_seconds")
        if getattr(args, key) is not None
    }
    make = ScaleSettings.quick if args.quick else ScaleSettings
    settings = make(asgi_server=args.asgi_server, parts=parts, **changes)
    if settings.per_process > FILES_PER_CLIENT * 2 or min(settings.total, settings.per_server) < 1:
        parser.error(f"sizes must be positive, --per-process at most {FILES_PER_CLIENT * 2}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work_dir = servers.work_directory(args.work_dir)
    print(f"work dir {work_dir}", flush=True)
    try:
        results = run(settings, work_dir, log=lambda line: print(line, flush=True))
    finally:
        servers.stop_all()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    # Missed targets are printed (FAIL); the exit status says whether every part ran.
    return 1 if any("error" in results.get(name, {}) for name in PARTS) else 0


if __name__ == "__main__":
    sys.exit(main())
