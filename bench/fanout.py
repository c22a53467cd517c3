"""Scenario: N WebSocket subscribers on one channel, one publisher, ~100-byte messages.

For each subscriber count, the service and the baselines (bare ``websockets``, bare ASGI app)
are started side by side and each gets N subscribers (spread over the client processes) and a
publisher. The same machinery runs the many-channels scenario (``FanoutSettings.channels``:
subscribers dealt over that many channels, one publishing connection per channel, publishes
dealt round-robin over them) and the processes-per-machine scenario (a "target" of several
server processes: subscribers dealt over them, publishing on the first, CPU summed). Every subscription is made
live with a warm-up (a message every 50 ms until every subscriber received one). Then, for
``rounds`` rounds, the servers take turns (service, baseline, service, baseline...) so noise
from other processes on the machine hits both alike:

- burst: publish M messages back to back; deliveries/s = messages received by all subscribers
  / (time the last subscriber got its last message - time of the first publish). Losses are
  counted: expected = M x subscribers live at the start of the burst;
- fixed rate: publish ``rate`` msg/s for ``rate_seconds`` with the send time in the payload;
  latency = receive time - send time (all processes share the machine clock: ``time.time()``).

A server's burst number is the median of its rounds; the ratio is the median of the per-round
ratios service/baseline. Latency percentiles pool every fixed-rate delivery of every round.
CPU of the server, of each client process and of the rest of the machine is measured in every
phase. At the end the connections are closed and, for the service, the channel's connection
count is watched until it is back to 0 (a leak check), then the servers are stopped.
"""

from __future__ import annotations

import array
import contextlib
import re
import statistics
import time
from dataclasses import dataclass

from .clients import ClientPool
from .servers import CHANNEL_ID, ROOT, SERVERS, ServiceServer, room_channel_id
from .sysstat import CpuWindow, SyscallWindow, per_delivery, process_rss_bytes

WARMUP_INTERVAL = 0.05
WARMUP_TIMEOUT = 30.0
DRAIN_TIMEOUT = 15.0
SETTLE_TIMEOUT = 60.0


