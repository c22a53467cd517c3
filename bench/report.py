"""The benchmark's output: a terminal table with ratios and warnings, and a JSON document.

``document()`` builds the JSON-ready result of a run; ``render()`` turns it into text. Both are
keyed by scenario so later scenarios add their own section and table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# A client process above this share of one core is saturated: the server may be faster than
# the number says (the number is then a floor, not the server's limit).
CLIENT_SATURATED = 0.90
# Other processes using more than this many cores during a phase make the numbers noisy.
NOISY_OTHER_CORES = 0.30


def document(meta: dict, settings: dict, fanout_rows: list[dict]) -> dict:
    """The whole run as one JSON-ready object, with the warnings of each row attached."""
    attach_warnings(fanout_rows)
    return {"meta": meta, "settings": settings, "scenarios": {"fanout": fanout_rows}}


def attach_warnings(rows: list[dict]) -> None:
    """Attach to each fan-out-shaped row (fanout, channels, procs) the warnings of its servers."""
    for row in rows:
        row["warnings"] = [w for result in row["results"].values() for w in warnings(result)]


def _get(data: dict, *keys):
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def warnings(result: dict) -> list[str]:
    """What a reader must know before trusting one server's numbers (one line per issue)."""
    name, n = result.get("server", "?"), result.get("subscribers", "?")
    where = f"{name} N={n}"
    found: list[str] = []
    if "error" in result:
        found.append(f"{where}: run failed: {result['error']}")
    if result.get("server_alive_at_end") is False:
        found.append(f"{where}: the server process was not running at the end")
    connect = result.get("connect") or {}
    if connect.get("failed"):
        found.append(f"{where}: {connect['failed']} subscriber connections failed: {connect.get('errors')}")
    cores = os.cpu_count() or 1
    for phase in ("burst", "rate"):
        data = result.get(phase)
        if not data:
            continue
        rounds = data.get("rounds", [])
        saturated = [(i + 1, r["cpu"]["client_cores_max"] or 0.0) for i, r in enumerate(rounds)]
        saturated = [(i, v) for i, v in saturated if v > CLIENT_SATURATED]
        if saturated:
            found.append(
                f"{where} {phase}: load clients saturated in round(s) {_rounds(saturated)} (busiest client "
                f"{max(v for _, v in saturated):.2f} cores): the server's number is a floor, not its limit"
            )
        noisy = [(i + 1, r["cpu"]["other_cores"]) for i, r in enumerate(rounds)]
        noisy = [(i, v) for i, v in noisy if v > NOISY_OTHER_CORES]
        if noisy:
            found.append(
                f"{where} {phase}: other processes used up to {max(v for _, v in noisy):.2f} cores in round(s) "
                f"{_rounds(noisy)} (noise)"
            )
        full = [(i + 1, r["cpu"]["machine_busy_cores"] - r["cpu"]["other_cores"]) for i, r in enumerate(rounds)]
        full = [(i, v) for i, v in full if v > 0.9 * cores]
        if full:
            found.append(
                f"{where} {phase}: server + load clients alone used {max(v for _, v in full):.2f} of {cores} cores "
                f"in round(s) {_rounds(full)}: the number is bounded by the machine"
            )
        if data.get("lost"):
            found.append(f"{where} {phase}: {data['lost']:,} of {data['expected']:,} deliveries lost")
        if data.get("close_codes"):
            found.append(f"{where} {phase}: subscribers closed by the server: {data['close_codes']} (code: count)")
        if data.get("other_frames"):
            sample = (data.get("other_samples") or [""])[0]
            found.append(f"{where} {phase}: {data['other_frames']} non-message frames, e.g. {sample[:160]}")
        if data.get("out_of_order"):
            found.append(f"{where} {phase}: {data['out_of_order']} messages out of order or repeated")
        if "deadline" in data.get("ended", []):
            found.append(f"{where} {phase}: stopped waiting at the deadline")
    rate = result.get("rate") or {}
    burst = result.get("burst") or {}
    if rate and burst.get("deliveries_per_s") and burst.get("live_subscribers"):
        # The fixed rate is spread over the channels: each message reaches one channel's subscribers.
        demand = rate["rate"] * burst["live_subscribers"] / result.get("channels", 1)
        if demand > 0.7 * burst["deliveries_per_s"]:
            found.append(
                f"{where} rate: {rate['rate']:g} msg/s to {burst['live_subscribers']} subscribers asks for "
                f"{demand:,.0f} deliveries/s, {demand / burst['deliveries_per_s']:.1f}x the burst capacity measured "
                f"({burst['deliveries_per_s']:,.0f}/s): its latency is mostly queueing"
            )
    drain = _get(result, "teardown", "drain") or {}
    if drain.get("connections_left"):
        found.append(
            f"{where}: the channel still counted {drain['connections_left']} connections "
            f"{drain['seconds']:.0f} s after every client had left"
        )
    if result.get("pending_instances_killed_at_stop"):
        found.append(
            f"{where}: daphne killed {result['pending_instances_killed_at_stop']} pending application instances "
            "when stopped after every client had left"
        )
    publisher = _get(result, "teardown", "publisher") or {}
    if publisher.get("frames_received"):
        found.append(
            f"{where}: the publisher received {publisher['frames_received']} frames, "
            f"e.g. {(publisher.get('samples') or [''])[0][:160]}"
        )
    problems = result.get("server_log_problems") or {}
    if problems.get("count"):
        example = problems["examples"][0][:200]
        found.append(f"{where}: {problems['count']} problem lines in the server log, e.g. {example}")
    return found


