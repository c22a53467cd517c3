"""``python -m bench``: run the benchmark and print a table (and save JSON with ``--json``).

Examples:

    python -m bench --quick                        # < 60 s: 100 and 1000 subscribers, short phases
    python -m bench                                # full: 100 and 1000 subscribers
    python -m bench --subscribers 100,1000,5000 --json var/bench/fanout.json
    python -m bench --scenario all --quick         # every scenario, each well under a minute
    python -m bench --scenario channels,publish,connect,procs --service-ref HEAD
    python -m bench --scenario multiplex --subscribers 500   # multiplexed vs one-channel cost, churn

Everything runs on 127.0.0.1; every process the benchmark starts is stopped when it ends.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from . import many, multiplex, report, scale, servers, suite
from .clients import ClientPool
from .fanout import FanoutSettings, run_fanout
from .sysstat import machine_info

SCENARIOS = (
    "fanout",
    "sse",
    "memory",
    "push",
    "redis",
    "channels",
    "publish",
    "connect",
    "procs",
    "hooks",
    "multiplex",
    "scale",
    "many",
)
# Scenarios with a module of their own; the others are in bench/suite.py.
OWN_MODULE_SCENARIOS = {
    "multiplex": multiplex.scenario_multiplex,
    "scale": scale.scenario_scale,
    "many": many.scenario_many,
}


def subscriber_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers, e.g. 100,1000") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("subscriber counts must be positive, e.g. 100,1000,5000")
    return counts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short phases; finishes in under 60 s")
    parser.add_argument(
        "--scenario",
        default="fanout",
        help="comma-separated scenarios to run, or all: " + ", ".join(SCENARIOS) + " (default fanout)",
    )
    parser.add_argument("--plot", metavar="PNG", help="save a plot of deliveries/s and latency vs subscribers here")
    parser.add_argument(
        "--subscribers", type=subscriber_counts, default=[100, 1000], help="subscriber counts (default 100,1000)"
    )
    parser.add_argument(
        "--servers",
        default="service,baseline,asgi",
        help="WebSocket servers of the fanout, channels and connect scenarios, in order: service, baseline\n"
        "(bare websockets), asgi (bare ASGI app under --asgi-server) (default all three)",
    )
    parser.add_argument("--json", metavar="PATH", help="also save the results as JSON here")
    parser.add_argument(
        "--client", choices=("raw", "websockets"), default="raw", help="subscriber client implementation"
    )
    parser.add_argument(
        "--asgi-server",
        choices=("daphne", "uvicorn"),
        default="daphne",
        help="server running the service and the bare ASGI baselines in every scenario\n"
        "(uvicorn: --ws websockets-sansio; pip install -r bench/requirements.txt)",
    )
    parser.add_argument("--channels", type=int, help="channels of the channels scenario (default 1000, quick 200)")
    parser.add_argument(
        "--channel-subscribers", type=int, default=5, help="subscribers per channel, channels scenario (default 5)"
    )
    parser.add_argument(
        "--connect-cap",
        type=int,
        default=10_000,
        help="connect scenario: stop opening connections at this many per server (default 10000, quick 1000)",
    )
    parser.add_argument("--client-procs", type=int, default=2, help="subscriber processes (default 2)")
    parser.add_argument("--rounds", type=int, help="rounds of burst + fixed rate per server (default 3, quick 1)")
    parser.add_argument("--messages", type=int, help="burst size M (default: about 300,000 deliveries / N)")
    parser.add_argument("--size", type=int, default=100, help="payload bytes (default 100)")
    parser.add_argument("--rate", type=float, default=10.0, help="fixed publish rate, msg/s (default 10)")
    parser.add_argument("--rate-seconds", type=float, help="fixed-rate phase length (default 5, quick 2)")
    parser.add_argument("--timeout", type=float, help="longest a burst may take, s (default 120, quick 20)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="before each phase wait up to this many s for other processes to go quiet (default 30, quick 0)",
    )
    parser.add_argument(
        "--service-ref",
        metavar="REF",
        help="run the service as committed at REF (e.g. HEAD; git archive into the work dir)\n"
        "instead of the working tree, which other people may be editing",
    )
    parser.add_argument(
        "--syscalls",
        action="store_true",
        help="count the servers' system calls in every burst with perf stat (needs perf, and root or\n"
        "kernel.perf_event_paranoid <= 1); printed per delivery",
    )
    many.add_arguments(parser)
    parser.add_argument("--work-dir", type=Path, help="keep configs and server logs here (default: temp, removed)")
    args = parser.parse_args(argv)
    args.scenarios = list(SCENARIOS) if args.scenario == "all" else [p.strip() for p in args.scenario.split(",") if p]
    for name in args.scenarios:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}: choose from {', '.join(SCENARIOS)} or all")
    args.servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    unknown = [name for name in args.servers if name not in servers.SERVERS]
    if unknown:
        parser.error(f"unknown server {unknown[0]!r}: choose from {', '.join(servers.SERVERS)}")
    if args.client_procs < 1:
        parser.error("--client-procs must be at least 1")
    if args.channels is None:
        args.channels = 200 if args.quick else 1000
    if min(args.channels, args.channel_subscribers, args.connect_cap) < 1:
        parser.error("--channels, --channel-subscribers and --connect-cap must be at least 1")
    return args


def settings_from(args: argparse.Namespace) -> FanoutSettings:
    settings = FanoutSettings(subscribers=args.subscribers, servers=args.servers, size=args.size, rate=args.rate)
    settings.client_impl = args.client
    settings.asgi_server = args.asgi_server
    settings.syscalls = args.syscalls
    if args.quick:
        settings.rounds = 1
        settings.burst_deliveries = 30_000
        settings.rate_seconds = 2.0
        settings.timeout = 20.0
        settings.idle_timeout = 4.0
        settings.quiet_wait = 0.0
    if args.messages:
        settings.min_messages = settings.max_messages = args.messages
    if args.rounds is not None:
        settings.rounds = max(1, args.rounds)
    if args.rate_seconds is not None:
        settings.rate_seconds = args.rate_seconds
    if args.quiet_wait is not None:
        settings.quiet_wait = max(0.0, args.quiet_wait)
    if args.timeout is not None:
        settings.timeout = args.timeout
    return settings


def versions() -> dict:
    found = {}
    for package in ("django", "channels", "daphne", "twisted", "websockets"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=servers.ROOT, capture_output=True, text=True, timeout=10, check=True)
        return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def working_tree() -> str:
    """The code measured is the working tree: say whether it differs from the commit."""
    paths = [line[3:] for line in git("status", "--porcelain").splitlines()]
    changed = [path for path in paths if path and not path.startswith(("bench/", "docs/performance.md"))]
    return f"{len(changed)} changed or new files outside bench/" if changed else "clean"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    # SIGTERM ends the run through the same finally blocks as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git("rev-parse", "HEAD"),
        "working_tree": working_tree(),
        "service_code": "working tree",
        "machine": machine_info(),
        "versions": versions(),
        "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    work_dir = servers.work_directory(args.work_dir)
    started = time.monotonic()
    pool = None
    rows: list[dict] = []
    extra: dict[str, dict] = {}
    troubled = True  # keep the work dir (server logs) unless the run ends cleanly
    try:
        print(f"work dir {work_dir} (configs, server logs; kept with --work-dir or when a problem shows)", flush=True)
        service_source = None
        if args.service_ref:
            service_source = work_dir / "service-src"
            meta["service_code"] = f"commit {servers.snapshot(args.service_ref, service_source)} ({args.service_ref})"
        print(f"service code: {meta['service_code']}", flush=True)
        pool = ClientPool(args.client_procs)
        rows = []
        if "fanout" in args.scenarios:
            rows = run_fanout(
                settings, pool, work_dir, log=lambda line: print(line, flush=True), service_source=service_source
            )
        for name in args.scenarios:
            if name == "fanout":
                continue
            context = suite.Context(
                pool=pool,
                work_dir=work_dir,
                counts=args.subscribers,
                quick=args.quick,
                log=lambda line: print(line, flush=True),
                source=service_source or servers.ROOT,
                rounds=settings.rounds,
                settings=settings,
                channels=args.channels,
                channel_subscribers=args.channel_subscribers,
                connect_cap=args.connect_cap,
                options=args,
            )
            try:
                extra[name] = (OWN_MODULE_SCENARIOS.get(name) or suite.SCENARIOS[name])(context)
            except Exception as error:  # noqa: BLE001 - reported, the other scenarios still run
                extra[name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
                print(f"! scenario {name} failed: {extra[name]['error']}", flush=True)
        troubled = any(
            "error" in result or (result.get("server_log_problems") or {}).get("count")
            for row in rows
            for result in row["results"].values()
        )
    finally:
        if pool is not None:
            pool.stop()
        servers.stop_all()
        if args.work_dir is None and not troubled:
            shutil.rmtree(work_dir, ignore_errors=True)
    meta["duration_s"] = round(time.monotonic() - started, 1)
    run_settings = {**vars(settings), "client_processes": args.client_procs, "quick": args.quick}
    doc = report.document(meta, run_settings, rows)
    doc["scenarios"].update(extra)
    if not rows:
        doc["scenarios"].pop("fanout")
    print()
    if rows:
        print(report.render(doc))
    print(report.render_suite(doc["scenarios"]))
    if "multiplex" in extra:
        print(multiplex.render(extra["multiplex"]))
    print(f"\n(run took {meta['duration_s']:.0f} s)")
    if args.json:
        report.write_json(doc, args.json)
        print(f"JSON saved to {args.json}")
    if args.plot:
        print(report.plot(doc, args.plot))
    if work_dir.exists():
        print(f"configs and server logs kept in {work_dir}")
    failed = any("error" in result for row in rows for result in row["results"].values())
    failed = failed or any("error" in result for result in extra.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
