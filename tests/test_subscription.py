"""One connection's subscription (ordering, de-duplication, resume) and its bounded outbox."""

from __future__ import annotations

import asyncio

from channels_app.core.outbox import Outbox
from channels_app.messages import Message, Position
from channels_app.state.history import Gap, Replay
from tests.support.fakes import FakeConnection


def message(offset: int | None, *, epoch: str = "e1", client_id: str = "writer", payload: str | None = None) -> Message:
    return Message(
        id=f"00000000-0000-4000-8000-{offset or 0:012d}",
        channel_id="room-1",
        client_id=client_id,
        payload=payload if payload is not None else f"m{offset}",
        created_at="2026-01-01T00:00:00.000Z",
        offset=offset,
        epoch=epoch if offset is not None else None,
    )


async def test_live_messages_flow_once_and_in_order():
    connection = FakeConnection()
    connection.subscription.replay(None)
    connection.offer(message(1), message(2), message(2), message(1), message(3))
    assert await connection.frames() == [("message", "m1"), ("message", "m2"), ("message", "m3")]


async def test_own_messages_are_skipped_unless_echo_is_asked():
    quiet, echoing = FakeConnection(client_id="me"), FakeConnection(client_id="me", echo=True)
    for connection in (quiet, echoing):
        connection.subscription.replay(None)
        connection.offer(message(1, client_id="me"), message(2, client_id="you"))
    assert await quiet.frames() == [("message", "m2")]
    assert await echoing.frames() == [("message", "m1"), ("message", "m2")]


async def test_live_messages_wait_for_the_replay_and_are_not_repeated():
    connection = FakeConnection()
    # Live messages 3 and 4 arrive while history is being read...
    connection.offer(message(3), message(4))
    assert await connection.frames() == []
    # ...and history holds 2 and 3: each message is delivered once, in offset order.
    connection.subscription.replay(Replay([message(2), message(3)]), Position(epoch="e1", offset=1))
    assert await connection.frames() == [("message", "m2"), ("message", "m3"), ("message", "m4")]


async def test_messages_the_client_already_has_are_not_sent_again_on_resume():
    """A message published just before the reconnect can still be on its way through the layer."""
    connection = FakeConnection()
    connection.offer(message(3), message(4))
    connection.subscription.replay(Replay([message(4)]), Position(epoch="e1", offset=3))
    assert await connection.frames() == [("message", "m4")]

    up_to_date = FakeConnection()
    up_to_date.offer(message(3))
    up_to_date.subscription.replay(Replay([]), Position(epoch="e1", offset=3))
    up_to_date.offer(message(4))
    assert await up_to_date.frames() == [("message", "m4")]


async def test_resume_by_message_id_drops_the_held_copy_of_that_message():
    connection = FakeConnection()
    connection.offer(message(3), message(4))
    connection.subscription.replay(Replay([]), Position(message_id=message(3).id))
    assert await connection.frames() == [("message", "m4")]


async def test_resume_by_bare_offset_applies_to_the_current_epoch():
    connection = FakeConnection()
    connection.offer(message(5, epoch="e9"), message(6, epoch="e9"))
    connection.subscription.replay(Replay([]), Position(offset=5))
    assert await connection.frames() == [("message", "m6")]


async def test_gap_notice_comes_first_then_everything_still_held():
    connection = FakeConnection()
    connection.offer(message(1, epoch="new"))
    gap = Gap("epoch_changed", "old-7", "new-1")
    connection.subscription.replay(Replay([message(1, epoch="new")], gap), Position(epoch="old", offset=7))
    connection.offer(message(2, epoch="new"))
    frames = await connection.frames()
    assert frames[0] == ("control", gap.as_wire())
    assert frames[1:] == [("message", "m1"), ("message", "m2")]


async def test_expired_gap_still_skips_held_copies_of_replayed_messages():
    connection = FakeConnection()
    connection.offer(message(4), message(5))
    gap = Gap("expired", "e1-1", "e1-4")
    connection.subscription.replay(Replay([message(4), message(5)], gap), Position(epoch="e1", offset=1))
    assert await connection.frames() == [("control", gap.as_wire()), ("message", "m4"), ("message", "m5")]


async def test_messages_outside_history_are_always_delivered():
    connection = FakeConnection()
    connection.subscription.replay(None)
    connection.offer(message(7), message(None, payload="raw group_send"), message(8))
    assert await connection.frames() == [("message", "m7"), ("message", "raw group_send"), ("message", "m8")]


async def test_a_replay_larger_than_half_the_bound_is_queued_in_pages_as_the_outbox_drains():
    connection = FakeConnection(max_messages=4)  # pages of 2
    connection.subscription.replay(Replay([message(offset) for offset in range(2, 9)]), Position(epoch="e1", offset=1))
    assert connection.outbox.put("probe", 1)  # room is left beside a page
    assert connection.overflows == 0
    # Live messages, repeats of the replay among them, wait for its last page.
    connection.offer(message(7), message(8), message(9), message(10))
    connection.outbox.start()
    await connection.until_written(10)
    await connection.outbox.stop()
    replayed = [("message", f"m{offset}") for offset in range(2, 11)]
    assert connection.written == replayed[:2] + ["probe"] + replayed[2:]
    assert connection.overflows == 0
    connection.offer(message(11))
    assert await connection.frames() == connection.written[:-1] + [("message", "m11")]


