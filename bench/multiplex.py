"""Scenario ``multiplex``: what a multiplexed connection costs per delivery, and whether churn leaks.

**Cost per delivery.** One service (daphne and uvicorn in turn; MEMORY, then REDIS with its own
redis-server) holds, per transport, three groups of N subscribers side by side:

- ``single``: N one-channel connections (``/api/v1/channels/<c>``), all on one channel;
- ``mux-one``: N multiplexed connections (WebSocket ``/api/v1/connect`` with a ``subscribe`` per
  channel, or SSE ``/api/v1/events?channel=...``), each following ``MUX_CHANNELS`` channels,
  messages published to the first channel only;
- ``mux-spread``: the same kind of connections on ``MUX_CHANNELS`` other channels, messages dealt
  round-robin over all of them (each connection still receives every message).

Every group gets the same M messages of ~100 bytes by HTTP push (suite.Setup), so deliveries are
alike; the groups take turns, round after round, so noise on the shared machine hits each alike.
Cost per delivery = server CPU-seconds (/proc of the server process) / deliveries. The ratio
mux/single is taken per round (the rounds ran back to back) and its median is judged against
``LIMIT`` (issue 18: within 10%).

**Churn.** One ``/api/v1/connect`` socket subscribes to and unsubscribes from ``CHURN_CHANNELS``
channels in turn, ``cycles`` times, each frame answered before the next. Two of the channels have
a one-channel holder connection, so their counts start at 1 and the hub is in their groups; the
other two start empty. After a warm-up of ``warmup`` cycles and again at the end the scenario
reads the server's RSS, the channels' counts (``GET /api/v1/channels``), the layer's group
memberships of those channels (REDIS: ``PUBSUB NUMSUB`` of the pubsub layer's group channels or
``ZCARD`` of the core layer's group keys; MEMORY: the hub's subscriptions in ``/metrics``, which
join and leave the in-memory layer's groups with them) and the service's subscription gauges.
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
from urllib.parse import quote

import httpx

from .clients import make_payload
from .servers import API_KEY, RedisServer, ServiceServer
from .suite import Context, Setup, _http_burst
from .sysstat import process_rss_bytes

logger = logging.getLogger(__name__)

LIMIT = 1.10  # issue 18: a multiplexed delivery costs at most 10% more than a one-channel one
MUX_CHANNELS = 4
CHURN_CHANNELS = 4
CHURN_HELD = 2  # churn channels with a one-channel holder connection
MUX_IMPL = "bench.muxclient:MuxSubscriber"
TRANSPORTS = ("ws", "sse")
# Concurrent pushes coalesce into runs per channel (one layer event, one write per connection for
# several messages), so every channel gets the same number of pushing connections in every group:
# with 8 on one channel against 2 on each of four, REDIS-mode spread cost 2x per delivery, mux or not.
PUSHERS_PER_CHANNEL = 2


def channel_ids(transport: str) -> dict[str, list[str]]:
    """The channels of one transport's groups: one for ``single``, ``MUX_CHANNELS`` for each mux group."""
    kind = transport
    return {
        "single": [f"bench-mux-{kind}-single"],
        "mux-one": [f"bench-mux-{kind}-one-{i}" for i in range(MUX_CHANNELS)],
        "mux-spread": [f"bench-mux-{kind}-spread-{i}" for i in range(MUX_CHANNELS)],
    }


def churn_ids() -> list[str]:
    """The channels the churn socket subscribes to in turn."""
    return [f"bench-mux-churn-{i}" for i in range(CHURN_CHANNELS)]


