"""Idempotent pushes in one process: once per key, concurrent duplicates wait, misuse refused."""

import asyncio

import pytest

from channels_app.errors import ApplicationError
from channels_app.idempotency import MemoryIdempotency


async def test_a_key_runs_its_action_once():
    store = MemoryIdempotency()
    calls = []

    async def action():
        calls.append(1)
        await asyncio.sleep(0.01)
        return {"id": len(calls)}

    results = await asyncio.gather(*(store.run_once("k", "f", action) for _ in range(5)))
    assert calls == [1]
    assert [result for result, _ in results] == [{"id": 1}] * 5
    assert sorted(replayed for _, replayed in results) == [False, True, True, True, True]


async def test_a_failed_attempt_can_be_retried():
    store = MemoryIdempotency()

    async def failing():
        raise ApplicationError("layer_unavailable", "down", status=503)

    with pytest.raises(ApplicationError):
        await store.run_once("k", "f", failing)

    async def working():
        return "ok"

    assert await store.run_once("k", "f", working) == ("ok", False)


async def test_reusing_a_key_for_another_request_is_refused():
    store = MemoryIdempotency()

    async def action():
        return 1

    await store.run_once("k", "first body", action)
    with pytest.raises(ApplicationError) as refused:
        await store.run_once("k", "second body", action)
    assert refused.value.status == 422


async def test_keys_expire_after_the_window():
    now = [0.0]
    store = MemoryIdempotency(window=10, clock=lambda: now[0])
    runs = []

    async def action():
        runs.append(1)
        return len(runs)

    await store.run_once("k", "f", action)
    now[0] = 11
    assert await store.run_once("k", "f", action) == (2, False)