def _rounds(pairs: list[tuple[int, float]]) -> str:
    return ",".join(str(i) for i, _ in pairs)


def _k(value) -> str:
    return "-" if value is None else f"{value / 1000:.1f}k"


def _fmt(value, spec: str = ",.0f", missing: str = "-") -> str:
    if value is None:
        return missing
    return format(value, spec)


def render(doc: dict) -> str:
    """The run as text: setup line, one table of all subscriber counts, then warnings."""
    meta, settings = doc["meta"], doc["settings"]
    machine = meta["machine"]
    lines = [
        f"Realtime fan-out benchmark, {meta['date']}, commit {meta.get('commit', '?')[:10]} "
        f"(working tree: {meta.get('working_tree', '?')}); service code measured: {meta.get('service_code')}",
        f"machine: {machine['cpu_model']}, {machine['cores']} cores, {machine['memory_gb']} GB, "
        f"Python {machine['python']}, load average before the run {machine['load_average_1m']:.2f}",
        f"clients: {settings['client_processes']} subscriber processes ({settings['client_impl']} client) "
        f"+ 1 publisher; payload {settings['size']} bytes; fixed rate {settings['rate']:g} msg/s "
        f"for {settings['rate_seconds']:g} s",
        "",
        f"{settings['rounds']} round(s); the servers take turns in each round.",
        "deliv/s: burst deliveries per second = messages received by all subscribers / (last delivery - first "
        "publish), median of the rounds (range: min-max); delivered: totals over the rounds.",
        "/cpu-s: deliveries per second of server CPU (steadier than deliv/s when other processes compete).",
        "ratio: service / this server (bare websockets or bare ASGI app), on that server's line: median of the "
        "per-round ratios (higher is better; the baselines send the bare payload, the service its JSON envelope).",
        "p50/p99/max: publish -> deliver latency at the fixed rate, every round pooled.",
        "srv, clients, other: CPU in cores (1.00 = one full core) during the median burst of the server, of each "
        "subscriber process, and of every other process on the machine.",
        "",
    ]
    lines += fanout_table(doc["scenarios"]["fanout"])
    return "\n".join(lines)


SYSCALL_COLUMNS = ("all", "sendto", "sendmsg", "write", "writev", "epoll_wait", "epoll_ctl", "recvfrom", "read")


def _per_server(rows: list[dict], phase: str, key: str) -> list[tuple[dict, str, object]]:
    """``(row, server, phase summary's key)`` for every server of every row; [] when none has it."""
    counted = [
        (row, name, (result.get(phase) or {}).get(key)) for row in rows for name, result in row["results"].items()
    ]
    return counted if any(value for _, _, value in counted) else []


