"""The event-stream endpoint of SSE channels, and the ``?upgrade=0`` preflight of every channel.

Both refuse an origin that may not subscribe (403 ``origin_not_allowed``, readable by that page:
transports/origins.py) before anything else.

The wire format is django-eventstream's (``django_eventstream.utils.sse_encode_event``), so its
browser clients work unchanged; the streaming itself is driven by this instance's hub rather than
django-eventstream's process-global listener manager, which encodes every event once per
listener, caps each listener at ten pending events and keys resume ids by integer only (no epoch
to recognise history lost in a restart).

Events: ``message`` (data: the message JSON; ``id:`` its position), ``gap`` (history could not
cover the resume), ``stream-open`` and ``stream-error`` (django-eventstream's names), and a
keep-alive comment every ``server.sse_keepalive`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging

from django_eventstream.utils import sse_encode_event

from ..adapters.servers import connection_aborter
from ..core.outbox import Outbox
from ..core.runtime import Runtime
from ..core.services import channel_describe, connection_close, connection_open, subscription_start
from ..core.subscription import Subscription
from ..errors import ApplicationError
from ..messages import JSON, TEXT, Message
from .origins import cors_headers, header, origin_allowed, origin_not_allowed_body, refusal_cors_headers
from .subscribing import flag, new_subscription, query_params

logger = logging.getLogger(__name__)

KEEPALIVE = b": keep-alive\n\n"


def encode_event(message: Message) -> tuple[bytes, int]:
    """A message as one SSE ``message`` event whose id resumes the stream (the ``text`` payload format)."""
    frame = sse_encode_event("message", message.to_json(), event_id=message.position).encode("utf-8")
    return frame, len(frame)


def encode_event_json(message: Message) -> tuple[bytes, int]:
    """A message as one SSE ``message`` event in the ``json`` payload format."""
    frame = sse_encode_event("message", message.to_json_with_values(), event_id=message.position).encode("utf-8")
    return frame, len(frame)


# One encoder per payload format: the hub encodes a message once per encoder (core/hub.py deliver).
ENCODERS = {TEXT: encode_event, JSON: encode_event_json}


def encode_control(body: dict) -> tuple[bytes, int]:
    """A control object as an SSE event named after its ``control`` field."""
    control = body.get("control")
    event = control if control in ("gap", "join", "leave") else "stream-error"
    frame = sse_encode_event(event, json.dumps(body, separators=(",", ":"))).encode("utf-8")
    return frame, len(frame)


async def send_json(send, status: int, body: dict, extra_headers=()) -> None:
    """A complete JSON response."""
    payload = json.dumps(body).encode("utf-8")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"cache-control", b"no-store"),
        *extra_headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class ChannelStreamEndpoint:
    """ASGI app for ``GET /api/v1/channels/<channel>`` over plain HTTP."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    async def __call__(self, scope, receive, send):
        """Answer a preflight, refuse with JSON, or stream the channel's events until the client leaves."""
        runtime = self.runtime
        origin, host = header(scope, b"origin"), header(scope, b"host")
        if not origin_allowed(origin, host, runtime.server):
            # Before the channel is looked up: the refusal is the same whether it exists or not.
            runtime.stats.incr("refusals_origin_not_allowed")
            logger.info("refused an SSE subscriber: origin_not_allowed (HTTP 403)")
            await send_json(send, 403, origin_not_allowed_body(origin), refusal_cors_headers(origin))
            return
        query = query_params(scope)
        reference = scope["url_route"]["kwargs"]["channel"]
        cors = cors_headers(origin, host, runtime.server)
        if query.get("upgrade") == "0":
            await self._preflight(send, reference, query, cors)
            return
        # An EventSource reconnects to the same URL and sends the id of the last event it
        # received: the header is newer than any position written into the URL.
        since = header(scope, b"last-event-id") or query.get("since") or query.get("lastEventId")
        try:
            connection = await connection_open(
                reference=reference,
                transport="SSE",
                client_id=query.get("clientId"),
                since=since,
                echo=flag(query.get("echo")),
                token=query.get("token"),
                payload_format=query.get("payload"),
                headers=scope.get("headers"),
                runtime=runtime,
            )
        except ApplicationError as error:
            runtime.stats.incr(f"refusals_{error.code}")
            logger.info("refused an SSE subscriber: %s (HTTP %s)", error.code, error.status)
            await send_json(send, error.status, error.as_dict(), cors)
            return
        stream = _Stream(scope, receive, send, connection, cors, runtime)
        try:
            await stream.run()
        finally:
            await connection_close(connection=connection, subscription=stream.subscription, runtime=runtime)

    async def _preflight(self, send, reference, query, cors) -> None:
        try:
            description = await channel_describe(
                reference=reference, client_id=query.get("clientId"), runtime=self.runtime
            )
        except ApplicationError as error:
            await send_json(send, error.status, error.as_dict(), cors)
            return
        await send_json(send, 200, description, cors)


