"""The MEMORY driver's channel layer: expiry sweeps at most once a second, and still expire."""

from __future__ import annotations

import asyncio

import pytest
from channels.layers import InMemoryChannelLayer as ChannelsInMemoryChannelLayer
from django.conf import settings

from channels_app import layers
from channels_app.layers import InMemoryChannelLayer

pytestmark = pytest.mark.asyncio


def test_the_memory_driver_uses_this_layer():
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels_app.layers.InMemoryChannelLayer"


async def test_a_thousand_publishes_sweep_once(monkeypatch):
    sweeps = []
    monkeypatch.setattr(ChannelsInMemoryChannelLayer, "_clean_expired", lambda self: sweeps.append(1))
    layer = InMemoryChannelLayer(capacity=10_000)
    hub = await layer.new_channel("realtime-hub")
    for index in range(100):
        await layer.group_add(f"channel-{index}", hub)
    for index in range(1000):
        await layer.group_send(f"channel-{index % 100}", {"type": "realtime.message"})
    for _ in range(1000):
        await layer.receive(hub)
    assert len(sweeps) == 1


async def test_expired_messages_and_their_channel_still_leave(monkeypatch):
    monkeypatch.setattr(layers, "SWEEP_INTERVAL_SECONDS", 0.05)
    layer = InMemoryChannelLayer(expiry=0.01)
    stale = await layer.new_channel("stale")
    await layer.group_add("channel-a", stale)
    await layer.send(stale, {"type": "realtime.message"})
    await asyncio.sleep(0.1)
    await layer.group_send("channel-b", {"type": "realtime.message"})
    # channels' rule: a channel whose message expired unread is dropped from every group.
    assert stale not in layer.groups.get("channel-a", {})
    assert stale not in layer.channels
