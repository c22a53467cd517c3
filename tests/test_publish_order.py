"""Concurrent publishes to one channel reach the channel layer in offset order.

The hub drops a message that arrives after a higher offset of its channel, and repairs the hole
from history only while history still holds it. RedisChannelLayer (``layer: core``) orders a
channel's queue by a timestamp that ``group_send`` takes after several Redis round trips, so
publishes that overlap must hand their messages to the layer one run at a time, in offset order.
Publishes that wait for a run on its way go together, and each learns its own outcome.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from channels.layers import InMemoryChannelLayer
from hypothesis import given
from hypothesis import strategies as st

from channels_app.channel import ChannelInfo
from channels_app.core.services import message_publish, message_publish_receipt
from channels_app.errors import ApplicationError
from channels_app.messages import Position
from channels_app.naming import channel_group
from channels_app.state.history import MemoryHistory
from tests.conftest import memory_runtime
from tests.support.fakes import HeldHistory
from tests.support.strategies import any_character

CHANNEL = ChannelInfo(id="order-1", name="order", type="WS", max_connections=10, history_size=10, history_ttl=3600)


class TimestampingLayer(InMemoryChannelLayer):
    """Like RedisChannelLayer.group_send: a few round trips, then the message is queued by time."""

    def __init__(self, rng: random.Random):
        super().__init__()
        self.rng = rng
        self.queued: list[tuple[float, int]] = []
        self.sends = 0

    async def group_send(self, group, message):
        for _ in range(self.rng.randint(0, 3)):
            await asyncio.sleep(0)
        wires = message["messages"] if message["type"] == "realtime.messages" else [message["message"]]
        self.queued.extend((time.monotonic(), wire["offset"]) for wire in wires)
        self.sends += 1


class YieldingHistory:
    """The runtime's history, answering after a few turns of the loop (as Redis does)."""

    def __init__(self, history, rng: random.Random):
        self.history, self.rng = history, rng

    async def append_many(self, *args, **kwargs):
        for _ in range(self.rng.randint(0, 3)):
            await asyncio.sleep(0)
        return await self.history.append_many(*args, **kwargs)


def test_overlapping_publishes_reach_the_layer_in_offset_order():
    async def scenario():
        rng = random.Random(7)
        layer = TimestampingLayer(rng)
        runtime = memory_runtime(layer=layer, history=YieldingHistory(MemoryHistory(), rng))
        published = await asyncio.gather(
            *(message_publish(channel=CHANNEL, payload=f"m{i}", client_id="c", runtime=runtime) for i in range(64))
        )
        return published, [offset for _, offset in sorted(layer.queued)], layer.sends

    published, queued, sends = asyncio.run(scenario())
    assert queued == list(range(1, 65))
    # Each publisher got its own message, stamped in the order it published.
    assert [(m.payload, m.offset) for m in published] == [(f"m{i}", i + 1) for i in range(64)]
    # Publishes that waited for a run on its way went together: one layer send per run, each run
    # no longer than a turn of the hub's.
    assert 64 / 16 <= sends < 64


async def publish_while_held(runtime, count: int):
    history = runtime.history
    tasks = [
        asyncio.ensure_future(message_publish(channel=CHANNEL, payload=f"m{i}", client_id="c", runtime=runtime))
        for i in range(count)
    ]
    # The first run waits in history; the publishes started with it are queued behind it by then.
    await asyncio.wait_for(history.holding.wait(), 5)
    history.release.set()
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_run_history_refuses_fails_each_of_its_publishers_with_its_own_error():
    refusal = ApplicationError("redis_unavailable", "Redis is away.", status=503, close_code=4503)
    runtime = memory_runtime(history=HeldHistory(MemoryHistory(), error=refusal))
    outcomes = await publish_while_held(runtime, 5)
    assert [(o.code, o.status) for o in outcomes] == [("redis_unavailable", 503)] * 5
    assert len({id(o) for o in outcomes}) == 5
    assert "messages_published" not in runtime.stats.counters()