def steady_rate_table(rows: list[dict]) -> list[str]:
    """Deliveries per server CPU-second in the fixed-rate phase (one message at a time), with ratios."""
    counted = _per_server(rows, "rate", "deliveries_per_server_cpu_s")
    if not counted:
        return []
    width = max(len(name) for _, name, _ in counted)
    header = f"{'N':>5} {'server':<{width}} {'/cpu-s':>8} {'ratio':>5}"
    lines = ["", "Steady rate (the fixed-rate phase): deliveries per server CPU-second; ratio = ours / this:"]
    lines += [header, "-" * len(header)]
    for row, name, per in counted:
        ratio = ((row.get("ratios") or {}).get(name) or {}).get("rate_per_cpu_s")
        lines.append(f"{row['subscribers']:>5} {name:<{width}} {_fmt(per):>8} {_fmt(ratio, '.2f'):>5}")
    return lines


def syscall_table(rows: list[dict]) -> list[str]:
    """System calls per delivery in the median burst (``--syscalls``); nothing when not counted."""
    counted = _per_server(rows, "burst", "syscalls_per_delivery")
    if not counted:
        return []
    width = max(len(name) for _, name, _ in counted)
    header = f"{'N':>5} {'server':<{width}} " + " ".join(f"{column:>10}" for column in SYSCALL_COLUMNS)
    lines = ["", "System calls per delivery (median burst, perf stat):", header, "-" * len(header)]
    for row, name, per in counted:
        cells = " ".join(f"{_fmt((per or {}).get(column), '.3f'):>10}" for column in SYSCALL_COLUMNS)
        lines.append(f"{row['subscribers']:>5} {name:<{width}} {cells}")
    return lines


