"""The coalescing rule of join and leave notices (core/presence_events.py), against a recording layer."""

from __future__ import annotations

from types import SimpleNamespace

from channels_app.core.presence_events import JOIN, LEAVE, PresenceEvents
from channels_app.naming import channel_group
from channels_app.state.presence import Member
from tests.conftest import memory_runtime
from tests.support.waiting import wait_until


class RecordingLayer:
    def __init__(self):
        self.sent: list[tuple[str, dict]] = []

    async def group_send(self, group: str, event: dict) -> None:
        self.sent.append((group, event))


def notices(layer: RecordingLayer) -> list[list[tuple[str, str]]]:
    return [[(n["control"], n["clientId"]) for n in event["events"]] for _, event in layer.sent]


async def test_a_window_sends_one_batch_and_a_join_then_leave_cancels_out():
    layer = RecordingLayer()
    events = PresenceEvents(SimpleNamespace(layer=layer), window=0.05)
    events.note("room-1", JOIN, "alice", {"name": "Alice"})
    events.note("room-1", JOIN, "ghost", None)
    events.note("room-1", LEAVE, "ghost", None)
    events.note("room-1", LEAVE, "bob", None)
    events.note("room-1", JOIN, "bob", {"name": "Bob"})
    await wait_until(lambda: layer.sent, within=5)
    assert [group for group, _ in layer.sent] == [channel_group("room-1")]
    assert layer.sent[0][1]["type"] == "realtime.presence"
    assert notices(layer) == [[("join", "alice"), ("join", "bob")]]
    assert layer.sent[0][1]["events"][1]["info"] == {"name": "Bob"}


async def test_a_storm_is_sent_in_bounded_batches_and_coalesces_while_it_waits():
    layer = RecordingLayer()
    # A window long enough that the test acts between the first batch and the second.
    events = PresenceEvents(SimpleNamespace(layer=layer), window=0.5, batch=100)
    for index in range(250):
        events.note("room-1", LEAVE, f"m{index:03}", None)
    await wait_until(lambda: len(layer.sent) >= 1, within=5)
    # Members not yet reported as gone come back: their leave and join become one join.
    for index in range(200, 250):
        events.note("room-1", JOIN, f"m{index:03}", None)
    await wait_until(lambda: sum(len(event["events"]) for _, event in layer.sent) == 250, within=5)
    assert all(len(event["events"]) <= 100 for _, event in layer.sent)
    sent = [notice for batch in notices(layer) for notice in batch]
    assert sent[:200] == [("leave", f"m{index:03}") for index in range(200)]
    assert sorted(sent[200:]) == [("join", f"m{index:03}") for index in range(200, 250)]


async def test_members_swept_with_their_expired_slots_are_announced_as_leaving():
    layer = RecordingLayer()
    runtime = memory_runtime(layer=layer)
    runtime.presence_events.window = 0.01
    runtime.presence.on_expired("room-1", [Member("ghost", "WS", None, {"name": "Ghost"})])
    await wait_until(lambda: layer.sent, within=5)
    assert layer.sent[0][1]["events"] == [{"control": "leave", "clientId": "ghost", "info": {"name": "Ghost"}}]
