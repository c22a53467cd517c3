"""The baseline: a bare ``websockets`` broadcast server, the least work a Python fan-out can do.

Every text frame a client sends goes, unchanged, to every other client of its room with
``websockets.broadcast`` (one write per connection, no envelope, no history, no limits). A room
is the URL path (``ws://host:port/<room>``; the query string is ignored), so the many-channels
scenario runs on it as on the service.

    python -m bench.baseline --port PORT

It listens on 127.0.0.1 only, prints ``ready`` once listening and stops on SIGTERM/SIGINT, or
by itself after ``--max-seconds`` (the benchmark never leaves it running).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from websockets.asyncio.server import broadcast, serve

ROOMS: dict[str, set] = {}


async def handler(connection) -> None:
    """Relay each text frame of this client to all the others in its room."""
    path = connection.request.path.partition("?")[0]
    room = ROOMS.setdefault(path, set())
    room.add(connection)
    try:
        while True:
            message = await connection.recv(decode=False)
            broadcast([c for c in room if c is not connection], message, text=True)
    except Exception:  # any end of the connection (close, reset) just ends the relay
        pass
    finally:
        room.discard(connection)
        if not room:
            ROOMS.pop(path, None)


async def main(port: int, max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    async with serve(handler, "127.0.0.1", port, compression=None, max_size=1 << 20, backlog=1024):
        print("ready", flush=True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop, max_seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.max_seconds))
    sys.exit(0)
