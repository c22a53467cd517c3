"""Settings for a live server whose connection slots take ``SLOW_RELEASE_SECONDS`` to be released.

``DJANGO_SETTINGS_MODULE=tests.slow_release_settings`` stands for a slow Redis round trip or a busy
instance: whatever gives a client time to reconnect before its old slot is free, unless the server
holds the close reply until it is (test_reconnect.py).
"""

import asyncio
import functools
import os

from channels_app.state.presence import MemoryPresence
from channels_app.state.redis_presence import RedisPresence
from realtime_project.settings import *  # noqa: F403

SLOW_RELEASE_SECONDS = float(os.environ.get("SLOW_RELEASE_SECONDS", "0.2"))


def _slowed(release):
    @functools.wraps(release)
    async def slow_release(self, *args, **kwargs):
        await asyncio.sleep(SLOW_RELEASE_SECONDS)
        await release(self, *args, **kwargs)

    return slow_release


MemoryPresence.release = _slowed(MemoryPresence.release)
RedisPresence.release = _slowed(RedisPresence.release)
