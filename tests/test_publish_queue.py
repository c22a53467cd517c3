"""Group commit of a channel's publishes: runs form while a run is on its way, in order, bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from channels_app.channel import ChannelInfo
from channels_app.core.publish_queue import RUN_MAX_BYTES, PendingPublish, PublishQueue, Receipt
from channels_app.messages import Message
from channels_app.state.history import Draft
from tests.conftest import memory_runtime

ROOM = ChannelInfo(id="room-1", name="room", type="WS", max_connections=10, history_size=10, history_ttl=3600)


class Sender:
    """Stands in for services._publish_run: records each run, and holds it until released."""

    def __init__(self):
        self.runs: list[list[str]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.failures: dict[int, Exception] = {}  # run number (from 1) -> what it raises
        self.after: dict[int, Callable[[], None]] = {}  # run number -> called as the run ends

    async def __call__(self, run: list[PendingPublish]) -> list[Receipt]:
        self.runs.append([publish.draft.payload for publish in run])
        await self.release.wait()
        number = len(self.runs)
        if number in self.after:
            self.after[number]()
        if number in self.failures:
            raise self.failures[number]
        first = sum(map(len, self.runs[:-1])) + 1
        return [
            Receipt(
                Message(
                    id=f"id-{offset}", channel_id=ROOM.id, client_id="c", payload=publish.draft.payload, created_at="t"
                )
            )
            for offset, publish in enumerate(run, start=first)
        ]


class SenderQueue(PublishQueue):
    """A publish queue whose runs go to ``sender`` instead of history and the channel layer."""

    def __init__(self, sender: Sender, *, max_messages: int):
        super().__init__(memory_runtime(), max_messages=max_messages)
        self.sender = sender

    async def send_run(self, run: list[PendingPublish]) -> list[Receipt]:
        return await self.sender(run)


def submit(queue: PublishQueue, payload: str, size: int = 10):
    return asyncio.ensure_future(queue.submit(ROOM, Draft(payload, "c"), size=size))


def sender_tasks() -> list[asyncio.Task]:
    return [task for task in asyncio.all_tasks() if task.get_name() == "realtime-publish-runs"]


async def first_run_held(max_messages: int, sender: Sender | None = None):
    """A queue whose first publish, "m0", is on its way and held there until ``sender.release``."""
    sender = sender or Sender()
    sender.release.clear()
    queue = SenderQueue(sender, max_messages=max_messages)
    first = submit(queue, "m0")
    await asyncio.sleep(0)
    return sender, queue, first


async def test_a_publish_to_a_quiet_channel_leaves_at_once_alone():
    sender = Sender()
    queue = SenderQueue(sender, max_messages=16)
    message = await queue.submit(ROOM, Draft("alone", "c"), size=5)
    assert message.message.payload == "alone"
    assert sender.runs == [["alone"]]
    await asyncio.sleep(0)
    assert sender_tasks() == []


async def test_publishes_that_arrive_while_a_run_is_on_its_way_go_together_in_order():
    sender, queue, first = await first_run_held(16)
    waiting = [submit(queue, f"m{index}") for index in range(1, 6)]
    await asyncio.sleep(0)
    sender.release.set()
    results = await asyncio.gather(first, *waiting)
    assert sender.runs == [["m0"], ["m1", "m2", "m3", "m4", "m5"]]
    assert [receipt.message.payload for receipt in results] == [f"m{index}" for index in range(6)]


async def test_runs_are_bounded_by_count_and_by_bytes():
    sender, queue, first = await first_run_held(3)
    by_count = [submit(queue, f"c{index}") for index in range(4)]
    big = RUN_MAX_BYTES // 2 + 1
    by_bytes = [submit(queue, f"b{index}", size=big) for index in range(2)]
    too_big = submit(queue, "huge", size=RUN_MAX_BYTES + 1)
    await asyncio.sleep(0)
    sender.release.set()
    await asyncio.gather(first, *by_count, *by_bytes, too_big)
    assert sender.runs == [["m0"], ["c0", "c1", "c2"], ["c3", "b0"], ["b1"], ["huge"]]


async def test_a_publisher_that_stops_waiting_before_its_run_leaves_is_not_sent():
    sender, queue, first = await first_run_held(16)
    gone, kept = submit(queue, "gone"), submit(queue, "kept")
    await asyncio.sleep(0)
    gone.cancel()
    sender.release.set()
    assert (await kept).message.payload == "kept"
    await first
    assert sender.runs == [["m0"], ["kept"]]


async def test_a_failed_run_fails_its_publishers_and_the_next_run_still_goes(caplog):
    sender = Sender()
    sender.failures = {1: RuntimeError("own run broken"), 2: RuntimeError("queued run broken")}
    sender, queue, alone = await first_run_held(2, sender)
    doomed = [submit(queue, "d0"), submit(queue, "d1")]
    later = submit(queue, "later")
    await asyncio.sleep(0)
    sender.release.set()
    with pytest.raises(RuntimeError, match="own run broken"):
        await alone
    for task in doomed:
        with pytest.raises(RuntimeError, match="queued run broken"):
            await task
    assert (await later).message.payload == "later"
    assert sender.runs == [["m0"], ["d0", "d1"], ["later"]]
    assert "publishing a run of 2 message(s) on channel room-1 failed" in caplog.text


async def test_a_publisher_cancelled_while_its_own_run_is_on_its_way_does_not_strand_the_queue():
    sender, queue, first = await first_run_held(16)
    waiting = submit(queue, "m1")
    await asyncio.sleep(0)
    first.cancel()
    sender.release.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (await asyncio.wait_for(waiting, 5)).message.payload == "m1"
    assert sender.runs == [["m0"], ["m1"]]


def cancel_sender_soon():
    asyncio.get_running_loop().call_soon(lambda: [task.cancel() for task in sender_tasks()])


@pytest.mark.parametrize("when", ["before-it-starts", "during-a-run"])
async def test_publishers_are_released_when_the_sender_is_cancelled(when):
    """As when the event loop closes: nobody is left waiting for a run that will never be sent."""
    sender = Sender()
    # Run 1 is m0's own; the sender task is created as it ends and sends m1, then m2.
    if when == "before-it-starts":
        sender.after[1] = cancel_sender_soon  # lands before the new task's first step
    else:
        sender.after[1] = sender.release.clear
    sender, queue, first = await first_run_held(1, sender)
    queued = [submit(queue, "m1"), submit(queue, "m2")]
    await asyncio.sleep(0)
    sender.release.set()
    await first
    if when == "during-a-run":
        assert sender.runs == [["m0"], ["m1"]]  # the sender's first step came before this one
        (task,) = sender_tasks()
        task.cancel()
    for publish in queued:
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(publish, 5)
    assert sender.runs == ([["m0"], ["m1"]] if when == "during-a-run" else [["m0"]])
    # The queue serves the next publish.
    sender.release.set()
    assert (await asyncio.wait_for(submit(queue, "next"), 5)).message.payload == "next"