def fanout_table(rows: list[dict]) -> list[str]:
    """The fan-out rows (also those of the channels and procs scenarios) as a table, then their warnings."""
    width = max((len(name) for row in rows for name in row["results"]), default=8)
    header = (
        f"{'N':>5} {'server':<{width}} {'burst':>5} {'delivered':>17} {'deliv/s':>8} {'range':>12} {'ratio':>5} "
        f"{'/cpu-s':>7} {'ratio':>5} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'srv':>5} {'clients':>9} {'other':>5}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        for name, result in row["results"].items():
            burst = result.get("burst") or {}
            latency = (result.get("rate") or {}).get("latency") or {}
            cpu = burst.get("cpu") or {}
            clients = cpu.get("client_cores") or {}
            ratios = (row.get("ratios") or {}).get(name) or {}
            delivered = f"{_fmt(burst.get('received'))}/{_fmt(burst.get('expected'))}" if burst else "failed"
            spread = f"{_k(burst.get('deliveries_per_s_min'))}-{_k(burst.get('deliveries_per_s_max'))}" if burst else ""
            lines.append(
                f"{row['subscribers']:>5} {name:<{width}} {_fmt(burst.get('messages')):>5} {delivered:>17} "
                f"{_fmt(burst.get('deliveries_per_s')):>8} {spread:>12} "
                f"{_fmt(ratios.get('deliveries_per_s'), '.2f'):>5} "
                f"{_fmt(burst.get('deliveries_per_server_cpu_s')):>7} {_fmt(ratios.get('per_cpu_s'), '.2f'):>5} "
                f"{_fmt(latency.get('p50_ms'), '.1f'):>7} {_fmt(latency.get('p99_ms'), '.1f'):>7} "
                f"{_fmt(latency.get('max_ms'), '.1f'):>7} {_fmt(cpu.get('server_cores'), '.2f'):>5} "
                f"{'+'.join(_fmt(v, '.2f') for v in clients.values()) or '-':>9} "
                f"{_fmt(cpu.get('other_cores'), '.2f'):>5}"
            )
    lines += steady_rate_table(rows)
    lines += syscall_table(rows)
    all_warnings = [w for row in rows for w in row.get("warnings", [])]
    if all_warnings:
        lines += ["", "Warnings:"] + [f"  - {w}" for w in all_warnings]
    else:
        lines += ["", "No warnings: clients not saturated, nothing lost, server logs clean."]
    return lines


def write_json(doc: dict, path: str | Path) -> None:
    """Save the document (creating the folder if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def render_suite(scenarios: dict) -> str:
    """Tables of the scenarios other than fanout (whichever ran)."""
    lines: list[str] = []
    for key, title in (
        (
            "channels",
            "Many channels ({channels} channels x {subscribers_per_channel} subscribers, {publish}; "
            "fixed rate {rate:g} msg/s spread over the channels; ratio = service / this server):",
        ),
        (
            "procs",
            "Processes per machine (Redis, layer {layer}; subscribers split, WebSocket publish on the first "
            "process; ratio = 2 processes / 1 process, the scaling factor):",
        ),
    ):
        if key in scenarios and "rows" in scenarios[key]:
            attach_warnings(scenarios[key]["rows"])
            lines += ["", title.format(**scenarios[key])]
            lines += fanout_table(scenarios[key]["rows"])

    def burst_line(n, name, r, ratio=None, cpu_ratio=None):
        lat = r.get("latency") or {}
        return (
            f"{n:>5} {name:<14} {_fmt(r.get('received'))}/{_fmt(r.get('expected')):<10} "
            f"{_fmt(r.get('deliveries_per_s')):>8} {_fmt(ratio, '.2f'):>5} "
            f"{_fmt(r.get('deliveries_per_server_cpu_s')):>8} {_fmt(cpu_ratio, '.2f'):>5} "
            f"{_fmt(r.get('pushes_per_s')):>7} {_fmt(lat.get('p50_ms'), '.1f'):>7} {_fmt(lat.get('p99_ms'), '.1f'):>7} "
            f"{_fmt(r.get('server_cores'), '.2f'):>5} {_fmt(r.get('other_cores'), '.2f'):>5}"
        )

    header = (
        f"{'N':>5} {'setup':<14} {'delivered':<21} {'deliv/s':>8} {'ratio':>5} {'/cpu-s':>8} {'ratio':>5} "
        f"{'push/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'srv':>5} {'other':>5}"
    )
    if "rows" in scenarios.get("sse", {}):
        server = scenarios["sse"].get("asgi_server", "daphne")
        lines += ["", f"SSE fan-out (HTTP publish; ratio = service / bare ASGI SSE app under {server}):", header]
        for row in scenarios["sse"]["rows"]:
            for name, r in row["results"].items():
                ours = name == "service"
                lines.append(
                    burst_line(
                        row["subscribers"],
                        name,
                        r,
                        row["ratio_deliveries_per_s"] if ours else None,
                        row["ratio_per_cpu_s"] if ours else None,
                    )
                )
    if "rows" in scenarios.get("push", {}):
        lines += ["", "HTTP push (16 keep-alive connections; push/s = pushes accepted per second):", header]
        for row in scenarios["push"]["rows"]:
            lines.append(burst_line(row["subscribers"], "service", row["results"]["service"]))
    if "rows" in scenarios.get("redis", {}):
        lines += ["", "Redis mode (two instances, subscribers split, publish on one; ratio = vs memory mode):", header]
        for row in scenarios["redis"]["rows"]:
            for name, r in row["results"].items():
                layer = name.removeprefix("redis-")
                lines.append(
                    burst_line(
                        row["subscribers"],
                        name,
                        r,
                        row.get(f"ratio_{layer}_deliveries_per_s"),
                        row.get(f"ratio_{layer}_per_cpu_s"),
                    )
                )
    if "results" in scenarios.get("publish", {}):
        publish = scenarios["publish"]
        lines += [
            "",
            f"publish() from a separate Django process (Redis mode, {publish['subscribers']} WS subscribers, "
            f"{publish['messages']} messages a round; push/s = publishes/s; ratio = vs HTTP push):",
            header + f" {'publisher':>9}",
        ]
        for name, r in publish["results"].items():
            ratio = (publish["ratios_to_http_push"].get(name) or {}) if name != "http push" else {}
            publisher = next(iter((r.get("publisher_cores") or {}).values()), None)
            lines.append(
                burst_line(
                    publish["subscribers"],
                    name,
                    r,
                    ratio.get("publishes_per_s"),
                    ratio.get("deliveries_per_server_cpu_s"),
                )
                + f" {_fmt(publisher, '.2f'):>9}"
            )
        lines.append("  (ratio columns: publishes/s and deliveries per server CPU-second, each / HTTP push)")
    if "results" in scenarios.get("connect", {}):
        connect = scenarios["connect"]
        lines += [
            "",
            f"Connect rate (new connections kept open, handshakes in flight ramped {connect['levels']}, "
            f"cap {connect['cap']:,}):",
            f"{'setup':<18} {'opened':>7} {'best/s':>7}  per step (/s at in-flight)          first error",
        ]
        for name, r in connect["results"].items():
            steps = " ".join(f"{_fmt(step['per_second'])}@{step['in_flight']}" for step in r["steps"])
            error = r.get("first_error")
            said = (
                "none up to the cap"
                if error is None
                else (
                    f"after {error['after_open']:,} open, {error['in_flight']} in flight: "
                    + "; ".join(f"{count} x {text}" for text, count in error["errors"].items())[:160]
                )
            )
            lines.append(f"{name:<18} {_fmt(r['opened']):>7} {_fmt(r['best_per_second']):>7}  {steps:<34} {said}")
    for key, result in scenarios.items():
        if isinstance(result, dict) and "error" in result:
            lines += ["", f"{key}: failed: {result['error'][:500]}"]
    if "rows" in scenarios.get("memory", {}):
        lines += ["", "Idle memory (server RSS growth / idle connections):"]
        lines.append(f"{'N':>5} {'setup':<14} {'connected':>9} {'RSS before':>11} {'RSS after':>10} {'per conn':>9}")
        for row in scenarios["memory"]["rows"]:
            for key, r in row.items():
                if key == "subscribers":
                    continue
                lines.append(
                    f"{row['subscribers']:>5} {key:<14} {_fmt(r.get('connected')):>9} "
                    f"{_fmt((r.get('rss_before') or 0) / 1e6, '.1f'):>8} MB "
                    f"{_fmt((r.get('rss_after') or 0) / 1e6, '.1f'):>7} MB "
                    f"{_fmt((r.get('bytes_per_connection') or 0) / 1024, '.1f'):>6} KB"
                )
    return "\n".join(lines)


def plot(doc: dict, path: str | Path) -> str:
    """A PNG of deliveries/s and latency vs subscribers, ours beside the baselines; a message either way."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install -r bench/requirements.txt)"
    series: dict[str, tuple[list, list, list]] = {}

    def add(label, n, rate, p50):
        xs, ys, ls = series.setdefault(label, ([], [], []))
        xs.append(n)
        ys.append(rate or 0)
        ls.append(p50)

    for row in doc["scenarios"].get("fanout", []):
        for name, r in row["results"].items():
            burst = r.get("burst") or {}
            add(f"WS {name}", row["subscribers"], burst.get("deliveries_per_s"), _get(r, "rate", "latency", "p50_ms"))
    for row in (doc["scenarios"].get("sse") or {}).get("rows", []):
        for name, r in row["results"].items():
            add(f"SSE {name}", row["subscribers"], r.get("deliveries_per_s"), _get(r, "latency", "p50_ms"))
    for row in (doc["scenarios"].get("redis") or {}).get("rows", []):
        for name, r in row["results"].items():
            add(f"WS {name}", row["subscribers"], r.get("deliveries_per_s"), _get(r, "latency", "p50_ms"))
    if not series:
        return "plot skipped: no fan-out scenario ran"
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, (xs, ys, ls) in sorted(series.items()):
        style = "--" if "baseline" in label else "-"
        left.plot(xs, ys, style, marker="o", label=label)
        right.plot(xs, [v if v is not None else float("nan") for v in ls], style, marker="o", label=label)
    for axis, title in (
        (left, "burst deliveries/s"),
        (right, "latency p50, ms (burst for SSE/Redis, fixed rate for WS)"),
    ):
        axis.set_xscale("log")
        axis.set_xlabel("subscribers")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
    right.set_yscale("log")
    left.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return f"plot saved to {path}"
