"""Load processes of the many-channels scenario: multiplexed subscribers and a paced HTTP publisher.

A subscriber process holds a few WebSocket connections to ``/api/v1/connect``, each following up
to ``server.max_channels_per_connection`` channels, and counts every message per subscription
(connection, channel). A publisher process posts ``POST /api/v1/messages`` batches to random
channels at a steady rate and counts what the service accepted per channel, so the orchestrator
can check "expected vs received" for every one of the 2 x N subscriptions.

Both run one asyncio loop and obey commands sent over a ``multiprocessing`` pipe; every command
gets one reply, ``("ok", result)`` or ``("error", traceback)``. Payloads are
``"<seq>~<time.time()>"`` strings, so latency is the receive time minus the send time (one clock).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import multiprocessing
import random
import time
import traceback

import httpx
from websockets.asyncio.client import connect

from .clients import raise_fd_limit

logger = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT = 600.0


class Subscribers:
    """The connections of one subscriber process and what each subscription received."""

    def __init__(self):
        self.sockets: list = []
        self.counts: list[dict[str, int]] = []  # per connection: channel id -> messages received
        self.latencies = array.array("d")
        self.controls: dict[str, int] = {}
        self.control_samples: list[str] = []
        self.closed: list[str] = []
        self.readers: list[asyncio.Task] = []

    async def subscribe(self, connections: list[tuple[str, list[str]]], concurrency: int = 4) -> dict:
        """Open each ``(url, channels)`` connection and subscribe it to its channels (pipelined)."""
        started = time.monotonic()
        errors: list[str] = []
        gate = asyncio.Semaphore(concurrency)

        async def one(url: str, channels: list[str]) -> None:
            async with gate:
                try:
                    socket = await connect(url, compression=None, max_size=None, open_timeout=60, ping_interval=None)
                    json.loads(await socket.recv())  # {"control": "connected", ...}
                    for ref, channel in enumerate(channels):
                        await socket.send(json.dumps({"subscribe": channel, "ref": ref}))
                    index = len(self.sockets)
                    self.sockets.append(socket)
                    self.counts.append(dict.fromkeys(channels, 0))
                    pending = len(channels)
                    while pending:
                        frame = json.loads(await socket.recv())
                        if frame.get("control") == "subscribed":
                            pending -= 1
                        elif frame.get("control") == "error":
                            pending -= 1
                            self.counts[index].pop(frame.get("channel"), None)
                            errors.append(f"{frame.get('error')}: {frame.get('message')}"[:200])
                    self.readers.append(asyncio.create_task(self._read(index, socket)))
                except Exception as error:  # noqa: BLE001 - reported to the orchestrator
                    errors.append(f"{type(error).__name__}: {error}"[:200])

        await asyncio.gather(*(one(url, channels) for url, channels in connections))
        return {
            "connections": len(self.sockets),
            "subscriptions": sum(len(counts) for counts in self.counts),
            "seconds": time.monotonic() - started,
            "errors": len(errors),
            "error_examples": errors[:5],
        }

    async def _read(self, index: int, socket) -> None:
        counts = self.counts[index]
        latencies = self.latencies
        try:
            async for text in socket:
                now = time.time()
                frame = json.loads(text)
                channel = frame.get("channelId")
                payload = frame.get("payload")
                if channel is None or not isinstance(payload, str) or "~" not in payload:
                    kind = frame.get("control") or frame.get("type") or "other"
                    self.controls[kind] = self.controls.get(kind, 0) + 1
                    if len(self.control_samples) < 5:
                        self.control_samples.append(text[:200])
                    continue
                counts[channel] = counts.get(channel, 0) + 1
                latencies.append(now - float(payload.split("~", 2)[1]))
        except Exception as error:  # noqa: BLE001 - a dropped connection is a finding, not a crash
            self.closed.append(f"{type(error).__name__}: {error}"[:200])
        else:
            self.closed.append(f"closed {socket.close_code} {socket.close_reason}"[:200])

    def reset(self) -> None:
        """Forget what arrived so far (subscribe replies, earlier phases)."""
        for counts in self.counts:
            for channel in counts:
                counts[channel] = 0
        del self.latencies[:]  # in place: the reader tasks hold this array
        self.controls.clear()
        self.control_samples.clear()

    async def collect(self, published: dict[str, int], grace: float) -> dict:
        """Wait until every subscription reached its channel's published count, or ``grace`` s pass
        with nothing new arriving (a backlog still draining is waited for)."""
        last, idle_since = -1, time.monotonic()
        for _ in range(int(SUBSCRIBE_TIMEOUT / 0.2)):
            if self._missing(published) == 0:
                break
            received = len(self.latencies)
            if received != last:
                last, idle_since = received, time.monotonic()
            elif time.monotonic() - idle_since > grace:
                break
            await asyncio.sleep(0.2)
        expected = sum(published.get(channel, 0) for counts in self.counts for channel in counts)
        received = sum(sum(counts.values()) for counts in self.counts)
        short = [
            (channel, got, published.get(channel, 0))
            for counts in self.counts
            for channel, got in counts.items()
            if got != published.get(channel, 0)
        ]
        return {
            "subscriptions": sum(len(counts) for counts in self.counts),
            "expected": expected,
            "received": received,
            "lost": self._missing(published),
            "extra": sum(max(got - want, 0) for _, got, want in short),
            "subscriptions_wrong": len(short),
            "wrong_examples": short[:5],
            "controls": dict(self.controls),
            "control_samples": list(self.control_samples),
            "closed": len(self.closed),
            "closed_examples": self.closed[:5],
            "latencies": self.latencies.tobytes(),
        }

    def _missing(self, published: dict[str, int]) -> int:
        return sum(max(published.get(channel, 0) - got, 0) for counts in self.counts for channel, got in counts.items())

    async def close(self) -> dict:
        """Close every connection."""
        for task in self.readers:
            task.cancel()
        for socket in self.sockets:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(socket.close(), 2)
        return {"closed": len(self.sockets)}


async def publish(
    *,
    targets: list[tuple[str, dict]],
    channels: list[str],
    rate: float,
    seconds: float,
    batch: int,
    seed: int = 19,
    sweep: bool = False,
) -> dict:
    """POST batches of ``batch`` messages to random ``channels`` at ``rate`` messages/s for ``seconds``.

    Batches alternate between the ``(base_url, headers)`` targets; a batch leaves every
    ``batch / rate`` s from a schedule (not after the previous answer), over a few connections,
    so a slow answer delays nothing else. Returns what the service accepted per channel.
    With ``sweep`` the channels are taken in order instead (``seconds`` = len(channels) / rate
    sends each one message).
    """
    rng = random.Random(seed)
    if targets == [("django", {})]:
        if sweep:
            raise ValueError("a sweep publishes over HTTP")
        return await publish_django(channels=channels, rate=rate, seconds=seconds, batch=batch, rng=rng)
    published: dict[str, int] = {}
    failures: dict[str, int] = {}
    statuses: dict[int, int] = {}
    lag: list[float] = []
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    clients = [
        httpx.AsyncClient(base_url=url, headers=headers, timeout=120.0, limits=limits) for url, headers in targets
    ]
    sent = 0
    seq = 0
    tasks: set[asyncio.Task] = set()

    async def post(client: httpx.AsyncClient, chosen: list[str]) -> None:
        nonlocal seq
        items = []
        stamp = time.time()
        for channel in chosen:
            seq += 1
            items.append({"channel": channel, "payload": f"{seq}~{stamp:.6f}"})
        try:
            answer = await client.post("/api/v1/messages", json={"messages": items})
            results = answer.json()["results"]
        except Exception as error:  # noqa: BLE001 - counted as failures, the run goes on
            failures[type(error).__name__] = failures.get(type(error).__name__, 0) + len(chosen)
            return
        for result in results:
            statuses[result.get("status")] = statuses.get(result.get("status"), 0) + 1
            if result.get("status") in (201, 202):
                published[result["channel"]] = published.get(result["channel"], 0) + 1
            else:
                key = str(result.get("error") or result.get("status"))
                failures[key] = failures.get(key, 0) + 1

    interval = batch / rate
    started = time.monotonic()
    t_first = time.time()
    ticks = int(seconds / interval)
    try:
        for tick in range(ticks):
            due = started + tick * interval
            delay = due - time.monotonic()
            if delay < 0:
                lag.append(-delay)
            # Always yield: a late loop that did not would queue every batch at once.
            await asyncio.sleep(max(delay, 0))
            if sweep:
                chosen = [channels[(tick * batch + i) % len(channels)] for i in range(batch)]
            else:
                chosen = [channels[rng.randrange(len(channels))] for _ in range(batch)]
            task = asyncio.create_task(post(clients[tick % len(clients)], chosen))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += batch
        await _finish(tasks, failures)
    finally:
        for client in clients:
            await client.aclose()
    wall = time.monotonic() - started
    return {
        "sent": sent,
        "accepted": sum(published.values()),
        "failures": failures,
        "statuses": statuses,
        "seconds": wall,
        "send_seconds": ticks * interval,
        "rate_achieved": sum(published.values()) / wall,
        "schedule_lag_max_s": max(lag, default=0.0),
        "t_first": t_first,
        "published": published,
    }


DRAIN_SECONDS = 60.0  # after the schedule, publishes still unanswered this long are given up


async def _finish(tasks: set[asyncio.Task], failures: dict[str, int]) -> None:
    """Wait for the publishes in flight, at most ``DRAIN_SECONDS``; cancel and count the rest."""
    if not tasks:
        return
    _, pending = await asyncio.wait(set(tasks), timeout=DRAIN_SECONDS)
    for task in pending:
        task.cancel()
    if pending:
        failures["not answered within the drain time (batches or messages)"] = len(pending)
        await asyncio.gather(*pending, return_exceptions=True)


def django_setup(env: dict[str, str], source: str) -> dict:
    """Become a Django process of the service (its settings, config and database), like a backend."""
    import os
    import sys

    os.environ.update(env)
    os.chdir(source)
    sys.path.insert(0, source)
    import django

    django.setup()
    return {"django": django.get_version()}


async def publish_django(*, channels: list[str], rate: float, seconds: float, batch: int, rng) -> dict:
    """Like ``publish``, with ``channels_app.apublish`` from this Django process (one task a message)."""
    import channels_app

    published: dict[str, int] = {}
    failures: dict[str, int] = {}
    lag: list[float] = []
    tasks: set[asyncio.Task] = set()
    seq = 0
    gate = asyncio.Semaphore(64)  # publishes in flight, as a backend's worker pool would bound them

    async def one(channel: str, payload: str) -> None:
        try:
            async with gate:
                await channels_app.apublish(channel, payload)
        except Exception as error:  # noqa: BLE001 - counted as failures, the run goes on
            key = f"{type(error).__name__}: {error}"[:120]
            failures[key] = failures.get(key, 0) + 1
            return
        published[channel] = published.get(channel, 0) + 1

    interval = batch / rate
    ticks = int(seconds / interval)
    started = time.monotonic()
    t_first = time.time()
    for tick in range(ticks):
        delay = started + tick * interval - time.monotonic()
        if delay < 0:
            lag.append(-delay)
        await asyncio.sleep(max(delay, 0))
        stamp = time.time()
        for _ in range(batch):
            seq += 1
            task = asyncio.create_task(one(channels[rng.randrange(len(channels))], f"{seq}~{stamp:.6f}"))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    await _finish(tasks, failures)
    return {
        "sent": seq,
        "accepted": sum(published.values()),
        "failures": failures,
        "statuses": {},
        "seconds": time.monotonic() - started,
        "send_seconds": ticks * interval,
        "rate_achieved": sum(published.values()) / (time.monotonic() - started),
        "schedule_lag_max_s": max(lag, default=0.0),
        "t_first": t_first,
        "published": published,
    }


async def _serve(conn) -> None:
    loop = asyncio.get_running_loop()
    subscribers = Subscribers()
    while True:
        command, args = await loop.run_in_executor(None, conn.recv)
        try:
            if command == "subscribe":
                result = await subscribers.subscribe(args["connections"], args.get("concurrency", 4))
            elif command == "reset":
                subscribers.reset()
                result = None
            elif command == "collect":
                result = await subscribers.collect(args["published"], args["grace"])
            elif command == "django_setup":
                result = django_setup(**args)
            elif command == "publish":
                result = await publish(**args)
            elif command == "close":
                result = await subscribers.close()
                conn.send(("ok", result))
                return
            else:
                raise ValueError(f"unknown command {command!r}")
            conn.send(("ok", result))
        except Exception:  # noqa: BLE001 - the orchestrator shows the traceback
            conn.send(("error", traceback.format_exc()))


def _worker(conn) -> None:
    raise_fd_limit()
    asyncio.run(_serve(conn))


class LoadProcess:
    """One load process (subscribers or publisher), driven over a pipe."""

    def __init__(self):
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child,), daemon=True)
        self.process.start()

    @property
    def pid(self) -> int:
        """The process id (its CPU is the load generator's)."""
        return self.process.pid

    def send(self, command: str, args=None) -> None:
        """Send a command without waiting for its answer (see ``reply``)."""
        self.conn.send((command, args))

    def reply(self, timeout: float = SUBSCRIBE_TIMEOUT):
        """The answer to the last command; raise with the worker's traceback on an error."""
        if not self.conn.poll(timeout):
            raise TimeoutError(f"load process {self.pid} did not answer within {timeout:.0f} s")
        status, result = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"load process {self.pid} failed:\n{result}")
        return result

    def call(self, command: str, args=None, timeout: float = SUBSCRIBE_TIMEOUT):
        """Send a command and wait for its answer."""
        self.send(command, args)
        return self.reply(timeout)

    def stop(self) -> None:
        """Close its connections and end it (kill it if it does not end)."""
        with contextlib.suppress(Exception):
            if self.process.is_alive():
                self.call("close", timeout=15)
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
