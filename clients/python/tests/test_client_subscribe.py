"""The subscriber against real servers: resume across restarts and kills, gaps, refusals, frames it sends."""

from __future__ import annotations

import asyncio
import signal

import pytest
from client_helpers import API_KEY, TOKEN_SECRET, payloads, redis_config, take, wait_open
from realtime_client import (
    AsyncPublisher,
    BadRequest,
    Conflict,
    FrameError,
    Gap,
    Message,
    NotFound,
    RateLimited,
    mint_token,
    subscribe,
)


async def test_ws_and_sse_subscribers_resume_after_a_restart_and_a_kill_without_loss_or_repeats(
    start_server, redis_server, asgi_server
):
    """Two instances share Redis: the subscribers' instance is restarted (SIGTERM: 1001 / stream-error), then
    killed (SIGKILL: no close at all, and its connection slots linger until the presence lease ends: 4409),
    while messages are published through the other one."""
    config = redis_config(redis_server.url)
    env = {"REALTIME_PRESENCE_LEASE_SECONDS": "2"}
    near = start_server(config, env=env, server=asgi_server)
    far = start_server(config, env=env, server=asgi_server, database_path=near.database_path, sync=False)
    minted = []

    def token():
        minted.append(mint_token(TOKEN_SECRET, channel_id="vault-1", client_id="ws-reader", ttl=60))
        return minted[-1]

    options = {"min_delay": 0.2, "max_delay": 1.0}
    async with (
        AsyncPublisher(far.http, API_KEY) as publisher,
        subscribe(near.http, "vault", client_id="ws-reader", token=token, **options) as ws_reader,
        subscribe(near.http, "feed", client_id="sse-reader", **options) as sse_reader,
    ):
        await wait_open(ws_reader)
        await wait_open(sse_reader)

        async def publish(*numbers):
            for number in numbers:
                await publisher.publish("vault", f"ws {number}")
                await publisher.publish("feed", f"sse {number}")

        await publish(1, 2, 3)
        ws_events, sse_events = await take(ws_reader, 3), await take(sse_reader, 3)
        await asyncio.to_thread(near.stop, signal.SIGTERM)
        await publish(4, 5, 6)
        await asyncio.to_thread(near.run)
        await publish(7, 8)
        ws_events += await take(ws_reader, 5)
        sse_events += await take(sse_reader, 5)
        await asyncio.to_thread(near.stop, signal.SIGKILL)
        await publish(9, 10)
        await asyncio.to_thread(near.run)
        await publish(11, 12)
        ws_events += await take(ws_reader, 4)
        sse_events += await take(sse_reader, 4)
    assert payloads(ws_events) == [f"ws {number}" for number in range(1, 13)]
    assert payloads(sse_events) == [f"sse {number}" for number in range(1, 13)]
    assert not [event for event in ws_events + sse_events if not isinstance(event, Message)]
    assert ws_reader.reconnects >= 2 and sse_reader.reconnects >= 2
    assert len(minted) == ws_reader.reconnects + 1, "the token is asked for again on every connection"
    assert ws_reader.position == ws_events[-1].position and sse_reader.position == sse_events[-1].position
    assert (ws_reader.transport, sse_reader.transport, ws_reader.state) == ("ws", "sse", "closed")


async def test_a_gap_is_surfaced_when_history_cannot_cover_the_resume(start_server):
    """A MEMORY-driver server loses its history when it restarts: the resume is told so, then goes on live."""
    server = start_server()
    options = {"min_delay": 0.2, "max_delay": 1.0}
    async with (
        AsyncPublisher(server.http, API_KEY) as publisher,
        subscribe(server.http, "chat", client_id="ws-reader", **options) as ws_reader,
        subscribe(server.http, "feed", client_id="sse-reader", **options) as sse_reader,
    ):
        await wait_open(ws_reader)
        await wait_open(sse_reader)
        await publisher.publish("chat", "before")
        await publisher.publish("feed", "before")
        assert payloads(await take(ws_reader, 1)) == payloads(await take(sse_reader, 1)) == ["before"]
        before = ws_reader.position
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.run)
        await wait_open(ws_reader)
        await wait_open(sse_reader)
        await publisher.publish("chat", "after")
        await publisher.publish("feed", "after")
        ws_events, sse_events = await take(ws_reader, 1), await take(sse_reader, 1)
    for events in (ws_events, sse_events):
        gap, message = events
        assert isinstance(gap, Gap) and gap.reason == "epoch_changed" and gap.message
        assert message.payload == "after"
    assert ws_events[0].requested == before