@dataclass
class FanoutSettings:
    """Everything that shapes a fan-out run."""

    subscribers: list[int]
    servers: list[str]
    rounds: int = 3
    burst_deliveries: int = 300_000  # M = burst_deliveries / N, clamped to [min_messages, max_messages]
    min_messages: int = 20
    max_messages: int = 5000
    size: int = 100
    rate: float = 10.0
    rate_seconds: float = 5.0
    client_impl: str = "raw"
    asgi_server: str = "daphne"  # what runs the service: daphne or uvicorn (--ws websockets-sansio)
    connect_concurrency: int = 32
    timeout: float = 120.0  # longest a burst may take
    idle_timeout: float = 10.0  # a burst ends when nothing arrived for this long
    quiet_wait: float = 30.0  # before each phase, wait up to this long for other processes to go quiet
    quiet_cores: float = 0.25  # "quiet": other processes use less than this many cores
    channels: int = 0  # 0: every subscriber on CHANNEL_ID; else dealt over room_channel_id(0..channels-1)
    warmup_interval: float = WARMUP_INTERVAL
    syscalls: bool = False  # count the servers' system calls in bursts (perf stat)

    @property
    def channel_count(self) -> int:
        return max(1, self.channels)

    def channel_of(self, index: int) -> str:
        return room_channel_id(index % self.channels) if self.channels else CHANNEL_ID

    def burst_messages(self, subscribers: int) -> int:
        """M: each channel gets the same number of messages, about ``burst_deliveries`` in all."""
        per_channel = max(self.min_messages, min(self.max_messages, self.burst_deliveries // max(subscribers, 1)))
        return per_channel * self.channel_count

    def rate_messages(self) -> int:
        """Messages of the fixed-rate phase: ``rate`` x ``rate_seconds``, rounded up to a whole round of channels."""
        wanted = max(1, round(self.rate * self.rate_seconds))
        return -(-wanted // self.channel_count) * self.channel_count


def percentiles(values) -> dict:
    """p50, p90, p99, max and mean of ``values`` (seconds) in milliseconds; None when empty."""
    if not len(values):
        return {"count": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {
        "count": len(ordered),
        "p50_ms": at(0.50),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "max_ms": ordered[-1] * 1000,
        "mean_ms": statistics.fmean(ordered) * 1000,
    }


def _merge(parts: list[dict]) -> tuple[dict, array.array]:
    """Sum the per-process results of a ``wait`` command; also return the raw latencies."""
    latencies = array.array("d")
    close_codes: dict[str, int] = {}
    for part in parts:
        latencies.frombytes(part["latencies"])
        add_counts(close_codes, part["close_codes"])
    merged = {
        "ended": sorted({p["ended"] for p in parts}),
        "received": sum(p["received"] for p in parts),
        "target_connections": sum(p["target"] for p in parts),
        "complete_connections": sum(p["complete"] for p in parts),
        "connections_open": sum(p["connections_open"] for p in parts),
        "min_per_connection": min(p["min_per_connection"] for p in parts),
        "first_recv": min((p["first_recv"] for p in parts if p["first_recv"]), default=0.0),
        "last_recv": max((p["last_recv"] for p in parts), default=0.0),
        "stale": sum(p["stale"] for p in parts),
        "out_of_order": sum(p["disorder"] for p in parts),
        "other_frames": sum(p["others"] for p in parts),
        "other_samples": [s for p in parts for s in p["other_samples"]][:5],
        "close_codes": close_codes,
        "client_cpu_s": [p["cpu_s"] for p in parts],
        "latency": percentiles(latencies),
    }
    return merged, latencies


def _cpu_summary(window: dict, server_names: list[str]) -> dict:
    cores = window["cores"]
    clients = {k: v for k, v in cores.items() if k.startswith("subscriber")}
    per_server = [cores.get(name) for name in server_names]
    return {
        "server_cores": None if None in per_server else sum(per_server),
        "per_server_cores": dict(zip(server_names, per_server, strict=True)),
        "client_cores": clients,
        "client_cores_max": max((v for v in clients.values() if v is not None), default=None),
        "publisher_cores": cores.get("publisher-0"),
        "machine_busy_cores": window["machine_busy_cores"],
        "other_cores": window["other_cores"],
        "wall_s": window["wall_s"],
    }


def _per_cpu(received: int, cpu: dict) -> float | None:
    spent = (cpu["server_cores"] or 0.0) * cpu["wall_s"]
    return received / spent if spent > 0 else None


def wait_idle(servers: list, cores: float = 0.15, longest: float = SETTLE_TIMEOUT) -> float:
    """Wait (at most ``longest`` s) until ``servers`` together use under ``cores``; return the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < longest:
        with CpuWindow({server.name: server.pid for server in servers}) as window:
            time.sleep(0.5)
        if sum(v or 0.0 for v in window.stop()["cores"].values()) < cores:
            break
    return round(time.monotonic() - started, 1)


class PhaseNames:
    """Unique phase tags, so a late message of one phase is never counted in another."""

    def __init__(self):
        self.counter = 0

    def __call__(self, kind: str) -> str:
        self.counter += 1
        return f"{kind}{self.counter}"


class ServerSession:
    """One target (a server, or several processes of one) at one subscriber count: its subscribers
    (a group in each client process) and its publishing connections (on the first server)."""

    def __init__(
        self, name: str, servers: list, pool: ClientPool, settings: FanoutSettings, subscribers: int, phases, log
    ):
        self.servers = servers
        self.server = servers[0]
        self.group = name
        self.pool = pool
        self.settings = settings
        self.n = subscribers
        self.phases = phases
        self.log = log
        self.rate_latencies = array.array("d")

    def pids(self) -> dict[str, int]:
        return {**{server.name: server.pid for server in self.servers}, **self.pool.pids()}

    def cpu(self, window: dict) -> dict:
        return _cpu_summary(window, [server.name for server in self.servers])

    def wait_quiet(self) -> dict:
        """Wait (at most ``quiet_wait`` s) until other processes use under ``quiet_cores`` for 1 s.

        The machine is shared: other people's test runs steal the cores this benchmark measures.
        """
        s = self.settings
        started = time.monotonic()
        other = None
        quiet_samples = 0
        while True:
            with CpuWindow(self.pids()) as window:
                time.sleep(0.5)
            other = window.stop()["other_cores"]
            quiet_samples = quiet_samples + 1 if other < s.quiet_cores else 0
            waited = time.monotonic() - started
            if quiet_samples >= 2 or waited >= s.quiet_wait:
                break
        if quiet_samples < 2 and s.quiet_wait > 0:
            self.log(f"  (machine still busy after {waited:.0f} s: other processes use {other:.2f} cores)")
        return {"waited_s": round(waited, 1), "other_cores_before": round(other, 2), "quiet": quiet_samples >= 2}

    def connect(self) -> dict:
        s = self.settings
        # Client ids are unique across targets: in Redis mode presence is shared by every instance.
        urls = [
            self.servers[i % len(self.servers)].subscriber_url(f"bench-{self.group}-{self.n}-{i}", s.channel_of(i))
            for i in range(self.n)
        ]
        concurrency = max(1, s.connect_concurrency // len(self.pool.subscribers))
        per_worker = [{"urls": part} for part in self.pool.split(urls)]
        started = time.monotonic()
        parts = self.pool.call_all(
            "connect",
            timeout=60 + self.n / 20,
            per_worker=per_worker,
            group=self.group,
            impl=s.client_impl,
            concurrency=concurrency,
            open_timeout=30.0,
        )
        seconds = time.monotonic() - started
        publisher_urls = [self.server.publisher_url(s.channel_of(i)) for i in range(s.channel_count)]
        self.pool.publisher.call(
            "connect", timeout=60 + len(publisher_urls) / 20, group=self.group, urls=publisher_urls, open_timeout=30
        )
        errors: dict[str, int] = {}
        for part in parts:
            for name, count in part["errors"].items():
                errors[name] = errors.get(name, 0) + count
        connected = sum(p["connected"] for p in parts)
        self.log(f"  {self.group}: {connected}/{self.n} subscribers connected in {seconds:.1f} s")
        return {
            "connected": connected,
            "failed": sum(p["failed"] for p in parts),
            "errors": errors,
            "seconds": seconds,
            "per_second": connected / seconds if seconds > 0 else None,
        }

    def warmup(self) -> dict:
        phase = self.phases("w")
        self.pool.call_all("arm", timeout=30, group=self.group, phase=phase, expected=1, latencies=False)
        self.pool.publisher.call(
            "ticker_start",
            timeout=30,
            group=self.group,
            phase=phase,
            interval=self.settings.warmup_interval,
            size=self.settings.size,
        )
        try:
            parts = self.pool.call_all(
                "wait", timeout=WARMUP_TIMEOUT + 30, group=self.group, deadline=WARMUP_TIMEOUT, idle=WARMUP_TIMEOUT
            )
        finally:
            sent = self.pool.publisher.call("ticker_stop", timeout=30, group=self.group)["sent"]
        merged, _ = _merge(parts)
        live = merged["complete_connections"]
        if live < self.n:
            self.log(f"  ! {self.group}: only {live}/{self.n} subscribers received a warm-up message")
        time.sleep(0.3)  # let the last warm-up messages land before anything is timed
        settled = self.wait_server_idle()
        return {
            "live_subscribers": live,
            "messages_sent": sent,
            "close_codes": merged["close_codes"],
            "server_idle_after_s": settled,
        }

    def wait_server_idle(self) -> float:
        """Wait until the servers' CPU falls (warm-up messages still queued in a slow server would
        otherwise be timed with the burst); return how long that took."""
        waited = wait_idle(self.servers)
        if waited >= SETTLE_TIMEOUT:
            self.log(f"  ! {self.group}: the server was still busy {SETTLE_TIMEOUT:.0f} s after the warm-up")
        return waited

    def _arm(self, kind: str, messages: int) -> tuple[str, dict, int, int]:
        """Wait for quiet, then arm the subscribers for a phase of ``messages`` dealt over the channels;
        (phase, quiet, messages per connection, live subscribers)."""
        phase = self.phases(kind)
        quiet = self.wait_quiet()
        per_connection = messages // self.settings.channel_count
        armed = self.pool.call_all(
            "arm", timeout=30, group=self.group, phase=phase, expected=per_connection, latencies=True
        )
        return phase, quiet, per_connection, sum(a["target"] for a in armed)

    def burst(self) -> dict:
        s = self.settings
        messages = s.burst_messages(self.n)
        phase, quiet, per_connection, live = self._arm("b", messages)
        syscalls = (
            SyscallWindow([server.pid for server in self.servers], self.servers[0].work_dir) if s.syscalls else None
        )
        with syscalls or contextlib.nullcontext(), CpuWindow(self.pids()) as window:
            self.pool.send_all("wait", group=self.group, deadline=s.timeout, idle=s.idle_timeout)
            published = self.pool.publisher.call(
                "burst", timeout=s.timeout + 30, group=self.group, phase=phase, count=messages, size=s.size
            )
            merged, _ = _merge(self.pool.recv_all(s.timeout + 30))
        cpu = self.cpu(window.result)
        expected = per_connection * live
        elapsed = (merged["last_recv"] - published["t_first"]) if merged["received"] else None
        publish_seconds = published["t_last"] - published["t_first"]
        result = {
            "messages": messages,
            "payload_bytes": s.size,
            "live_subscribers": live,
            "expected": expected,
            "received": merged["received"],
            "lost": expected - merged["received"],
            "deliveries_per_s": merged["received"] / elapsed if elapsed else 0.0,
            # Deliveries per second of server CPU: what one core buys, much steadier under noise.
            "deliveries_per_server_cpu_s": _per_cpu(merged["received"], cpu),
            "seconds": elapsed,
            "publish_seconds": publish_seconds,
            "publish_per_s": messages / max(publish_seconds, 1e-9),
            "first_delivery_ms": (merged["first_recv"] - published["t_first"]) * 1000 if merged["received"] else None,
            "cpu": cpu,
            "quiet_before": quiet,
            **{k: merged[k] for k in ("ended", "min_per_connection", "complete_connections", "stale", "out_of_order")},
            **{k: merged[k] for k in ("other_frames", "other_samples", "close_codes", "client_cpu_s")},
            "latency": merged["latency"],
        }
        if syscalls is not None:
            result["syscalls"] = syscalls.result
            result["syscalls_per_delivery"] = per_delivery(syscalls.result, merged["received"])
        self.log(
            f"  {self.group}: burst {messages} msg x {live} subs: {result['received']:,}/{expected:,} delivered, "
            f"{result['deliveries_per_s']:,.0f}/s in {elapsed or 0:.2f} s (server {cpu['server_cores'] or 0:.2f} "
            f"cores, busiest client {cpu['client_cores_max'] or 0:.2f}, other {cpu['other_cores']:.2f})"
        )
        return result

    def fixed_rate(self) -> dict:
        s = self.settings
        total = s.rate_messages()
        phase, quiet, per_connection, live = self._arm("r", total)
        with CpuWindow(self.pids()) as window:
            self.pool.send_all("wait", group=self.group, deadline=s.rate_seconds + s.timeout, idle=s.idle_timeout)
            published = self.pool.publisher.call(
                "rate",
                timeout=s.rate_seconds + 60,
                group=self.group,
                phase=phase,
                rate=s.rate,
                total=total,
                size=s.size,
            )
            merged, latencies = _merge(self.pool.recv_all(s.rate_seconds + s.timeout + 30))
        self.rate_latencies.extend(latencies)
        cpu = self.cpu(window.result)
        result = {
            "rate": s.rate,
            "seconds": s.rate_seconds,
            "messages": total,
            "live_subscribers": live,
            "expected": per_connection * live,
            "received": merged["received"],
            "lost": per_connection * live - merged["received"],
            "latency": merged["latency"],
            "worst_schedule_lag_ms": published["worst_schedule_lag_s"] * 1000,
            "cpu": cpu,
            # The "CPU per delivery at a steady rate": messages one at a time, no bursts.
            "deliveries_per_server_cpu_s": _per_cpu(merged["received"], cpu),
            "quiet_before": quiet,
            **{k: merged[k] for k in ("ended", "out_of_order", "other_frames", "other_samples", "close_codes")},
        }
        lat = result["latency"]
        if lat["count"]:
            self.log(
                f"  {self.group}: {s.rate:g} msg/s: latency p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, "
                f"max {lat['max_ms']:.1f} ms ({result['received']:,}/{result['expected']:,})"
            )
        return result

    def teardown(self) -> dict:
        info: dict = {}
        try:
            parts = self.pool.call_all("close", timeout=60, group=self.group, close_timeout=2.0)
            info["open_before_close"] = sum(p["open_before_close"] for p in parts)
            closed: dict[str, int] = {}
            for part in parts:
                add_counts(closed, part["closed_by_server"])
            info["closed_by_server_during_run"] = closed
        except Exception as error:
            info["error"] = f"{type(error).__name__}: {error}"
        try:
            info["publisher"] = self.pool.publisher.call("close", timeout=30, group=self.group, close_timeout=2.0)
        except Exception as error:
            info["error"] = f"{type(error).__name__}: {error}"
        if isinstance(self.server, ServiceServer) and all(server.alive() for server in self.servers):
            info["drain"] = self.wait_drained()
        return info

    def wait_drained(self) -> dict:
        """Watch the channel's connection count (the preflight) go back to 0 after every client left."""
        started = time.monotonic()
        count = None
        channel = self.settings.channel_of(0)
        while time.monotonic() - started < DRAIN_TIMEOUT:
            count = self.server.live_connections(channel)
            if count == 0:
                break
            time.sleep(0.1)
        seconds = time.monotonic() - started
        if count:
            self.log(f"  ! {self.group}: {count} connections still counted {seconds:.0f} s after every client left")
        return {"connections_left": count, "seconds": seconds}


def add_counts(total: dict[str, int], counts: dict) -> dict[str, int]:
    """Add ``counts`` (close code: count) into ``total``, keys as strings (as in JSON); return ``total``."""
    for code, count in counts.items():
        total[str(code)] = total.get(str(code), 0) + count
    return total


def _round_totals(rounds: list[dict]) -> dict:
    """What every kind of phase sums over its rounds: deliveries, losses, stray frames, close codes."""
    close_codes: dict[str, int] = {}
    for r in rounds:
        add_counts(close_codes, r["close_codes"])
    return {
        "expected": sum(r["expected"] for r in rounds),
        "received": sum(r["received"] for r in rounds),
        "lost": sum(r["lost"] for r in rounds),
        "out_of_order": sum(r["out_of_order"] for r in rounds),
        "other_frames": sum(r["other_frames"] for r in rounds),
        "other_samples": [s for r in rounds for s in r["other_samples"]][:5],
        "close_codes": close_codes,
        "ended": sorted({e for r in rounds for e in r["ended"]}),
    }


def summarize_bursts(rounds: list[dict]) -> dict:
    """One server's bursts: the median round's numbers, totals of losses, every round kept."""
    if not rounds:
        return {}
    ordered = sorted(rounds, key=lambda r: r["deliveries_per_s"])
    median_round = ordered[(len(ordered) - 1) // 2]
    rates = [r["deliveries_per_s"] for r in rounds]
    return {
        "messages": rounds[0]["messages"],
        "live_subscribers": rounds[0]["live_subscribers"],
        "deliveries_per_s": statistics.median(rates),
        "deliveries_per_s_min": min(rates),
        "deliveries_per_s_max": max(rates),
        "deliveries_per_server_cpu_s": statistics.median(
            [r["deliveries_per_server_cpu_s"] for r in rounds if r["deliveries_per_server_cpu_s"]] or [0.0]
        ),
        **_round_totals(rounds),
        "seconds": median_round["seconds"],
        "publish_per_s": median_round["publish_per_s"],
        "latency": median_round["latency"],
        "cpu": median_round["cpu"],
        "syscalls_per_delivery": median_round.get("syscalls_per_delivery"),
        "cpu_max_client_any_round": max((r["cpu"]["client_cores_max"] or 0.0) for r in rounds),
        "other_cores_max": max(r["cpu"]["other_cores"] for r in rounds),
        "rounds": rounds,
    }


def summarize_rates(rounds: list[dict], latencies) -> dict:
    """One server's fixed-rate phases: latency percentiles over every delivery of every round."""
    if not rounds:
        return {}
    by_cpu = sorted(rounds, key=lambda r: r["cpu"]["server_cores"] or 0.0)
    return {
        "rate": rounds[0]["rate"],
        "seconds": rounds[0]["seconds"],
        "messages": sum(r["messages"] for r in rounds),
        **_round_totals(rounds),
        "latency": percentiles(latencies),
        "deliveries_per_server_cpu_s": statistics.median(
            [r["deliveries_per_server_cpu_s"] for r in rounds if r.get("deliveries_per_server_cpu_s")] or [0.0]
        ),
        "cpu": by_cpu[(len(by_cpu) - 1) // 2]["cpu"],
        "rounds": rounds,
    }


PENDING_KILLED = re.compile(r"Killed (\d+) pending application instances")


def _median_ratio(ours: list[dict], theirs: list[dict], key: str) -> tuple[list[float], float | None]:
    """Per-round ratios ours/theirs of ``key`` (rounds are paired: they ran one after the other) and their median."""
    ratios = [a[key] / b[key] for a, b in zip(ours, theirs, strict=False) if a[key] and b[key]]
    return ratios, statistics.median(ratios) if ratios else None


def run_count(
    targets: dict[str, list],
    pool: ClientPool,
    settings: FanoutSettings,
    n: int,
    phases: PhaseNames,
    log,
    ours: str = "service",
) -> dict:
    """Every target (name: its server processes) at one subscriber count, with interleaved rounds.

    The row's ``ratios`` compare ``ours`` with every other target, per round, then take the median.
    """
    row: dict = {"subscribers": n, "channels": settings.channel_count, "results": {}}
    sessions: list[ServerSession] = []
    bursts: dict[str, list[dict]] = {}
    rates: dict[str, list[dict]] = {}
    try:
        for name, target in targets.items():
            result = row["results"][name] = {
                "server": name,
                "subscribers": n,
                "channels": settings.channel_count,
                "processes": len(target),
            }
            try:
                for server in target:
                    server.start()
                session = ServerSession(name, target, pool, settings, n, phases, log)
                sessions.append(session)
                result["connect"] = session.connect()
                rss = sum(process_rss_bytes(server.pid) or 0 for server in target)
                result["server_rss_mb_connected"] = round(rss / 2**20, 1)
                result["warmup"] = session.warmup()
            except Exception as error:
                result["error"] = f"{type(error).__name__}: {error}"
                log(f"  ! {name} at N={n} failed to set up: {result['error']}")
        ready = [s for s in sessions if "error" not in row["results"][s.group]]
        for round_index in range(settings.rounds):
            log(f" round {round_index + 1}/{settings.rounds}")
            _run_phase(ready, row, bursts, "burst", "burst", lambda session: session.burst(), log)
            ready = [s for s in ready if "error" not in row["results"][s.group]]
            _run_phase(ready, row, rates, "rate", "fixed rate", lambda session: session.fixed_rate(), log)
    finally:
        for session in sessions:
            result = row["results"][session.group]
            result["teardown"] = session.teardown()
            result["server_alive_at_end"] = all(server.alive() for server in session.servers)
            killed_total = 0
            problems: dict = {"count": 0, "examples": []}
            for server in session.servers:
                server.stop()
                killed = PENDING_KILLED.findall(server.log_text()[server.log_offset :])
                killed_total += int(killed[-1]) if killed else 0
                found = server.problems()
                problems["count"] += found["count"]
                problems["examples"] += found["examples"]
            result["pending_instances_killed_at_stop"] = killed_total
            result["server_log_problems"] = problems
        for target in targets.values():
            for server in target:
                server.stop()
    for session in sessions:
        result = row["results"][session.group]
        result["burst"] = summarize_bursts(bursts.get(session.group, []))
        result["rate"] = summarize_rates(rates.get(session.group, []), session.rate_latencies)
    row["ours"] = ours
    row["ratios"] = {}
    for name in targets:
        if name == ours:
            continue
        per_round, median = _median_ratio(bursts.get(ours, []), bursts.get(name, []), "deliveries_per_s")
        cpu_rounds, cpu_median = _median_ratio(
            bursts.get(ours, []), bursts.get(name, []), "deliveries_per_server_cpu_s"
        )
        _, rate_cpu_median = _median_ratio(rates.get(ours, []), rates.get(name, []), "deliveries_per_server_cpu_s")
        row["ratios"][name] = {
            "deliveries_per_s": median,
            "per_cpu_s": cpu_median,
            "rate_per_cpu_s": rate_cpu_median,
            "round_ratios": per_round,
            "round_cpu_ratios": cpu_rounds,
        }
    baseline = row["ratios"].get("baseline") or {}
    row["ratio_service_to_baseline"] = baseline.get("deliveries_per_s")
    row["cpu_ratio_service_to_baseline"] = baseline.get("per_cpu_s")
    return row


def run_fanout(settings: FanoutSettings, pool: ClientPool, work_dir, log=print, service_source=None) -> list[dict]:
    """Run the scenario for every subscriber count; one row per count with a result per server."""
    capacity = max(settings.subscribers) + 10
    targets = {}
    for name in settings.servers:
        cls = SERVERS[name]
        if cls is ServiceServer:
            targets[name] = [
                ServiceServer(
                    work_dir,
                    max_connections=capacity,
                    source=service_source or ROOT,
                    server_cmd=settings.asgi_server,
                    rooms=settings.channels,
                    # Subscribers of a channel, its publisher, and room to spare.
                    room_connections=capacity // settings.channel_count + 10,
                )
            ]
        else:
            targets[name] = [cls(work_dir, server_cmd=settings.asgi_server)]
    phases = PhaseNames()
    rows = []
    for n in settings.subscribers:
        spread = f" over {settings.channels} channels" if settings.channels else ""
        log(
            f"N={n}{spread}: {settings.rounds} round(s) of a {settings.burst_messages(n)}-message burst "
            f"and {settings.rate:g} msg/s for {settings.rate_messages() / settings.rate:g} s per server"
        )
        rows.append(run_count(targets, pool, settings, n, phases, log))
    return rows


def _run_phase(sessions, row: dict, results: dict, key: str, label: str, run, log) -> None:
    """Run one phase on every session, appending its result; a failure marks that server's row."""
    for session in sessions:
        try:
            results.setdefault(session.group, []).append(run(session))
        except Exception as error:
            row["results"][session.group]["error"] = f"{key}: {type(error).__name__}: {error}"
            log(f"  ! {session.group} {label} failed: {error}")
