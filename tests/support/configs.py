"""The YAML configuration a test server is started with, written from the keys the test sets."""

from __future__ import annotations

import json


def memory_config(**server: object) -> str:
    """A configuration on the MEMORY driver up to its ``channels:`` line, with the given ``server`` keys (values
    written as JSON, which YAML reads as the same values): the test appends its channels, indented two spaces."""
    lines = ["", "server:", *(f"  {key}: {json.dumps(value)}" for key, value in server.items())] if server else [""]
    return "\n".join([*lines, "pubsub:", '  driver: "MEMORY"', "channels:"])


def on_redis(config_text: str, url: str, *, prefix: str | None = None) -> str:
    """``config_text`` (from ``memory_config``) with the REDIS driver pointed at ``url``."""
    redis = f'driver: "REDIS"\n  redis:\n    url: "{url}"' + (f'\n    prefix: "{prefix}"' if prefix else "")
    return config_text.replace('driver: "MEMORY"', redis)


# The channels of a server that needs one of each transport: append it to ``memory_config(...)``.
CHAT_AND_FEED = '\n  chat: {id: "chat-1", type: "WS"}\n  feed: {id: "feed-1", type: "SSE"}\n'
