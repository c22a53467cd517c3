"""``python -m bench.many_create N [HISTORY_TTL]``: create channels ``room_channel_id(0..N-1)`` in bulk.

Run by the many scenario in the service's environment (its ``DATABASE_URL``), before the service
starts. A YAML config of 100,000 channels is parsed at every start and by every ``manage.py``
command, so the scenario creates its channels the way an API client with a bulk import would:
rows of source ``api`` through ``bulk_create``, which the registry loads at start.
"""

from __future__ import annotations

import logging
import os
import sys
import time

logger = logging.getLogger(__name__)

MAX_CONNECTIONS = 4  # two subscribers per channel, with room for a reconnect


def create(count: int, history_ttl: int | None = None) -> float:
    """Create ``count`` WS channels in batches of 5,000 (with ``history_ttl`` when given, else the
    model's default); return the seconds it took."""
    from channels_app.models import Channel

    from .servers import room_channel_id

    started = time.monotonic()
    for start in range(0, count, 5000):
        Channel.objects.bulk_create(
            [
                Channel(
                    name=room_channel_id(i),
                    public_id=room_channel_id(i),
                    type=Channel.Type.WS,
                    max_connections=MAX_CONNECTIONS,
                    source=Channel.Source.API,
                    **({} if history_ttl is None else {"history_ttl": history_ttl}),
                )
                for i in range(start, min(start + 5000, count))
            ]
        )
    return time.monotonic() - started


def main() -> int:
    """Set Django up, create the channels, print the seconds."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "realtime_project.settings")
    django.setup()
    history_ttl = int(sys.argv[2]) if len(sys.argv) > 2 else None
    sys.stdout.write(f"{create(int(sys.argv[1]), history_ttl):.3f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
