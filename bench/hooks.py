"""The ``hooks`` scenario: WebSocket client-publish throughput with no hook against a trivial async
``on_publish`` hook (bench/hook_trivial.py), on two otherwise identical MEMORY-mode services.

Each round, ``PUBLISHERS`` connections (``echo=1``) send their frames as fast as the server reads
them, and a round ends when every connection has received every frame: frames/s and the server's CPU-seconds per
frame, the median of the rounds, and their ratio (hook / no hook).
"""

from __future__ import annotations

import asyncio
import statistics
import time

import websockets

from .sysstat import process_cpu_seconds

PUBLISHERS = 4


async def _round(service, frames: int) -> tuple[float, float]:
    """Frames/s and server CPU-seconds per frame of one burst of ``frames`` per publisher."""
    urls = [service.subscriber_url(f"hookbench-{i}") + "&echo=1" for i in range(PUBLISHERS)]
    connections = [await websockets.connect(url, max_queue=None) for url in urls]
    try:

        async def publish_and_read(ws):
            for index in range(frames):
                await ws.send(f"frame {index}")
            for _ in range(frames * PUBLISHERS):  # every publisher's frames, its own included
                await asyncio.wait_for(ws.recv(), 60)

        cpu_before, started = process_cpu_seconds(service.pid), time.monotonic()
        await asyncio.gather(*(publish_and_read(ws) for ws in connections))
        elapsed, cpu = time.monotonic() - started, process_cpu_seconds(service.pid) - cpu_before
    finally:
        await asyncio.gather(*(ws.close() for ws in connections))
    total = frames * PUBLISHERS
    return total / elapsed, cpu / total


def scenario_hooks(ctx) -> dict:
    """No hook against a trivial async on_publish hook, rounds alternating between the two services."""
    frames = 500 if ctx.quick else 5000
    rounds = max(ctx.rounds, 3)
    services = {"no hook": ctx.service(PUBLISHERS, "nohook"), "async hook": ctx.service(PUBLISHERS, "hook")}
    services["async hook"].prepare()
    services["async hook"].env["REALTIME_HOOKS"] = "bench.hook_trivial"
    measured: dict[str, list[tuple[float, float]]] = {name: [] for name in services}
    try:
        for service in services.values():
            service.start()
            asyncio.run(_round(service, 50))  # warm-up: registry loaded, code paths hot
        ctx.log(f"hooks: {PUBLISHERS} WS publishers x {frames} frames (echo), {rounds} rounds, MEMORY")
        for _ in range(rounds):
            for name, service in services.items():
                measured[name].append(asyncio.run(_round(service, frames)))
    finally:
        for service in services.values():
            service.stop()
    results = {
        name: {
            "frames_per_s": statistics.median(rate for rate, _ in rows),
            "server_cpu_us_per_frame": statistics.median(cpu for _, cpu in rows) * 1e6,
            "rounds": [round(rate) for rate, _ in rows],
        }
        for name, rows in measured.items()
    }
    plain, hooked = results["no hook"], results["async hook"]
    ratio = hooked["frames_per_s"] / plain["frames_per_s"]
    for name, row in results.items():
        ctx.log(
            f"  {name}: {row['frames_per_s']:,.0f} frames/s, {row['server_cpu_us_per_frame']:.0f} us server CPU/frame "
            f"(rounds {row['rounds']})"
        )
    ctx.log(f"  throughput with the hook / without: {ratio:.2f} (issue 17: at least 0.80)")
    return {"frames": frames, "publishers": PUBLISHERS, "results": results, "throughput_ratio": ratio}
