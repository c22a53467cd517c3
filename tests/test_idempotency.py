"""Idempotency keys: their parsing, and the in-process receipts of the MEMORY driver. How both history
stores record a key with its message is held to one contract in tests/test_history_contract.py."""

from __future__ import annotations

import pytest

from channels_app.channel import ChannelInfo
from channels_app.errors import ApplicationError
from channels_app.messages import Message
from channels_app.state.idempotency import MemoryReceipts, idempotency_key_parse

ROOM = ChannelInfo(id="room-1", name="room", type="WS", max_connections=10, history_size=10, history_ttl=3600)


def test_memory_receipts_expire_after_the_window():
    now = [0.0]
    receipts = MemoryReceipts(window=10, clock=lambda: now[0])
    message = Message(id="m", channel_id=ROOM.id, client_id="c", payload="p", created_at="t", offset=1, epoch="e")
    key = idempotency_key_parse("k", payload="p")
    receipts.remember(ROOM, "e", key, message)
    assert receipts.lookup(ROOM, "e", key) is message
    now[0] = 11
    assert receipts.lookup(ROOM, "e", key) is None


@pytest.mark.parametrize("raw", ["", "k" * 201])
def test_an_empty_or_overlong_key_is_refused(raw):
    with pytest.raises(ApplicationError) as refused:
        idempotency_key_parse(raw, payload="p")
    assert refused.value.status == 400