async def test_a_run_the_layer_refuses_is_acknowledged_as_recorded_and_handed_over_once_the_layer_is_back(
    monkeypatch,
):
    history = HeldHistory(MemoryHistory())
    runtime = memory_runtime(history=history)
    runtime.fanout_repair.retry_seconds = 0.05
    await runtime.layer.group_add(channel_group(CHANNEL.id), "observer")
    group_send = runtime.layer.group_send
    refusals = [ConnectionError("layer down")] * 2

    async def down_for_a_while(group, message):
        if refusals:
            raise refusals.pop()
        await group_send(group, message)

    monkeypatch.setattr(runtime.layer, "group_send", down_for_a_while)
    receipts = [
        asyncio.ensure_future(message_publish_receipt(channel=CHANNEL, payload=f"m{i}", client_id="c", runtime=runtime))
        for i in range(5)
    ]
    await asyncio.wait_for(history.holding.wait(), 5)
    history.release.set()
    receipts = await asyncio.gather(*receipts)
    # Recorded, each publisher with its own offset, and told that the hand-over is pending: a 202, not a
    # refusal that would invite a second publish.
    assert [(r.message.offset, r.fanout_pending) for r in receipts] == [(offset, True) for offset in range(1, 6)]
    assert runtime.stats.counters()["publish_errors"] == 5
    handed_over = []
    while len(handed_over) < 5:
        event = await asyncio.wait_for(runtime.layer.receive("observer"), 2)
        handed_over += [wire["offset"] for wire in event.get("messages", [event.get("message")])]
    assert handed_over == [1, 2, 3, 4, 5]
    assert runtime.stats.counters()["fanout_repaired"] == 5


async def test_publishes_that_waited_together_are_counted_as_one_run():
    runtime = memory_runtime(history=HeldHistory(MemoryHistory()))
    messages = await publish_while_held(runtime, 5)
    assert [m.offset for m in messages] == [1, 2, 3, 4, 5]
    assert runtime.stats.counters()["messages_published"] == 5
    # The first went alone, at once; the four that arrived while it was on its way went together.
    assert runtime.stats.counters()["publish_runs"] == 2


# --- Any payloads: published in order, or refused (hypothesis; moved from test_hardening_properties.py) ---

PUBLISH_CHANNEL = ChannelInfo(
    id="prop-1", name="prop", type="WS", max_connections=10, history_size=1000, history_ttl=3600
)


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@given(st.lists(st.text(alphabet=any_character, max_size=60), min_size=1, max_size=25))
def test_message_publish_works_or_refuses_and_keeps_history_in_order(payloads):
    async def scenario():
        runtime = memory_runtime()
        outcomes = []
        for payload in payloads:
            try:
                message = await message_publish(
                    channel=PUBLISH_CHANNEL, payload=payload, client_id="prop", runtime=runtime
                )
            except ApplicationError as error:
                outcomes.append((payload, error))
            else:
                outcomes.append((payload, message))
        held = (await runtime.history.since(PUBLISH_CHANNEL, Position(offset=0))).messages
        return outcomes, held

    outcomes, held = asyncio.run(scenario())
    published = [(payload, result) for payload, result in outcomes if not isinstance(result, ApplicationError)]
    for payload, result in outcomes:
        if isinstance(result, ApplicationError):
            assert result.status == 400 and not encodable(payload), (payload, result.as_dict())
        else:
            # Whatever is published can be written to a WebSocket and an event stream (strict UTF-8).
            assert encodable(result.to_json())
    assert [message.payload for message in held] == [payload for payload, _ in published]
    assert [message.offset for message in held] == list(range(1, len(published) + 1))
    assert [message.id for message in held] == [result.id for _, result in published]


@given(st.one_of(st.integers(), st.binary(), st.none(), st.lists(st.text())))
def test_message_publish_refuses_a_payload_that_is_not_text(payload):
    async def scenario():
        runtime = memory_runtime()
        with pytest.raises(ApplicationError):
            await message_publish(channel=PUBLISH_CHANNEL, payload=payload, client_id="prop", runtime=runtime)
        return await runtime.history.head(PUBLISH_CHANNEL.id)

    assert asyncio.run(scenario()) == 0
