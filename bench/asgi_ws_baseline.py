"""The WebSocket baseline on ASGI: a bare broadcast app, run under the same server as the service.

    python -m daphne -b 127.0.0.1 -p PORT bench.asgi_ws_baseline:app
    python -m uvicorn --ws websockets-sansio --port PORT bench.asgi_ws_baseline:app

Every text frame a client sends goes, unchanged, to every other client of its room (the URL
path; the query string is ignored): one ``websocket.send`` per connection, through a
per-connection queue drained by the connection's own task, as any ASGI app must so that one
slow client never holds up the others. No envelope, no history, no limits, no auth: close to the
least work an ASGI WebSocket fan-out can do, which is what the issue's "server CPU per delivery
≤ 1.3x a bare ASGI broadcast app on the same server" compares against.
"""

from __future__ import annotations

import asyncio
import contextlib

ROOMS: dict[str, set[asyncio.Queue]] = {}


async def _drain(queue: asyncio.Queue, send) -> None:
    while True:
        await send({"type": "websocket.send", "text": await queue.get()})


async def _websocket(scope, receive, send) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    path = scope["path"]
    room = ROOMS.setdefault(path, set())
    queue: asyncio.Queue = asyncio.Queue()
    room.add(queue)
    writer = asyncio.create_task(_drain(queue, send))
    try:
        while True:
            event = await receive()
            if event["type"] != "websocket.receive":
                break  # websocket.disconnect
            text = event.get("text")
            if text is None:
                continue
            for other in room:
                if other is not queue:
                    other.put_nowait(text)
    finally:
        room.discard(queue)
        if not room:
            ROOMS.pop(path, None)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await writer


async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await _websocket(scope, receive, send)
    elif scope["type"] == "http":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
