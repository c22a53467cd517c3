"""Answers about publishes are true while Redis stalls, and a retry with the same key is exactly-once.

Redis is paused (SIGSTOP) for six seconds under keyed pushes, as in the report that found 503s
published after Redis resumed and keys locked for a day. Every answer is checked against what
history and the subscribers got afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import time

import httpx
import pytest
import websockets

from tests.support.auth import API_KEY, AUTH
from tests.support.traffic import Subscriber, stop_all

PAUSE_SECONDS = 6
CONFIG = """
server:
  publish_rate: 100000
  publish_burst: 100000
  history_size: 5000
pubsub:
  driver: "REDIS"
  redis:
    url: "{url}"
    prefix: "outcomes"
channels:
  keyed-0: {{id: "keyed-0", type: "WS"}}
  keyed-1: {{id: "keyed-1", type: "WS"}}
  keyed-2: {{id: "keyed-2", type: "WS"}}
  plain-0: {{id: "plain-0", type: "WS"}}
  plain-1: {{id: "plain-1", type: "WS"}}
  plain-2: {{id: "plain-2", type: "WS"}}
  quiet: {{id: "quiet-1", type: "WS", max_of_channel_connections: 20}}
"""
# One pusher per channel: a channel's publishes leave one run at a time, so with one channel a run
# caught by the stall in the layer's hand-over would hold every later push back, and no append
# would be tried during the stall.
KEYED_CHANNELS = ["keyed-0", "keyed-1", "keyed-2"]
PLAIN_CHANNELS = ["plain-0", "plain-1", "plain-2"]


@pytest.fixture
def server(start_server, redis_server, asgi_server):
    env = {"REALTIME_API_KEYS": API_KEY, "DJANGO_SECRET_KEY": "outcomes-secret-" + "s" * 40}
    return start_server(CONFIG.format(url=redis_server.url), env=env, server=asgi_server)


class Pusher:
    """Pushes numbered payloads to one channel. With ``keyed``, each carries its own Idempotency-Key
    and is retried with it after any 5xx, as the answers say; without, nothing is retried."""

    def __init__(self, server, channel: str, *, keyed: bool):
        self.server, self.channel, self.keyed = server, channel, keyed
        self.answers: dict[str, list[tuple[int, str | None, float]]] = {}  # payload -> (status, error, seconds)
        self.stopped = False

    async def run(self) -> None:
        async with httpx.AsyncClient(headers=AUTH, timeout=15) as client:
            for number in itertools.count():
                if self.stopped:
                    return
                payload = f"{self.channel}-{number}"
                headers = {"Idempotency-Key": payload} if self.keyed else {}
                while True:
                    started = time.monotonic()
                    response = await client.post(
                        f"{self.server.http}/api/v1/channels/{self.channel}/messages",
                        json={"payload": payload},
                        headers=headers,
                    )
                    error = None if response.status_code in (201, 202) else response.json()["error"]
                    self.answers.setdefault(payload, []).append(
                        (response.status_code, error, time.monotonic() - started)
                    )
                    if not (self.keyed and response.status_code >= 500):
                        break
                    await asyncio.sleep(0.2)
                await asyncio.sleep(0.02)

    def final(self, payload: str) -> tuple[int, str | None]:
        status, error, _ = self.answers[payload][-1]
        return status, error

    def tries(self) -> list[tuple[int, str | None, float]]:
        return [answer for attempts in self.answers.values() for answer in attempts]


def history_payloads(server, channel: str) -> list[str]:
    response = httpx.get(f"{server.http}/api/v1/channels/{channel}/messages", headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return [message["payload"] for message in response.json()["messages"]]


def metric(server, name: str) -> float:
    for line in httpx.get(f"{server.http}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def test_a_redis_stall_answers_each_push_truthfully_and_keyed_retries_publish_exactly_once(server, redis_server):
    async def scenario():
        subscribers = [
            Subscriber(servers=[server], channel=channel, client_id="sub")
            for channel in KEYED_CHANNELS + PLAIN_CHANNELS
        ]
        tasks = [asyncio.create_task(subscriber.run()) for subscriber in subscribers]
        await asyncio.wait_for(asyncio.gather(*(s.connected.wait() for s in subscribers)), 10)
        pushers = [Pusher(server, channel, keyed=True) for channel in KEYED_CHANNELS]
        pushers += [Pusher(server, channel, keyed=False) for channel in PLAIN_CHANNELS]
        pushing = [asyncio.create_task(pusher.run()) for pusher in pushers]
        await asyncio.sleep(1)
        os.kill(redis_server.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(PAUSE_SECONDS)
        finally:
            os.kill(redis_server.pid, signal.SIGCONT)
        await asyncio.sleep(2)
        for pusher in pushers:
            pusher.stopped = True
        await asyncio.wait_for(asyncio.gather(*pushing), 30)
        # Every published message reaches the subscribers (late hand-overs included).
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if all(set(history_payloads(server, s.channel)) <= set(s.payloads()) for s in subscribers):
                break
            await asyncio.sleep(0.2)
        await stop_all(subscribers, tasks)
        return {s.channel: s.payloads() for s in subscribers}, pushers

    received, pushers = asyncio.run(scenario())
    for pusher in pushers:
        history = history_payloads(server, pusher.channel)
        answers = {payload: pusher.final(payload) for payload in pusher.answers}
        acknowledged = {payload for payload, (status, _) in answers.items() if status in (201, 202)}
        refused = {payload for payload, (_, error) in answers.items() if error == "redis_unavailable"}
        unknown = {payload for payload, (_, error) in answers.items() if error == "publish_outcome_unknown"}
        print(
            f"\n{pusher.channel}: {len(answers)} payloads, {len(pusher.tries())} requests; final answers: "
            f"{len(acknowledged)} acknowledged, {len(unknown)} outcome unknown (504), {len(refused)} not published "
            f"(503); {sum(1 for status, _, _ in pusher.tries() if status >= 500)} 5xx on the way; "
            f"history holds {len(history)}"
        )
        assert len(history) == len(set(history)), f"{pusher.channel}: a payload was published twice"
        assert len(received[pusher.channel]) == len(set(received[pusher.channel])), "a payload was received twice"
        assert set(received[pusher.channel]) == set(history), "subscribers got other than what was published"
        assert not [t for t in pusher.tries() if t[0] not in (201, 202, 503, 504)], pusher.tries()
        # What the answers said is what happened: acknowledged is published, "not published" is not.
        assert acknowledged <= set(history)
        assert not refused & set(history), (
            f"answered 503 nothing was published, then published: {refused & set(history)}"
        )
        assert set(history) <= acknowledged | unknown
        if pusher.keyed:
            # Retrying with the key ends in the original receipt or one publish: never locked, never twice.
            assert acknowledged == set(answers), {p: a for p, a in answers.items() if p not in acknowledged}
            assert max(seconds for seconds in (t[2] for t in list(pusher.answers.values())[-1])) < 1.5
    stalled = [
        t for pusher in pushers for t in pusher.tries() if t[1] in ("publish_outcome_unknown", "redis_unavailable")
    ]
    assert stalled, "no history append was caught by the stall: the scenario did not happen"
    unknown_answers = [t for pusher in pushers for t in pusher.tries() if t[1] == "publish_outcome_unknown"]
    assert (metric(server, "realtime_publish_outcomes_unknown_total") >= 1) == bool(unknown_answers)


def test_a_message_whose_answer_was_lost_still_reaches_subscribers_of_a_quiet_channel(server, redis_server):
    """Nothing follows it on the channel, so no hub sees a hole: the publishing instance hands it over itself.
    A push queued behind it is answered truthfully too: 503 if it was never sent, 504 if it was."""

    async def scenario():
        async with (
            websockets.connect(server.channel_url("quiet-1", clientId="listener")) as listener,
            websockets.connect(server.channel_url("quiet-1", clientId="talker")) as talker,
            httpx.AsyncClient(headers=AUTH, timeout=15) as client,
        ):
            warm = await client.post(f"{server.http}/api/v1/channels/quiet-1/messages", json={"payload": "warm-up"})
            assert warm.status_code == 201, warm.text
            assert json.loads(await asyncio.wait_for(listener.recv(), 5))["payload"] == "warm-up"
            await asyncio.wait_for(talker.recv(), 5)
            os.kill(redis_server.pid, signal.SIGSTOP)
            try:
                await talker.send("said")
                await asyncio.sleep(0.1)
                push = asyncio.create_task(
                    client.post(f"{server.http}/api/v1/channels/quiet-1/messages", json={"payload": "pushed"})
                )
                frame = json.loads(await asyncio.wait_for(talker.recv(), 10))
                response = await push
            finally:
                os.kill(redis_server.pid, signal.SIGCONT)
            received = []
            with contextlib.suppress(TimeoutError):
                while True:
                    received.append(json.loads(await asyncio.wait_for(listener.recv(), 5))["payload"])
            return response, frame, received

    response, frame, received = asyncio.run(scenario())
    assert (frame["control"], frame["code"], frame["error"]) == ("error", 4504, "publish_outcome_unknown")
    error = response.json()["error"]
    assert (response.status_code, error) in ((504, "publish_outcome_unknown"), (503, "redis_unavailable"))
    published = ["said", "pushed"] if response.status_code == 504 else ["said"]
    assert received == published, (response.status_code, received)
    assert history_payloads(server, "quiet-1") == ["warm-up", *published]
    assert metric(server, "realtime_publish_outcomes_recorded_total") == len(published)
