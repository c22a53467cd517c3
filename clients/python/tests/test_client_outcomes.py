"""Retries that are safe: 503 (nothing published) and 504 (outcome unknown) against daphne on a real Redis.

Redis is stopped (503 ``redis_unavailable``) or paused with SIGSTOP (the server answers 504
``publish_outcome_unknown`` after 3 s), then brought back while the client retries; history must
hold each message exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest
from client_helpers import API_KEY, payloads, redis_config
from realtime_client import AsyncPublisher, NotPublished, OutcomeUnknown, Publisher, RetryPolicy


@pytest.fixture
def server(start_server, redis_server):
    return start_server(redis_config(redis_server.url))


def unknown_outcomes(server) -> float:
    """The server's count of publishes answered 504."""
    for line in httpx.get(f"{server.http}/metrics", timeout=5).text.splitlines():
        if line.startswith("realtime_publish_outcomes_unknown_total "):
            return float(line.split()[1])
    raise AssertionError("realtime_publish_outcomes_unknown_total is not exported")


async def test_a_504_is_retried_with_the_same_key_and_publishes_exactly_once(server, redis_server):
    async with AsyncPublisher(server.http, API_KEY) as publisher:
        await publisher.publish("chat", "warm-up")
        os.kill(redis_server.pid, signal.SIGSTOP)
        try:
            publishing = asyncio.create_task(publisher.publish("chat", "through the stall"))
            await asyncio.sleep(4.5)  # the first attempt is answered 504 after 3 s; a retry is waiting on Redis
            assert not publishing.done()
        finally:
            os.kill(redis_server.pid, signal.SIGCONT)
        receipt = await asyncio.wait_for(publishing, 20)
        history = await publisher.history("chat")
    assert unknown_outcomes(server) >= 1, "no attempt was answered 504: the scenario did not happen"
    assert payloads(history.messages) == ["warm-up", "through the stall"]
    assert receipt.id == history.messages[-1].id


@pytest.mark.parametrize(("timeout", "status"), [(10.0, 504), (1.0, None)], ids=["server-504", "client-timeout"])
def test_an_unknown_outcome_carries_its_key_and_a_later_retry_with_it_publishes_once(
    server, redis_server, timeout, status
):
    """Without retries, a 504 or a request that timed out on its way is OutcomeUnknown, whose key publishes once."""
    with Publisher(server.http, API_KEY, timeout=timeout, retry=RetryPolicy(max_attempts=1)) as once:
        once.publish("chat", "warm-up")
        os.kill(redis_server.pid, signal.SIGSTOP)
        try:
            with pytest.raises(OutcomeUnknown) as unknown:
                once.publish("chat", "maybe published")
        finally:
            os.kill(redis_server.pid, signal.SIGCONT)
        error = unknown.value
        assert (error.code, error.status, error.attempts) == ("publish_outcome_unknown", status, 1)
        receipt = once.publish("chat", "maybe published", idempotency_key=error.idempotency_key)
        history = once.history("chat")
    assert payloads(history.messages) == ["warm-up", "maybe published"]
    assert receipt.id == history.messages[-1].id


async def test_a_503_is_retried_until_redis_is_back_and_single_publishes_and_batches_land_once(server, redis_server):
    async with AsyncPublisher(server.http, API_KEY, retry=RetryPolicy(max_attempts=1)) as once:
        redis_server.stop()
        started = time.monotonic()
        with pytest.raises(NotPublished) as refused:
            await once.publish("chat", "not published")
        assert (refused.value.code, refused.value.status) == ("redis_unavailable", 503)
        assert time.monotonic() - started < 5
        batch = await once.publish_batch([("chat", "batch not published")])
        assert isinstance(batch.failed[0].error, NotPublished) and batch.published == 0

    async with AsyncPublisher(server.http, API_KEY, retry=RetryPolicy(max_attempts=20, max_delay=1.0)) as publisher:
        publishing = asyncio.gather(
            publisher.publish("chat", "after redis came back"),
            publisher.publish_batch([("chat", "batch one"), ("feed", "batch two")]),
        )
        await asyncio.sleep(1.5)
        await asyncio.to_thread(redis_server.run)
        receipt, batch = await asyncio.wait_for(publishing, 20)
        chat, feed = await publisher.history("chat"), await publisher.history("feed")
    assert batch.published == 2 and not batch.failed
    # Redis kept nothing on disk: what it holds now is what the retries published, each once.
    assert sorted(payloads(chat.messages)) == ["after redis came back", "batch one"]
    assert payloads(feed.messages) == ["batch two"]
    assert receipt.id in {message.id for message in chat.messages}
