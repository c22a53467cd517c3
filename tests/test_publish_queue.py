"""Group commit of a channel's publishes: runs form while a run is on its way, in order, bounded."""

from __future__ import annotations

import asyncio

import pytest

from channels_app.messages import Message
from channels_app.publish_queue import RUN_MAX_BYTES, PendingPublish, PublishQueue
from channels_app.registry import ChannelInfo

ROOM = ChannelInfo(id="room-1", name="room", type="WS", max_connections=10, history_size=10, history_ttl=3600)


class Sender:
    """Stands in for services._publish_run: records each run, and holds it until released."""

    def __init__(self):
        self.runs: list[list[str]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail_next: Exception | None = None

    async def __call__(self, run: list[PendingPublish]) -> None:
        self.runs.append([publish.payload for publish in run])
        await self.release.wait()
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        for offset, publish in enumerate(run, start=sum(map(len, self.runs[:-1])) + 1):
            publish.succeed(
                Message(id=f"id-{offset}", channel_id=ROOM.id, client_id="c", payload=publish.payload, created_at="t")
            )


def submit(queue: PublishQueue, payload: str, size: int = 10):
    return asyncio.ensure_future(queue.submit(ROOM, payload=payload, client_id="c", size=size))


def sender_tasks() -> list[asyncio.Task]:
    return [task for task in asyncio.all_tasks() if task.get_name() == "realtime-publish-runs"]


async def test_a_publish_to_a_quiet_channel_leaves_at_once_alone():
    sender = Sender()
    queue = PublishQueue(sender, max_messages=16)
    message = await queue.submit(ROOM, payload="alone", client_id="c", size=5)
    assert message.payload == "alone"
    assert sender.runs == [["alone"]]
    await asyncio.sleep(0)
    assert sender_tasks() == []


async def test_publishes_that_arrive_while_a_run_is_on_its_way_go_together_in_order():
    sender = Sender()
    sender.release.clear()
    queue = PublishQueue(sender, max_messages=16)
    first = submit(queue, "m0")
    await asyncio.sleep(0)
    waiting = [submit(queue, f"m{index}") for index in range(1, 6)]
    await asyncio.sleep(0)
    sender.release.set()
    results = await asyncio.gather(first, *waiting)
    assert sender.runs == [["m0"], ["m1", "m2", "m3", "m4", "m5"]]
    assert [message.payload for message in results] == [f"m{index}" for index in range(6)]


async def test_runs_are_bounded_by_count_and_by_bytes():
    sender = Sender()
    sender.release.clear()
    queue = PublishQueue(sender, max_messages=3)
    first = submit(queue, "m0")
    await asyncio.sleep(0)
    by_count = [submit(queue, f"c{index}") for index in range(4)]
    big = RUN_MAX_BYTES // 2 + 1
    by_bytes = [submit(queue, f"b{index}", size=big) for index in range(2)]
    too_big = submit(queue, "huge", size=RUN_MAX_BYTES + 1)
    await asyncio.sleep(0)
    sender.release.set()
    await asyncio.gather(first, *by_count, *by_bytes, too_big)
    assert sender.runs == [["m0"], ["c0", "c1", "c2"], ["c3", "b0"], ["b1"], ["huge"]]


async def test_a_publisher_that_stops_waiting_before_its_run_leaves_is_not_sent():
    sender = Sender()
    sender.release.clear()
    queue = PublishQueue(sender, max_messages=16)
    first = submit(queue, "m0")
    await asyncio.sleep(0)
    gone, kept = submit(queue, "gone"), submit(queue, "kept")
    await asyncio.sleep(0)
    gone.cancel()
    sender.release.set()
    assert (await kept).payload == "kept"
    await first
    assert sender.runs == [["m0"], ["kept"]]


async def test_a_failed_run_fails_its_publishers_and_the_next_run_still_goes(caplog):
    sender = Sender()
    sender.release.clear()
    sender.fail_next = RuntimeError("broken")
    queue = PublishQueue(sender, max_messages=2)
    doomed = [submit(queue, "d0"), submit(queue, "d1")]
    later = submit(queue, "later")
    await asyncio.sleep(0)
    sender.release.set()
    for task in doomed:
        with pytest.raises(RuntimeError, match="broken"):
            await task
    assert (await later).payload == "later"
    assert sender.runs == [["d0", "d1"], ["later"]]
    assert "publishing a run of 2 message(s) on channel room-1 failed" in caplog.text


@pytest.mark.parametrize("turns_before_cancel", [1, 2], ids=["before-it-starts", "during-a-run"])
async def test_publishers_are_released_when_the_sender_is_cancelled(turns_before_cancel):
    sender = Sender()
    sender.release.clear()
    queue = PublishQueue(sender, max_messages=1)
    on_its_way, waiting = submit(queue, "m0"), submit(queue, "m1")
    for _ in range(turns_before_cancel):
        await asyncio.sleep(0)
    (task,) = sender_tasks()
    task.cancel()
    for publish in (on_its_way, waiting):
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(publish, 5)
    assert sender.runs == ([["m0"]] if turns_before_cancel == 2 else [])
    # The queue serves the next publish with a new sender.
    sender.release.set()
    assert (await asyncio.wait_for(submit(queue, "next"), 5)).payload == "next"
