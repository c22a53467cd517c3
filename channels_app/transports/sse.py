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
from functools import partial
from urllib.parse import quote

from django_eventstream.utils import sse_encode_event

from ..adapters.servers import connection_aborter
from ..core.outbox import Outbox
from ..core.runtime import Runtime
from ..core.services import Connection, channel_describe, connection_close, connection_open, subscription_start
from ..core.subscription import Subscription
from ..errors import ApplicationError
from ..messages import JSON, TEXT, Message
from .multiplexing import refusal_naming, stream_id
from .origins import cors_headers, header, origin_allowed, origin_not_allowed_body, refusal_cors_headers
from .subscribing import flag, new_outbox, query_params, subscription_for

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

_MESSAGE_EVENT = b"event: message\n"
_MESSAGE_ID = b"event: message\nid: "


def id_segment(channel_id: str, position: str) -> bytes:
    """One channel's part of a multiplexed stream id: ``<channel id, URL-encoded>:<position>``."""
    return f"{quote(channel_id, safe='')}:{position}".encode()


def _multiplexed(message: Message, text: str) -> tuple[tuple, int]:
    # The channel's id segment is encoded here, once per message, not once per stream.
    data = sse_encode_event("message", text).encode("utf-8")[len(_MESSAGE_EVENT) :]
    position = message.position
    segment = None if position is None else id_segment(message.channel_id, position)
    return (message.channel_id, position, segment, data), len(data) + 64


def encode_event_multiplexed(message: Message) -> tuple[tuple, int]:
    """A message on a multiplexed stream: its channel, position, id segment and ``data:`` lines;
    each stream writes the event with its own id (``EventStream._write_multiplexed``)."""
    return _multiplexed(message, message.to_json())


def encode_event_multiplexed_json(message: Message) -> tuple[tuple, int]:
    """``encode_event_multiplexed`` in the ``json`` payload format."""
    return _multiplexed(message, message.to_json_with_values())


MULTIPLEXED_ENCODERS = {TEXT: encode_event_multiplexed, JSON: encode_event_multiplexed_json}


def encode_control(body: dict) -> tuple[bytes, int]:
    """A control object as an SSE event named after its ``control`` field."""
    control = body.get("control")
    event = control if control in ("gap", "join", "leave") else "stream-error"
    frame = sse_encode_event(event, json.dumps(body, separators=(",", ":"))).encode("utf-8")
    return frame, len(frame)


def encode_channel_control(channel_id: str, body: dict) -> tuple[bytes, int]:
    """A control object of one channel of a multiplexed stream, naming the channel."""
    return encode_control({**body, "channelId": channel_id})


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


async def stream_cors(scope, send, runtime: Runtime) -> list | None:
    """The CORS headers of a stream or preflight, or None once an origin that may not subscribe was
    refused (403): before any channel is looked up, so the refusal is the same whether it exists or not."""
    origin, host = header(scope, b"origin"), header(scope, b"host")
    if not origin_allowed(origin, host, runtime.server):
        runtime.stats.incr("refusals_origin_not_allowed")
        logger.info("refused an SSE subscriber: origin_not_allowed (HTTP 403)")
        await send_json(send, 403, origin_not_allowed_body(origin), refusal_cors_headers(origin))
        return None
    return cors_headers(origin, host, runtime.server)


class ChannelStreamEndpoint:
    """ASGI app for ``GET /api/v1/channels/<channel>`` over plain HTTP."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    async def __call__(self, scope, receive, send):
        """Answer a preflight, refuse with JSON, or stream the channel's events until the client leaves."""
        runtime = self.runtime
        cors = await stream_cors(scope, send, runtime)
        if cors is None:
            return
        query = query_params(scope)
        reference = scope["url_route"]["kwargs"]["channel"]
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
        stream = EventStream(receive, send, [connection], cors, runtime)
        try:
            await stream.run()
        finally:
            subscription = stream.subscriptions[0] if stream.subscriptions else None
            await connection_close(connection=connection, subscription=subscription, runtime=runtime)

    async def _preflight(self, send, reference, query, cors) -> None:
        try:
            description = await channel_describe(
                reference=reference, client_id=query.get("clientId"), runtime=self.runtime
            )
        except ApplicationError as error:
            await send_json(send, error.status, error.as_dict(), cors)
            return
        await send_json(send, 200, description, cors)


