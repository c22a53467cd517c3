"""adapters/application_queue.py: asyncio.Queue's behaviour for one application's input, in a few slots."""

from __future__ import annotations

import asyncio
import sys
import tracemalloc

import pytest

from channels_app.adapters.application_queue import ApplicationQueue


async def test_messages_come_out_in_order_whether_read_at_once_or_waited_for():
    queue = ApplicationQueue()
    for n in range(5):
        queue.put_nowait(n)
    assert queue.qsize() == 5
    assert [await queue.get() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert queue.empty()

    reader = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    assert not reader.done()
    queue.put_nowait("connect")
    assert await reader == "connect"


async def test_each_message_goes_to_one_reader_the_longest_waiting_first():
    queue = ApplicationQueue()
    first, second = asyncio.ensure_future(queue.get()), asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("a")
    await asyncio.sleep(0)
    assert first.done() and first.result() == "a"
    assert not second.done()
    queue.put_nowait("b")
    assert await second == "b"


async def test_a_reader_cancelled_after_being_woken_passes_the_message_on():
    queue = ApplicationQueue()
    first, second = asyncio.ensure_future(queue.get()), asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("only")
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 1) == "only"
    assert queue.empty()


async def test_a_cancelled_reader_is_forgotten():
    queue = ApplicationQueue()
    reader = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert queue._readers is None
    queue.put_nowait("kept")
    assert queue.get_nowait() == "kept"


def test_get_nowait_on_an_empty_queue_raises_queue_empty():
    with pytest.raises(asyncio.QueueEmpty):
        ApplicationQueue().get_nowait()


def test_an_empty_queue_is_still_a_queue_to_daphne():
    # daphne's http_protocol tests ``if self.application_queue:``.
    assert ApplicationQueue()


async def test_an_idle_queue_is_far_smaller_than_asyncio_queue():
    def held_by(make) -> int:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            queues = [make() for _ in range(1000)]
            for queue in queues:
                queue.put_nowait({"type": "websocket.connect"})
                queue.get_nowait()
            return (tracemalloc.get_traced_memory()[0] - before) // len(queues)
        finally:
            tracemalloc.stop()

    lean, standard = held_by(ApplicationQueue), held_by(asyncio.Queue)
    assert lean <= sys.getsizeof(ApplicationQueue()) + 16
    assert standard - lean > 2000, (lean, standard)