class _Stream:
    """One open event stream: its outbox, keep-alives and end."""

    def __init__(self, scope, receive, send, connection, cors, runtime: Runtime):
        self.runtime = runtime
        self.receive = receive
        self.send = send
        self.connection = connection
        self.cors = cors
        self.subscription: Subscription | None = None
        self.finished = asyncio.Event()
        self.final_frame: bytes | None = None
        self.overflowed = False

    async def run(self) -> None:
        """Subscribe, open the response, then write events until the client leaves or is cut off."""
        runtime = self.runtime
        server = runtime.server
        self.subscription = new_subscription(
            runtime=runtime,
            connection=self.connection,
            send=self.send,
            write=self._write,
            encode=ENCODERS[self.connection.payload_format],
            encode_control=encode_control,
            on_overflow=self._on_overflow,
            on_close=self._close,
            transport="SSE",
        )
        outbox = self.subscription.outbox
        try:
            # Subscribe (and queue the replay) before the stream opens: once the client sees
            # ``stream-open``, every message published after that reaches it.
            await subscription_start(connection=self.connection, subscription=self.subscription, runtime=runtime)
        except ApplicationError as error:
            runtime.stats.incr(f"refusals_{error.code}")
            logger.info("refused an SSE subscriber: %s (HTTP %s)", error.code, error.status)
            await send_json(self.send, error.status, error.as_dict(), self.cors)
            return
        await self.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                    *self.cors,
                ],
            }
        )
        opening = {
            "channelId": self.connection.channel.id,
            "clientId": self.connection.client_id,
        }
        first = f"retry: {server.sse_retry}\n\n" + sse_encode_event("stream-open", json.dumps(opening))
        await self._write(first.encode("utf-8"))
        outbox.start()
        tasks = [
            asyncio.create_task(self._keepalive(outbox, server.sse_keepalive)),
            asyncio.create_task(self._watch_disconnect()),
        ]
        try:
            await self.finished.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await outbox.stop()
        if self.final_frame is not None:
            await outbox.flush()
            await self._write(self.final_frame)
        abort = connection_aborter(self.send) if self.overflowed else None
        if abort is not None:
            # What the server still buffers is what the client could not read; dropping the
            # connection frees it now (under uvicorn the end of the response would wait for the
            # client to read), and the client resumes from its Last-Event-ID.
            abort()
            await asyncio.sleep(0)
        try:
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            # uvicorn's ClientDisconnected, once the abort has run.
            pass

    async def _write(self, frame: bytes) -> None:
        await self.send({"type": "http.response.body", "body": frame, "more_body": True})

    async def _keepalive(self, outbox: Outbox, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            outbox.put(KEEPALIVE, len(KEEPALIVE))

    async def _watch_disconnect(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.finished.set()
                return

    def _on_overflow(self) -> None:
        self.runtime.stats.incr("slow_consumer_disconnects")
        logger.info(
            "ending the stream of slow SSE client %s on channel %s",
            self.connection.client_id,
            self.connection.channel.id,
        )
        self.overflowed = True
        self.finished.set()

    def _close(self, code: int, body: dict) -> None:
        self.final_frame, _ = encode_control(body)
        self.finished.set()