class EventStream:
    """One open event stream of one channel, or of several (``multiplexed``): its outbox, keep-alives and end."""

    def __init__(self, receive, send, connections: list[Connection], cors, runtime: Runtime, *, multiplexed=False):
        self.runtime = runtime
        self.receive = receive
        self.send = send
        self.connections = connections
        self.cors = cors
        self.multiplexed = multiplexed
        self.subscriptions: list[Subscription] = []
        # A multiplexed stream's position in each channel (in the order asked), for its event ids.
        self.positions: dict[str, str] = {}
        # The id as bytes: a segment per channel (in that order), and the bytes before and after the
        # segment of the channel written last, so a run of events on one channel re-encodes nothing.
        self._segments: list[bytes] = []
        self._index: dict[str, int] = {}
        self._hot = -1
        self._head: bytes | None = None
        self._tail = b""
        self.finished = asyncio.Event()
        self.final_frame: bytes | None = None
        self.overflowed = False
        self.outbox: Outbox | None = None
        # This stream's next keep-alive in the runtime's wheel (core/timewheel.py).
        self.wheel_slot: set | None = None

    async def run(self) -> None:
        """Subscribe, open the response, then write events until the client leaves or is cut off."""
        runtime = self.runtime
        server = runtime.server
        outbox = new_outbox(
            runtime=runtime,
            send=self.send,
            write=self._write_multiplexed if self.multiplexed else self._write,
            on_overflow=self._on_overflow,
        )
        for connection in self.connections:
            subscription = self._subscription(connection, outbox)
            self.subscriptions.append(subscription)
            try:
                # Subscribe (and queue the replay) before the stream opens: once the client sees
                # ``stream-open``, every message published after that reaches it.
                position = await subscription_start(
                    connection=connection, subscription=subscription, from_current=self.multiplexed, runtime=runtime
                )
            except ApplicationError as error:
                runtime.stats.incr(f"refusals_{error.code}")
                logger.info("refused an SSE subscriber: %s (HTTP %s)", error.code, error.status)
                if self.multiplexed:
                    error = refusal_naming(error, connection.channel.id)
                await send_json(self.send, error.status, error.as_dict(), self.cors)
                return
            if self.multiplexed:
                self.positions[connection.channel.id] = str(position)
                self._index[connection.channel.id] = len(self._segments)
                self._segments.append(id_segment(connection.channel.id, str(position)))
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
        await self._write(f"retry: {server.sse_retry}\n\n".encode() + self._opening())
        outbox.start()
        self.outbox = outbox
        keepalives = runtime.sse_keepalives
        keepalives.schedule(self, server.sse_keepalive)
        watch = asyncio.create_task(self._watch_disconnect())
        try:
            await self.finished.wait()
        finally:
            keepalives.cancel(self)
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
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

    def _subscription(self, connection: Connection, outbox: Outbox) -> Subscription:
        if not self.multiplexed:
            return subscription_for(
                connection,
                outbox,
                encode=ENCODERS[connection.payload_format],
                encode_control=encode_control,
                on_close=self._close,
                transport="SSE",
            )
        channel_id = connection.channel.id
        return subscription_for(
            connection,
            outbox,
            encode=MULTIPLEXED_ENCODERS[connection.payload_format],
            encode_control=partial(encode_channel_control, channel_id),
            on_close=lambda code, body: self._close(code, {**body, "channelId": channel_id}),
            transport="SSE",
        )

    def _opening(self) -> bytes:
        """The ``stream-open`` event: the channel and client; on a multiplexed stream every channel's
        position, with the stream id, so that a reconnect before any message still resumes each one."""
        first = self.connections[0]
        if not self.multiplexed:
            opening = {"channelId": first.channel.id, "clientId": first.client_id}
            return sse_encode_event("stream-open", json.dumps(opening)).encode("utf-8")
        opening = {
            "clientId": first.client_id,
            "channels": [
                {"channelId": c.channel.id, "name": c.channel.name, "position": self.positions[c.channel.id]}
                for c in self.connections
            ],
        }
        return sse_encode_event("stream-open", json.dumps(opening), event_id=stream_id(self.positions)).encode("utf-8")

    async def _write(self, frame: bytes) -> None:
        await self.send({"type": "http.response.body", "body": frame, "more_body": True})

    async def _write_multiplexed(self, frame) -> None:
        if type(frame) is tuple:
            # A message event: its id is the stream's position in every channel once it is written.
            channel_id, position, segment, data = frame
            index = self._index[channel_id]
            segments = self._segments
            if position is not None:
                self.positions[channel_id] = position
                segments[index] = segment
            if index != self._hot:
                # Another channel's event came last: join every segment (one call in C), and keep the
                # bytes around this channel's segment for when its next event follows.
                self._hot = index
                self._head = None
                frame = b"".join((_MESSAGE_ID, b",".join(segments), b"\n", data))
            else:
                if self._head is None:
                    self._head = _MESSAGE_ID + b"".join([each + b"," for each in segments[:index]])
                    self._tail = b"".join([b"," + each for each in segments[index + 1 :]]) + b"\n"
                frame = b"".join((self._head, segments[index], self._tail, data))
        await self.send({"type": "http.response.body", "body": frame, "more_body": True})

    def keepalive(self) -> None:
        """Queue a keep-alive comment and set the next one (called by the runtime's ``sse_keepalives``)."""
        if self.outbox.put(KEEPALIVE, len(KEEPALIVE)):
            self.runtime.sse_keepalives.schedule(self, self.runtime.server.sse_keepalive)

    async def _watch_disconnect(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.finished.set()
                return

    def _on_overflow(self) -> None:
        self.runtime.stats.incr("slow_consumer_disconnects")
        logger.info(
            "ending the stream of slow SSE client %s on channel(s) %s",
            self.connections[0].client_id,
            ", ".join(connection.channel.id for connection in self.connections),
        )
        self.overflowed = True
        self.finished.set()

    def _close(self, code: int, body: dict) -> None:
        self.final_frame, _ = encode_control(body)
        self.finished.set()
