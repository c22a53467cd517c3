"""The SSE baseline: a bare ASGI Server-Sent Events broadcast app, run under the same server as the service.

    python -m daphne -b 127.0.0.1 -p PORT bench.sse_baseline:app

``GET /events`` streams; ``POST /publish`` sends its body, as the ``data:`` of one ``message``
event, to every open stream (one encode, then one ``http.response.body`` per stream, through a
per-stream queue drained by the stream's own task, as any ASGI app must). No envelope, no
history, no limits, no auth: close to the least work an ASGI SSE fan-out can do.
"""

from __future__ import annotations

import asyncio

STREAMS: set[asyncio.Queue] = set()
HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


async def _stream(send) -> None:
    queue: asyncio.Queue = asyncio.Queue()
    STREAMS.add(queue)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": b": open\n\n", "more_body": True})
        while True:
            frame = await queue.get()
            await send({"type": "http.response.body", "body": frame, "more_body": True})
    finally:
        STREAMS.discard(queue)


async def _publish(receive, send) -> None:
    body = b""
    while True:
        event = await receive()
        body += event.get("body", b"")
        if not event.get("more_body"):
            break
    frame = b"event: message\ndata: " + body + b"\n\n"
    for queue in STREAMS:
        queue.put_nowait(frame)
    await send({"type": "http.response.start", "status": 201, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return
    if scope["method"] == "POST" and scope["path"] == "/publish":
        await _publish(receive, send)
    elif scope["method"] == "GET" and scope["path"] == "/events":
        await _stream(send)
    else:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
