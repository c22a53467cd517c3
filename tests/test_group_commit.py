"""Group commit (``state/group_commit.py``): a lone call leaves at once; calls made while one is on its
way go together as the next batch, in order, each answered with its own outcome."""

from __future__ import annotations

import asyncio

import pytest

from channels_app.state.group_commit import GroupCommit


class Recorder:
    """A send_batch that records each batch and holds it until released."""

    def __init__(self):
        self.batches: list[list] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def send(self, batch: list) -> list:
        self.batches.append(list(batch))
        await self.gate.wait()
        return [ValueError(f"bad {item}") if str(item).startswith("bad") else f"done {item}" for item in batch]


async def test_a_lone_call_is_sent_at_once_alone():
    recorder = Recorder()
    commit = GroupCommit(recorder.send, name="test")
    assert await commit.call("a") == "done a"
    assert await commit.call("b") == "done b"
    assert recorder.batches == [["a"], ["b"]]


async def test_calls_made_while_one_is_on_its_way_go_together_in_order():
    recorder = Recorder()
    recorder.gate.clear()
    commit = GroupCommit(recorder.send, name="test", max_items=3)
    calls = [asyncio.create_task(commit.call(item)) for item in "abcdef"]
    await asyncio.sleep(0)
    recorder.gate.set()
    assert await asyncio.gather(*calls) == [f"done {item}" for item in "abcdef"]
    assert recorder.batches == [["a"], ["b", "c", "d"], ["e", "f"]]
    assert await commit.call("g") == "done g"  # idle again: alone, at once
    assert recorder.batches[-1] == ["g"]


async def test_each_call_gets_its_own_failure():
    recorder = Recorder()
    recorder.gate.clear()
    commit = GroupCommit(recorder.send, name="test")
    calls = [asyncio.create_task(commit.call(item)) for item in ("a", "b", "bad-c", "d")]
    await asyncio.sleep(0)
    recorder.gate.set()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert outcomes[:2] == ["done a", "done b"] and outcomes[3] == "done d"
    assert isinstance(outcomes[2], ValueError) and str(outcomes[2]) == "bad bad-c"


async def test_a_batch_that_fails_whole_fails_each_of_its_callers():
    gate = asyncio.Event()

    async def send(batch):
        await gate.wait()
        if len(batch) > 1:
            raise ConnectionError("Redis went away")
        return ["ok"]

    commit = GroupCommit(send, name="test")
    calls = [asyncio.create_task(commit.call(item)) for item in range(4)]
    await asyncio.sleep(0)
    gate.set()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert outcomes[0] == "ok"
    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes[1:])


async def test_a_call_whose_caller_stopped_waiting_is_not_sent():
    recorder = Recorder()
    recorder.gate.clear()
    commit = GroupCommit(recorder.send, name="test")
    first = asyncio.create_task(commit.call("a"))
    await asyncio.sleep(0)
    gone = asyncio.create_task(commit.call("gone"))
    kept = asyncio.create_task(commit.call("kept"))
    await asyncio.sleep(0)
    gone.cancel()
    recorder.gate.set()
    assert await first == "done a" and await kept == "done kept"
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert recorder.batches == [["a"], ["kept"]]