class MultiplexServer(ServiceServer):
    """The service with the channels of this scenario declared too (WS channels, SSE channels)."""

    def __init__(self, *args, capacity: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.capacity = capacity

    def config_text(self) -> str:
        """The benchmark service's config plus this scenario's channels, each sized for every subscriber."""
        declared = [(ident, "WS") for idents in channel_ids("ws").values() for ident in idents]
        declared += [(ident, "SSE") for idents in channel_ids("sse").values() for ident in idents]
        declared += [(ident, "WS") for ident in churn_ids()]
        return super().config_text() + "".join(
            f'  {ident}:\n    id: "{ident}"\n    type: "{kind}"\n    max_of_channel_connections: {self.capacity}\n'
            for ident, kind in declared
        )

    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def url_maker(self, transport: str, group: str):
        """``count -> URLs`` of a group's subscribers (client ids unique per group and instance)."""
        channels = channel_ids(transport)[group]
        http, ws = self.base_url(), self.base_url().replace("http", "ws", 1)

        def urls(count: int) -> list[str]:
            made = []
            for i in range(count):
                client = f"bench-{self.name}-{transport}-{group}-{i}"
                if group == "single" and transport == "ws":
                    made.append(f"{ws}/api/v1/channels/{channels[0]}?clientId={client}")
                elif group == "single":
                    made.append(f"{http}/api/v1/channels/{channels[0]}?clientId={client}")
                elif transport == "ws":
                    made.append(f"{ws}/api/v1/connect?clientId={client}#" + ",".join(channels))
                else:
                    query = "&".join(f"channel={quote(c, safe='')}" for c in channels)
                    made.append(f"{http}/api/v1/events?{query}&clientId={client}")
            return made

        return urls

    def channel_counts(self, channels: list[str]) -> dict[str, int | None]:
        """Live connections of ``channels`` as ``GET /api/v1/channels`` lists them."""
        headers = {"Authorization": f"Bearer {API_KEY}"}
        body = httpx.get(f"{self.base_url()}/api/v1/channels", headers=headers, timeout=10.0).json()
        listed = {c.get("id"): c.get("connections") for c in body["channels"]}
        return {channel: listed.get(channel) for channel in channels}

    def metrics_subscriptions(self, channels: list[str]) -> dict[str, int]:
        """This instance's subscriptions per channel from ``/metrics`` (``realtime_connections``), all transports."""
        text = httpx.get(f"{self.base_url()}/metrics", timeout=10.0).text
        found = dict.fromkeys(channels, 0)
        for line in text.splitlines():
            if not line.startswith("realtime_connections{"):
                continue
            labels, _, value = line.rpartition(" ")
            for channel in channels:
                if f'channel="{channel}"' in labels:
                    found[channel] += int(float(value))
        return found


def spread_publisher(server: MultiplexServer, channels: list[str], per_channel: int):
    """A ``Setup.burst`` publisher dealing the messages round-robin over ``channels`` (HTTP push,
    ``per_channel`` keep-alive connections to each channel)."""

    def publish(phase: str, messages: int, size: int) -> dict:
        bodies = [make_payload(phase, seq, size) for seq in range(messages)]
        path_headers = [server.push_target(channel) for channel in channels]

        async def all_channels():
            return await asyncio.gather(
                *(
                    _http_burst(server.port, path, headers, wrap, bodies[i :: len(channels)], per_channel)
                    for i, (path, headers, wrap) in enumerate(path_headers)
                )
            )

        parts = asyncio.run(all_channels())
        statuses: dict[int, int] = {}
        for part in parts:
            for status, count in part["statuses"].items():
                statuses[status] = statuses.get(status, 0) + count
        return {
            "t_first": min(p["t_first"] for p in parts),
            "t_last": max(p["t_last"] for p in parts),
            "statuses": statuses,
            "errors": [e for p in parts for e in p["errors"]],
        }

    return publish


def _cost_ratios(single: list[dict], mux: list[dict]) -> tuple[list[float], float | None]:
    """Per-round cost ratios mux/single (cost = 1 / deliveries per server CPU-second) and their median."""
    ratios = [
        s["deliveries_per_server_cpu_s"] / m["deliveries_per_server_cpu_s"]
        for s, m in zip(single, mux, strict=False)
        if s["deliveries_per_server_cpu_s"] and m["deliveries_per_server_cpu_s"]
    ]
    return ratios, statistics.median(ratios) if ratios else None


def _group_summary(rounds: list[dict]) -> dict:
    per_cpu = [r["deliveries_per_server_cpu_s"] for r in rounds if r["deliveries_per_server_cpu_s"]]
    median = statistics.median(per_cpu) if per_cpu else None
    return {
        "subscribers": rounds[0]["subscribers"] if rounds else 0,
        "messages": rounds[0]["messages"] if rounds else 0,
        "expected": sum(r["expected"] for r in rounds),
        "received": sum(r["received"] for r in rounds),
        "lost": sum(r["lost"] for r in rounds),
        "other_frames": sum(r["other_frames"] for r in rounds),
        "close_codes": {k: v for r in rounds for k, v in r["close_codes"].items()},
        "deliveries_per_server_cpu_s": median,
        "server_us_per_delivery": 1e6 / median if median else None,
        "deliveries_per_s": statistics.median([r["deliveries_per_s"] for r in rounds]) if rounds else None,
        "rounds": [
            {
                k: r[k]
                for k in ("deliveries_per_s", "deliveries_per_server_cpu_s", "lost", "server_cores", "other_cores")
            }
            for r in rounds
        ],
    }


def deliveries(ctx: Context, server: MultiplexServer, transport: str, n: int) -> dict:
    """The three groups of one transport on ``server``: connect, warm up, alternate bursts, compare."""
    names = channel_ids(transport)
    impl = {"ws": ("raw", MUX_IMPL, MUX_IMPL), "sse": ("sse", "sse", "sse")}[transport]
    setups = [
        Setup(
            ctx.pool,
            f"{server.name}-{transport}-{group}",
            [server],
            server.url_maker(transport, group),
            kind,
            server,
            names[group][0],
            ctx.log,
        )
        for group, kind in zip(names, impl, strict=True)
    ]
    spread = spread_publisher(server, names["mux-spread"], PUSHERS_PER_CHANNEL)
    asked = ctx.options.messages if ctx.options is not None else None
    messages = asked or (20 if ctx.quick else max(10, min(2000, 50_000 // n)))
    timeout = 30.0 if ctx.quick else 120.0
    results: dict[str, list[dict]] = {group: [] for group in names}
    connected: dict[str, int] = {}
    try:
        for group, setup in zip(names, setups, strict=True):
            connected[group] = setup.connect(n)["connected"]
            setup.warmup()
        for index in range(ctx.rounds):
            ctx.log(f" {server.name} {transport} round {index + 1}/{ctx.rounds}")
            # Each round starts with the next group: a burst's cost may depend on what ran before it
            # (garbage collections, buffers still draining), so no group is always first.
            turns = list(zip(names, setups, strict=True))
            for group, setup in turns[index % len(turns) :] + turns[: index % len(turns)]:
                publisher = spread if group == "mux-spread" else None
                burst = setup.burst(messages, 100, timeout, concurrency=PUSHERS_PER_CHANNEL, publisher=publisher)
                results[group].append(burst)
    finally:
        for setup in setups:
            setup.close()
    row: dict = {
        "transport": transport,
        "subscribers": n,
        "channels_per_connection": MUX_CHANNELS,
        "connected": connected,
        "groups": {group: _group_summary(rounds) for group, rounds in results.items()},
        "ratios": {},
    }
    for group in ("mux-one", "mux-spread"):
        per_round, median = _cost_ratios(results["single"], results[group])
        row["ratios"][group] = {
            "cost_ratio": median,
            "round_ratios": per_round,
            "verdict": None if median is None else ("PASS" if median <= LIMIT else "FAIL"),
        }
    return row


def layer_groups(redis: RedisServer | None, layer: str, channels: list[str]) -> dict[str, int] | None:
    """Members of each channel's group in the Redis layer (None in MEMORY mode)."""
    if redis is None:
        return None
    import redis as redis_client

    client = redis_client.Redis.from_url(redis.url())
    try:
        found = {}
        for channel in channels:
            group = f"realtime.ch.{channel}"
            if layer == "pubsub":
                names = client.pubsub_channels(f"*__group__{group}")
                found[channel] = sum(count for _, count in client.pubsub_numsub(*names)) if names else 0
            else:
                keys = list(client.scan_iter(match=f"*:group:{group}"))
                found[channel] = sum(client.zcard(key) for key in keys)
        return found
    finally:
        client.close()


async def _churn_socket(url: str, channels: list[str], warmup: int, cycles: int, at_warm, at_end) -> dict:
    """Subscribe and unsubscribe ``warmup + cycles`` times on one socket; ``at_warm()`` runs after the
    warm-up and ``at_end()`` after the last cycle, the socket still open in both."""
    from websockets.asyncio.client import connect

    refused: dict[str, int] = {}
    async with connect(url, compression=None, ping_interval=None, max_size=None) as socket:
        opening = json.loads(await socket.recv())
        assert_control(opening, "connected")
        started = None
        for i in range(warmup + cycles):
            if i == warmup:
                await asyncio.to_thread(at_warm)
                started = time.monotonic()
            channel = channels[i % len(channels)]
            for frame, answer in (({"subscribe": channel}, "subscribed"), ({"unsubscribe": channel}, "unsubscribed")):
                await socket.send(json.dumps({**frame, "ref": i}))
                body = json.loads(await socket.recv())
                if body.get("control") != answer:
                    key = f"{answer}: {body.get('error') or body.get('control')}"
                    refused[key] = refused.get(key, 0) + 1
        seconds = time.monotonic() - (started or time.monotonic())
        await asyncio.to_thread(at_end)
    return {
        "cycles": cycles,
        "seconds": seconds,
        "cycles_per_s": cycles / seconds if seconds else None,
        "refused": refused,
    }


def assert_control(body: dict, control: str) -> None:
    """Raise unless ``body`` is the ``control`` frame expected."""
    if body.get("control") != control:
        raise RuntimeError(f"expected a {control!r} frame, got {body}")


def churn(ctx: Context, server: MultiplexServer, redis: RedisServer | None, layer: str, cycles: int) -> dict:
    """The churn measurement on ``server``: state after the warm-up and after ``cycles`` more cycles."""
    channels = churn_ids()
    warmup = max(100, cycles // 20)
    ws = server.base_url().replace("http", "ws", 1)
    snapshots: dict[str, dict] = {}

    def snapshot(label: str) -> None:
        time.sleep(1.0)  # let the server finish the last unsubscribe and settle
        snapshots[label] = {
            "rss_bytes": process_rss_bytes(server.pid),
            "channel_counts": server.channel_counts(channels),
            "hub_subscriptions": server.metrics_subscriptions(channels),
            "layer_group_members": layer_groups(redis, layer, channels),
        }

    async def run() -> dict:
        from websockets.asyncio.client import connect

        holders = [
            await connect(f"{ws}/api/v1/channels/{channel}?clientId=bench-holder-{i}", ping_interval=None)
            for i, channel in enumerate(channels[:CHURN_HELD])
        ]
        try:
            url = f"{ws}/api/v1/connect?clientId=bench-churner-{server.name}"
            return await _churn_socket(
                url, channels, warmup, cycles, lambda: snapshot("before"), lambda: snapshot("after")
            )
        finally:
            for holder in holders:
                await holder.close()

    done = asyncio.run(run())
    before, after = snapshots["before"], snapshots["after"]
    result = {
        "layer": layer if redis is not None else "memory",
        "warmup_cycles": warmup,
        **done,
        "before": before,
        "after": after,
        "rss_growth_bytes": (after["rss_bytes"] or 0) - (before["rss_bytes"] or 0),
    }
    ctx.log(
        f"  churn {server.name}: {cycles} cycles at {done['cycles_per_s'] or 0:,.0f}/s, "
        f"RSS {before['rss_bytes'] / 2**20:.1f} -> {after['rss_bytes'] / 2**20:.1f} MiB, "
        f"counts {before['channel_counts']} -> {after['channel_counts']}, "
        f"groups {before['layer_group_members']} -> {after['layer_group_members']}"
    )
    return result


def returned(churned: dict) -> bool:
    """Whether the counts, hub subscriptions and group memberships after the churn equal those before."""
    before, after = churned["before"], churned["after"]
    keys = ("channel_counts", "hub_subscriptions", "layer_group_members")
    return not churned["refused"] and all(before[key] == after[key] for key in keys)


def scenario_multiplex(ctx: Context) -> dict:
    """Cost per delivery (mux vs single, WS and SSE) and churn, per ASGI server and driver."""
    n = max(ctx.counts)
    cycles = 300 if ctx.quick else 10_000
    asgi_servers = [ctx.asgi_server] if ctx.quick else ["daphne", "uvicorn"]
    rows, churns = [], []
    redis = RedisServer(ctx.work_dir)
    try:
        redis.start()
        # (server, driver, layer, measure deliveries, measure churn). REDIS: the pubsub layer (the default);
        # the core layer (its groups are sorted sets) for churn only. A Redis churn takes minutes (about
        # 80 cycles/s here), so it runs under the first server only.
        first = asgi_servers[0]
        plan = [
            (server_cmd, driver, layer, True, driver == "memory" or server_cmd == first)
            for server_cmd in asgi_servers
            for driver, layer in (("memory", None), ("redis", "pubsub"))
        ]
        if not ctx.quick:
            plan.append((first, "redis", "core", False, True))
        for server_cmd, driver, layer, measure_deliveries, measure_churn in plan:
            label = f"{server_cmd}-{driver}" + (f"-{layer}" if layer else "")
            on_redis = redis if driver == "redis" else None
            server = MultiplexServer(
                ctx.work_dir,
                capacity=n + 50,
                max_connections=n + 50,
                source=ctx.source,
                name=f"mux-{label}",
                server_cmd=server_cmd,
                redis_url=on_redis.url() if on_redis else None,
                layer=layer or "pubsub",
                prefix=f"bench{label.replace('-', '')}",
            )
            try:
                server.start()
                if measure_deliveries:
                    for transport in TRANSPORTS:
                        ctx.log(f"multiplex: {label} {transport}, N={n} per group")
                        row = deliveries(ctx, server, transport, n)
                        ctx.log(
                            f"  => {label} {transport}: cost mux/single "
                            + ", ".join(
                                f"{group} {_num(r['cost_ratio'], '.3f')} {r['verdict']} "
                                f"(rounds {' '.join(_num(x, '.3f') for x in r['round_ratios'])})"
                                for group, r in row["ratios"].items()
                            )
                            + ", us/delivery "
                            + " ".join(
                                f"{group} {_num(g['server_us_per_delivery'], '.2f')}"
                                for group, g in row["groups"].items()
                            )
                            + f", lost {sum(g['lost'] for g in row['groups'].values())}"
                        )
                        rows.append({"asgi_server": server_cmd, "driver": driver, "layer": layer, **row})
                if measure_churn:
                    churned = churn(ctx, server, on_redis, layer or "memory", cycles)
                    churned["returned"] = returned(churned)
                    churns.append({"asgi_server": server_cmd, "driver": driver, **churned})
            finally:
                server.stop()
    finally:
        redis.stop()
    return {"subscribers": n, "channels_per_connection": MUX_CHANNELS, "limit": LIMIT, "rows": rows, "churn": churns}


def _num(value, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def render(result: dict) -> str:
    """The scenario's tables: cost per delivery with the mux/single ratios, then churn."""
    if "rows" not in result:
        return ""
    lines = [
        "",
        f"Multiplexing: cost per delivery (server us / delivery), {result['subscribers']} subscribers per group, "
        f"{result['channels_per_connection']} channels per multiplexed connection; ratio = mux / single "
        f"(median of per-round ratios), PASS at <= {result['limit']:.2f}:",
        f"{'server':<8} {'driver':<13} {'tr':<4} {'single us':>9} {'one us':>8} {'spread us':>9} "
        f"{'one/single':>10} {'':<4} {'spread/single':>13} {'':<4} {'lost':>5}  rounds (one; spread)",
    ]
    for row in result["rows"]:
        groups, ratios = row["groups"], row["ratios"]
        driver = row["driver"] + (f"/{row['layer']}" if row["layer"] else "")
        lost = sum(g["lost"] for g in groups.values())
        rounds = "; ".join(
            " ".join(_num(r, ".2f") for r in ratios[group]["round_ratios"]) for group in ("mux-one", "mux-spread")
        )
        lines.append(
            f"{row['asgi_server']:<8} {driver:<13} {row['transport']:<4} "
            f"{_num(groups['single']['server_us_per_delivery'], '.2f'):>9} "
            f"{_num(groups['mux-one']['server_us_per_delivery'], '.2f'):>8} "
            f"{_num(groups['mux-spread']['server_us_per_delivery'], '.2f'):>9} "
            f"{_num(ratios['mux-one']['cost_ratio'], '.3f'):>10} {ratios['mux-one']['verdict'] or '-':<4} "
            f"{_num(ratios['mux-spread']['cost_ratio'], '.3f'):>13} {ratios['mux-spread']['verdict'] or '-':<4} "
            f"{lost:>5}  {rounds}"
        )
    lines += [
        "",
        "Multiplexing: subscribe + unsubscribe churn on one /api/v1/connect socket (after the warm-up -> end):",
        f"{'server':<8} {'driver':<13} {'cycles':>7} {'cycles/s':>8} {'RSS MiB':>15} {'growth KiB':>10} "
        f"{'counts':<15} {'hub subs':<15} {'layer groups':<15} returned",
    ]
    for c in result["churn"]:
        before, after = c["before"], c["after"]

        def pair(key, before=before, after=after):
            first, last = before[key], after[key]
            if first is None:
                return "-"
            return ",".join(str(v) for v in first.values()) + "->" + ",".join(str(v) for v in last.values())

        driver = c["driver"] + (f"/{c['layer']}" if c["driver"] == "redis" else "")
        lines.append(
            f"{c['asgi_server']:<8} {driver:<13} {c['cycles']:>7,} {_num(c['cycles_per_s']):>8} "
            f"{before['rss_bytes'] / 2**20:>6.1f}->{after['rss_bytes'] / 2**20:<7.1f} "
            f"{c['rss_growth_bytes'] / 1024:>10,.0f} {pair('channel_counts'):<15} {pair('hub_subscriptions'):<15} "
            f"{pair('layer_group_members'):<15} {'yes' if c['returned'] else 'NO'}"
            + (f"  refused {c['refused']}" if c["refused"] else "")
        )
    return "\n".join(lines)
