"""Constants and helpers the client's end-to-end tests share."""

from __future__ import annotations

import asyncio
import time

from realtime_client import Gap, Message, Subscription

API_KEY = "client-tests-key-0123456789"
TOKEN_SECRET = "client-tests-token-secret-0123456789abcdef"
ENV = {"REALTIME_API_KEYS": API_KEY, "REALTIME_TOKEN_SECRET": TOKEN_SECRET, "DJANGO_SECRET_KEY": "c" * 50}
# WebSocket frames: 3 at once, then one a second, so a test can be rate-limited at will.
CONFIG = """
server:
  allow_push_server_messages: true
  publish_burst: 3
  publish_rate: 1
pubsub:
  driver: "MEMORY"
channels:
  chat: {id: "chat-1", type: "WS", max_of_channel_connections: 20}
  feed: {id: "feed-1", type: "SSE", max_of_channel_connections: 20}
  vault: {id: "vault-1", type: "WS", private: true}
  alerts: {id: "alerts-1", type: "SSE", private: true}
  short: {id: "short-1", type: "WS", history_size: 2}
"""


def redis_config(url: str) -> str:
    """CONFIG with the REDIS driver on ``url``."""
    return CONFIG.replace('driver: "MEMORY"', f'driver: "REDIS"\n  redis:\n    url: "{url}"\n    prefix: "client"')


async def wait_open(subscription: Subscription, seconds: float = 10) -> None:
    """Start ``subscription`` and wait until it is subscribed (state ``open``)."""
    await subscription.__aenter__()
    deadline = time.monotonic() + seconds
    while subscription.state != "open":
        assert time.monotonic() < deadline, f"not open after {seconds}s (state {subscription.state})"
        await asyncio.sleep(0.02)


async def take(subscription: Subscription, count: int, seconds: float = 15) -> list[Message | Gap]:
    """Events from ``subscription`` until ``count`` messages have arrived (gaps and frame errors included)."""
    events = []
    async with asyncio.timeout(seconds):
        async for event in subscription:
            events.append(event)
            if sum(isinstance(item, Message) for item in events) >= count:
                return events
    return events


def payloads(events) -> list[str]:
    """The payloads of the messages among ``events``, in order."""
    return [event.payload for event in events if isinstance(event, Message)]