async def test_history_true_starts_with_what_the_channel_holds_and_no_gap(memory_server):
    """The channel keeps 2 messages: asking for the whole history is no loss when older ones are gone, while
    resuming from a position history no longer covers is."""
    async with AsyncPublisher(memory_server.http, API_KEY) as publisher:
        receipts = [await publisher.publish("short", f"held {number}") for number in range(4)]
    async with subscribe(memory_server.http, "short", history=True) as reader:
        events = await take(reader, 2)
    assert events == [event for event in events if isinstance(event, Message)]
    assert payloads(events) == ["held 2", "held 3"]
    async with subscribe(memory_server.http, "short", since=receipts[0].position) as reader:
        gap, *messages = await take(reader, 2)
    assert isinstance(gap, Gap) and (gap.reason, gap.requested) == ("expired", receipts[0].position)
    assert payloads(messages) == ["held 2", "held 3"]


async def test_refusals_a_retry_cannot_fix_end_the_iteration_with_typed_errors(memory_server):
    cases = [
        ({"transport": "ws"}, "no-such-channel", NotFound, "channel_not_found", None, 4404),
        ({"transport": "sse"}, "no-such-channel", NotFound, "channel_not_found", 404, 4404),
        ({}, "no-such-channel", NotFound, "channel_not_found", 404, 4404),
        ({"transport": "sse"}, "chat", BadRequest, "wrong_transport", 400, 4400),
        ({"client_id": "bad id!"}, "chat", BadRequest, "bad_request", None, 4400),
    ]
    for options, channel, error_type, code, status, close_code in cases:
        async with subscribe(memory_server.http, channel, **options) as subscription:
            with pytest.raises(error_type) as refused:
                await take(subscription, 1)
            with pytest.raises(error_type):
                await take(subscription, 1)  # it stays stopped, and says why
        assert (refused.value.code, refused.value.status, refused.value.close_code) == (code, status, close_code)
        assert subscription.reconnects == 0


async def test_a_client_id_already_connected_is_refused_on_the_first_connection(memory_server):
    async with subscribe(memory_server.http, "feed", client_id="twin") as first:
        await wait_open(first)
        for transport in ("sse", None):
            async with subscribe(memory_server.http, "feed", client_id="twin", transport=transport) as second:
                with pytest.raises(Conflict) as refused:
                    await take(second, 1)
            error = refused.value
            assert (error.code, error.status, error.close_code) == ("client_id_taken", 409, 4409)
        assert first.state == "open"


async def test_frames_sent_on_a_websocket_are_published_and_refusals_come_back_as_typed_events(memory_server):
    async with subscribe(memory_server.http, "chat", client_id="talker", echo=True) as talker:
        await wait_open(talker)
        for number in range(5):  # the server takes 3 at once, then one a second
            assert await talker.send(f"frame {number}")
        events = []
        async with asyncio.timeout(5):
            while len(events) < 5:
                events.append(await anext(talker))
    errors = [event.error for event in events if isinstance(event, FrameError)]
    assert payloads(events) == ["frame 0", "frame 1", "frame 2"]
    assert [(type(error), error.code, error.close_code) for error in errors] == [
        (RateLimited, "rate_limited", 4429)
    ] * 2
    with pytest.raises(TypeError):
        await subscribe(memory_server.http, "feed", transport="sse").send("no")


async def test_with_payload_json_values_arrive_as_values_and_send_publishes_values(memory_server):
    """``payload="json"`` over both transports and in history reads: a value pushed arrives as that value, a string
    as a string; ``send()`` publishes a JSON value. Without it, every payload is a string."""
    async with (
        AsyncPublisher(memory_server.http, API_KEY) as publisher,
        subscribe(memory_server.http, "chat", client_id="json-talker", echo=True, payload="json") as as_json,
        subscribe(memory_server.http, "chat", client_id="text-reader") as as_text,
        subscribe(memory_server.http, "feed", client_id="json-feed", payload="json") as feed,
    ):
        for subscription in (as_json, as_text, feed):
            await wait_open(subscription)
        await publisher.publish("chat", {"order": 42})
        await publisher.publish("chat", '{"order": 42}')
        assert await as_json.send({"order": 43, "items": [1, "two"]})
        await publisher.publish("feed", {"order": 44})
        json_events, text_events = await take(as_json, 3), await take(as_text, 3)
        feed_events = await take(feed, 1)
        history = await publisher.history("feed")
        json_history = await publisher.history("feed", payload="json")
    assert payloads(json_events) == [{"order": 42}, '{"order": 42}', {"order": 43, "items": [1, "two"]}]
    assert payloads(text_events) == ['{"order":42}', '{"order": 42}', '{"order":43,"items":[1,"two"]}']
    assert [event.json() for event in json_events] == [{"order": 42}, {"order": 42}, {"order": 43, "items": [1, "two"]}]
    assert payloads(feed_events) == [{"order": 44}]
    assert history.messages[-1].payload == '{"order":44}'
    assert json_history.messages[-1].payload == {"order": 44}
    with pytest.raises(ValueError):
        subscribe(memory_server.http, "chat", payload="xml")
