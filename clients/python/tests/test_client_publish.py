"""Publishing, batches, tokens, history and typed errors against a real daphne (MEMORY driver)."""

from __future__ import annotations

import threading
import time

import pytest
from client_helpers import API_KEY, TOKEN_SECRET, payloads, take, wait_open
from realtime_client import (
    AsyncPublisher,
    BadRequest,
    ConnectionFailed,
    Forbidden,
    IdempotencyKeyReused,
    NotFound,
    Publisher,
    RetryPolicy,
    Unauthorized,
    mint_token,
    subscribe,
)

from tests.support.liveserver import free_port


@pytest.fixture
def publisher(memory_server):
    with Publisher(memory_server.http, API_KEY) as publisher:
        yield publisher


def test_a_publish_returns_its_receipt_and_history_holds_the_message_once(publisher):
    receipt = publisher.publish("chat", {"order": 42})
    history = publisher.history("chat-1")
    held = [message for message in history.messages if message.id == receipt.id]
    assert len(held) == 1
    assert held[0].json() == {"order": 42}
    assert (held[0].position, held[0].channel_id, held[0].client_id) == (receipt.position, "chat-1", "server-message")
    assert receipt.position == f"{receipt.epoch}-{receipt.offset}"
    assert not receipt.replayed and not receipt.fanout_pending


async def test_the_async_publisher_publishes_and_reads_history_after_a_position(memory_server):
    async with AsyncPublisher(memory_server.http, API_KEY) as publisher:
        first = await publisher.publish("feed", "async one")
        second = await publisher.publish("feed-1", "async two")
        page = await publisher.history("feed", since=first.position)
    assert second.offset == first.offset + 1
    assert [message.payload for message in page.messages] == ["async two"]
    assert page.gap is None and not page.more


def test_a_repeated_idempotency_key_returns_the_original_receipt_and_publishes_once(publisher):
    first = publisher.publish("chat", "keyed once", idempotency_key="order-7")
    again = publisher.publish("chat", "keyed once", idempotency_key="order-7")
    assert (again.id, again.position, again.replayed) == (first.id, first.position, True)
    assert payloads(publisher.history("chat").messages).count("keyed once") == 1
    with pytest.raises(IdempotencyKeyReused) as refused:
        publisher.publish("chat", "another payload", idempotency_key="order-7")
    assert (refused.value.code, refused.value.status, refused.value.attempts) == ("idempotency_key_reused", 422, 1)


def test_refusals_are_typed_errors_with_the_servers_codes_and_are_not_retried(memory_server, publisher):
    with Publisher(memory_server.http, "not-the-key") as stranger, pytest.raises(Unauthorized) as unauthorized:
        stranger.publish("chat", "never")
    assert (unauthorized.value.code, unauthorized.value.status, unauthorized.value.attempts) == (
        "api_key_invalid",
        401,
        1,
    )
    with pytest.raises(NotFound) as not_found:
        publisher.publish("no-such-channel", "never")
    assert (not_found.value.code, not_found.value.status, not_found.value.attempts) == ("channel_not_found", 404, 1)
    assert "no-such-channel" in not_found.value.message
    with pytest.raises(BadRequest) as bad:
        publisher.history("chat", limit=0)
    assert (bad.value.code, bad.value.details.get("field")) == ("bad_request", "limit")


def test_a_batch_reports_each_item_and_a_retry_with_its_key_answers_the_same_receipts(publisher):
    messages = [("chat", "batch a"), ("feed-1", {"b": 1}), ("no-such-channel", "c")]
    first = publisher.publish_batch(messages, idempotency_key="batch-1")
    assert first.published == 2
    [failed] = first.failed
    assert isinstance(failed.error, NotFound) and failed.status == 404 and failed.channel == "no-such-channel"
    again = publisher.publish_batch(messages, idempotency_key="batch-1")
    assert [item.receipt.id for item in again.items[:2]] == [item.receipt.id for item in first.items[:2]]
    assert all(item.receipt.replayed for item in again.items[:2])
    assert not any(item.receipt.replayed for item in first.items[:2])
    assert payloads(publisher.history("chat").messages).count("batch a") == 1
    assert payloads(publisher.history("feed").messages).count('{"b":1}') == 1


async def test_tokens_minted_locally_or_by_the_server_open_private_channels(memory_server, publisher):
    local = mint_token(TOKEN_SECRET, channel_id="vault-1", client_id="alice")
    served = publisher.create_token("alerts", client_id="bob")
    assert (served.channel_id, served.client_id, served.ttl, served.publish) == ("alerts-1", "bob", 3600, False)
    async with (
        subscribe(memory_server.http, "vault", client_id="alice", token=local) as vault,
        subscribe(memory_server.http, "alerts", client_id="bob", token=served.token) as alerts,
    ):
        await wait_open(vault)
        await wait_open(alerts)
        publisher.publish("vault", "secret ws")
        publisher.publish("alerts", "secret sse")
        assert payloads(await take(vault, 1)) == ["secret ws"]
        assert payloads(await take(alerts, 1)) == ["secret sse"]
        assert (vault.transport, alerts.transport) == ("ws", "sse")


async def test_private_channels_refuse_a_missing_or_foreign_token_with_typed_errors(memory_server):
    other_client = mint_token(TOKEN_SECRET, channel_id="vault-1", client_id="alice")
    forged = mint_token("not-the-servers-secret-0123456789", channel_id="alerts-1", client_id="eve")
    cases = [
        ("vault", {}, Unauthorized, "token_required", None, 4401),
        ("vault", {"client_id": "mallory", "token": other_client}, Forbidden, "token_forbidden", None, 4403),
        ("alerts", {"client_id": "eve", "token": forged}, Unauthorized, "token_invalid", 401, 4401),
    ]
    for channel, options, error_type, code, status, close_code in cases:
        async with subscribe(memory_server.http, channel, **options) as subscription:
            with pytest.raises(error_type) as refused:
                await take(subscription, 1)
        assert (refused.value.code, refused.value.status, refused.value.close_code) == (code, status, close_code)
        assert subscription.state == "closed"


def test_a_publish_retries_until_a_restarted_server_answers(start_server):
    server = start_server()
    server.stop()
    with Publisher(server.http, API_KEY, retry=RetryPolicy(max_attempts=1)) as once:
        started = time.monotonic()
        with pytest.raises(ConnectionFailed) as failed:
            once.publish("chat", "nobody listens")
    assert (failed.value.code, failed.value.attempts) == ("connection_failed", 1)
    assert time.monotonic() - started < 1
    restarting = threading.Timer(1.0, server.run)
    restarting.start()
    try:
        with Publisher(server.http, API_KEY, retry=RetryPolicy(max_attempts=20, max_delay=0.5)) as publisher:
            receipt = publisher.publish("chat", "after the restart")
            assert payloads(publisher.history("chat").messages) == ["after the restart"]
    finally:
        restarting.join()
    assert receipt.offset == 1


def test_retries_stop_at_the_deadline_with_the_last_failure():
    # Waits of at most 0.2 s: it gives up when the next wait would end past the deadline.
    policy = RetryPolicy(max_attempts=100, base_delay=0.1, max_delay=0.2, deadline=1.5)
    with Publisher(f"http://127.0.0.1:{free_port()}", API_KEY, retry=policy) as dead:
        started = time.monotonic()
        with pytest.raises(ConnectionFailed) as failed:
            dead.publish("chat", "nobody listens")
    assert 1.2 < time.monotonic() - started < 1.6
    assert 5 < failed.value.attempts < 100 and failed.value.idempotency_key