async def test_live_messages_held_during_a_paced_replay_have_their_own_bound():
    connection = FakeConnection(max_messages=4)
    connection.subscription.replay(Replay([message(offset) for offset in range(2, 9)]), Position(epoch="e1", offset=1))
    connection.offer(*(message(offset) for offset in range(9, 13)))
    assert connection.overflows == 0
    connection.offer(message(13))  # a client that does not read: cut off, nothing more is written
    assert connection.overflows == 1
    connection.outbox.start()
    await asyncio.sleep(0.01)
    assert connection.written == []
    assert connection.outbox.writer is None


async def test_a_paced_replay_waits_for_the_server_to_drain_what_it_buffers():
    drained = asyncio.Event()
    waits = 0

    async def wait_drained():
        nonlocal waits
        waits += 1
        await drained.wait()
        drained.clear()

    connection = FakeConnection(max_messages=4, wait_drained=wait_drained)
    connection.subscription.replay(Replay([message(offset) for offset in range(1, 6)]), Position(epoch="e1", offset=0))
    connection.outbox.start()
    for page in (2, 4):
        await connection.until_written(page)
        await asyncio.sleep(0.01)
        assert len(connection.written) == page  # nothing more until the server has drained
        drained.set()
    await connection.until_written(5)
    await connection.outbox.stop()
    assert connection.written == [("message", f"m{offset}") for offset in range(1, 6)]
    assert waits == 2


async def test_control_frames_are_not_held_back_by_a_replay():
    connection = FakeConnection()
    connection.offer(message(1))
    connection.subscription.send_control({"control": "error", "code": 4429})
    assert await connection.frames() == [("control", {"control": "error", "code": 4429})]


async def test_close_asks_the_connection_to_close():
    connection = FakeConnection()
    connection.subscription.close(4410, {"control": "close", "code": 4410})
    assert connection.closed == [(4410, {"control": "close", "code": 4410})]


def outbox(*, max_messages: int = 100, max_bytes: int = 1000, buffered: int = 0):
    written: list = []
    overflows: list = []

    async def write(frame):
        written.append(frame)

    box = Outbox(
        write=write,
        max_messages=max_messages,
        max_bytes=max_bytes,
        on_overflow=lambda: overflows.append(True),
        buffered_bytes=lambda: buffered,
    )
    return box, written, overflows


async def test_outbox_writer_sends_frames_in_order():
    written: list = []
    all_written = asyncio.Event()

    async def write(frame):
        written.append(frame)
        if len(written) == 5:
            all_written.set()

    box = Outbox(write=write, max_messages=10, max_bytes=1000, on_overflow=lambda: None, buffered_bytes=lambda: 0)
    box.start()
    for index in range(5):
        assert box.put(f"f{index}", 10)
    await asyncio.wait_for(all_written.wait(), 5)
    await box.stop()
    assert written == ["f0", "f1", "f2", "f3", "f4"]


async def test_outbox_overflows_on_message_count_once_and_for_good():
    box, written, overflows = outbox(max_messages=2)
    assert box.put("a", 1) and box.put("b", 1)
    assert not box.put("c", 1)
    assert not box.put("d", 1)
    assert overflows == [True]
    assert box.overflowed
    await box.flush()
    assert written == []  # a slow connection's backlog is dropped, not written


async def test_outbox_counts_bytes_including_what_the_server_still_buffers():
    box, _, overflows = outbox(max_bytes=100, buffered=60)
    assert box.put("a", 40)
    assert not box.put("b", 1)
    assert overflows == [True]


async def test_outbox_bytes_are_freed_as_frames_are_written():
    box, written, overflows = outbox(max_bytes=100)
    for index in range(10):
        assert box.put(f"f{index}", 60)
        await box.flush()
    assert len(written) == 10
    assert overflows == []


async def test_outbox_writer_stops_when_the_connection_overflows_with_frames_queued():
    box, written, overflows = outbox(max_messages=2)
    box.start()
    assert box.put("a", 1) and box.put("b", 1)
    writer = box.writer
    assert not box.put("c", 1)
    # It ends instead of spinning on the frames it may no longer write (which froze the event loop).
    await asyncio.wait_for(writer, 1)
    assert written == [] and overflows == [True]
    assert box.writer is None


async def test_an_idle_outbox_holds_no_writer_task():
    box, written, _ = outbox()
    assert box.put("queued before the connection opened", 1)
    box.start()
    assert box.writer is not None
    await asyncio.wait_for(asyncio.shield(box.writer), 1)
    assert box.writer is None
    assert box.put("next", 1)
    await asyncio.wait_for(asyncio.shield(box.writer), 1)
    assert written == ["queued before the connection opened", "next"]
    assert box.writer is None


async def test_nothing_is_written_before_start_or_after_stop():
    box, written, _ = outbox()
    assert box.put("a", 1)
    await asyncio.sleep(0.01)
    assert written == [] and box.writer is None
    box.start()
    await box.stop()
    assert box.put("b", 1)
    await asyncio.sleep(0.01)
    assert box.writer is None
    await box.flush()  # a closing connection writes what is left itself
    assert written[-1] == "b"
