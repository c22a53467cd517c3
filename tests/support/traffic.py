"""Steady traffic against running servers, for fault-injection and soak tests.

``Subscriber`` keeps one WebSocket open on a channel, reconnecting with ``?since=<last position>``
(to any of the given servers) whenever it is cut off, and records every message once.
``Publisher`` pushes numbered payloads over the HTTP API at a steady rate and records which
pushes were acknowledged (201, with their offset) and which were refused (5xx: not published).
The test then checks that every acknowledged message reached every subscriber, in order, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from dataclasses import dataclass, field

import httpx
import websockets


@dataclass
class Subscriber:
    """One client that stays subscribed, resuming wherever it can."""

    servers: list
    channel: str
    client_id: str
    received: list[dict] = field(default_factory=list)
    gaps: list[dict] = field(default_factory=list)
    connections: int = 0
    refusals: list[int] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    latencies: list[float] = field(default_factory=list)
    generated_ids: bool = False
    _stop: bool = False

    def position(self) -> str | None:
        last = next((m for m in reversed(self.received) if m.get("offset") is not None), None)
        return f"{last['epoch']}-{last['offset']}" if last else None

    async def run(self) -> None:
        """Stay subscribed until ``stop()``: connect, read, and on any disconnect resume elsewhere."""
        for server in itertools.cycle(self.servers):
            if self._stop:
                return
            query = {} if self.generated_ids else {"clientId": self.client_id}
            position = self.position()
            if position:
                query["since"] = position
            url = server.channel_url(self.channel, **query)
            try:
                async with websockets.connect(url, open_timeout=3, max_size=None) as ws:
                    self.connections += 1
                    while not self._stop:
                        try:
                            text = await asyncio.wait_for(ws.recv(), 0.5)
                        except TimeoutError:
                            self.connected.set()
                            continue
                        self.connected.set()
                        message = json.loads(text)
                        if message.get("control") == "gap":
                            self.gaps.append(message)
                        elif message.get("control") in ("close", "error"):
                            self.refusals.append(message["code"])
                        else:
                            self._record(message)
            except (OSError, websockets.WebSocketException, TimeoutError):
                pass
            if not self._stop:
                await asyncio.sleep(0.2)

    def _record(self, message: dict) -> None:
        payload = message["payload"]
        if payload.startswith("{"):
            sent_at = json.loads(payload).get("t")
            if sent_at:
                self.latencies.append(time.time() - sent_at)
        self.received.append(message)

    def stop(self) -> None:
        self._stop = True

    def payloads(self) -> list[str]:
        return [message["payload"] for message in self.received]


@dataclass
class Publisher:
    """Pushes ``{"n": <number>, "t": <time>}`` payloads at ``rate`` per second, round-robin over servers, and
    sorts the answers as docs/protocol.md ("What a publish answer means") says: acknowledged (201, 202),
    refused (nothing published), outcome unknown (504)."""

    servers: list
    channel: str
    api_key: str
    rate: float = 50.0
    acknowledged: list[tuple[int, str, dict]] = field(default_factory=list)
    refused: list[tuple[int, int]] = field(default_factory=list)
    # Answered 504 publish_outcome_unknown: sent to a Redis that did not answer; published or not.
    unknown: list[int] = field(default_factory=list)
    _stop: bool = False

    async def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        async with httpx.AsyncClient(headers=headers, timeout=5) as client:
            started = time.monotonic()
            for number in itertools.count():
                if self._stop:
                    return
                server = self.servers[number % len(self.servers)]
                payload = json.dumps({"n": number, "t": time.time()}, separators=(",", ":"))
                try:
                    response = await client.post(
                        f"{server.http}/api/v1/channels/{self.channel}/messages", json={"payload": payload}
                    )
                    if response.status_code in (201, 202):  # 202: published, its hand-over pending
                        self.acknowledged.append((number, payload, response.json()))
                    elif response.status_code == 504:
                        self.unknown.append(number)
                    else:
                        self.refused.append((number, response.status_code))
                except httpx.HTTPError:
                    self.refused.append((number, 0))
                delay = started + (number + 1) / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)

    def stop(self) -> None:
        self._stop = True


async def settle(subscribers: list[Subscriber], publisher: Publisher, within: float = 15) -> None:
    """Wait until every subscriber has every acknowledged payload (or ``within`` seconds passed)."""
    wanted = {payload for _, payload, _ in publisher.acknowledged}
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if all(wanted <= set(subscriber.payloads()) for subscriber in subscribers):
            return
        await asyncio.sleep(0.1)


async def stop_all(subscribers: list[Subscriber], tasks: list[asyncio.Task]) -> None:
    for subscriber in subscribers:
        subscriber.stop()
    for task in tasks:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(task, 5)


def delivery_report(subscribers: list[Subscriber], publisher: Publisher) -> dict:
    """Published versus delivered: what each subscriber missed, repeated or got out of order."""
    acknowledged = [payload for _, payload, _ in publisher.acknowledged]
    report = {"published": len(acknowledged), "refused": len(publisher.refused), "subscribers": len(subscribers)}
    missing, duplicated, disordered, delivered = {}, {}, {}, 0
    for subscriber in subscribers:
        got = subscriber.payloads()
        seen = set(got)
        delivered += len(seen & set(acknowledged))
        lost = [payload for payload in acknowledged if payload not in seen]
        if lost:
            missing[subscriber.client_id] = [json.loads(payload)["n"] for payload in lost]
        if len(got) != len(seen):
            duplicated[subscriber.client_id] = len(got) - len(seen)
        numbers = [json.loads(payload)["n"] for payload in got if payload.startswith("{")]
        if numbers != sorted(numbers):
            disordered[subscriber.client_id] = numbers
    report.update(delivered=delivered, missing=missing, duplicated=duplicated, disordered=disordered)
    return report
