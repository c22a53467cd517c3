"""The WebSocket endpoint of WS channels: ``/api/v1/channels/<channel>``.

The consumer is thin: it parses frames and calls services. It joins no channel-layer group
itself; the instance's hub delivers to it (see core/hub.py), so the consumer needs no layer channel.
Refusals are sent as a final ``{"control": "close", ...}`` text frame followed by the close
code, because daphne drops the reason of an ASGI ``websocket.close``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from ..adapters.servers import (
    asgi_close_code_allowed,
    connection_aborter,
    hold_close_reply,
    is_send_on_closed_websocket,
    websocket_close_frame_sender,
)
from ..core.hook_calls import publish_hooks_run
from ..core.runtime import Runtime
from ..core.services import (
    connection_close,
    connection_open,
    message_publish,
    payload_too_large,
    publish_forbidden,
    subscription_start,
)
from ..errors import ApplicationError
from ..hooks import ON_PUBLISH
from ..jsoncodec import frame_payload
from ..messages import JSON, TEXT, Message
from .ratelimit import TokenBucket
from .subscribing import flag, new_subscription, query_params

logger = logging.getLogger(__name__)

CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SLOW_CONSUMER = 4408
# Frames of one connection being published at once. They enter the channel's publish queue in the
# order they arrived, so they stay in order, and can travel together as one run (core/publish_queue.py);
# awaited one by one, a connection could publish no faster than a run's Redis round trips. Beyond
# this many the consumer stops reading frames until one is done.
PUBLISHES_IN_FLIGHT = 16


def encode_frame(message: Message) -> tuple[str, int]:
    """A message as one WebSocket text frame, and its size in bytes (the ``text`` payload format)."""
    text = message.to_json()
    return text, len(text.encode("utf-8", "surrogatepass"))


def encode_frame_json(message: Message) -> tuple[str, int]:
    """A message as one WebSocket text frame in the ``json`` payload format, and its size in bytes."""
    text = message.to_json_with_values()
    return text, len(text.encode("utf-8", "surrogatepass"))


# One encoder per payload format: the hub encodes a message once per encoder (core/hub.py deliver).
ENCODERS = {TEXT: encode_frame, JSON: encode_frame_json}


def encode_control(body: dict) -> tuple[str, int]:
    """A control object (gap, join, leave, error, close) as one WebSocket text frame, and its size in bytes."""
    text = json.dumps(body, separators=(",", ":"))
    return text, len(text.encode("utf-8"))


class SocketConsumer(AsyncWebsocketConsumer):
    """What both WebSocket endpoints share: reading the client's events, publishing its frames in
    order, refusing bad frames, and closing with a documented code."""

    # The hub receives from the channel layer for every local connection.
    channel_layer_alias = None

    def __init__(self, *, runtime: Runtime):
        super().__init__()
        self.runtime = runtime

    @property
    def is_open(self) -> bool:
        """Whether the connection is admitted and not yet released."""
        raise NotImplementedError

    async def __call__(self, scope, receive, send):
        """Run the consumer, and give the connection's slots back however it ends. It reads the
        client's events itself, not through channels' ``AsyncConsumer`` loop, which cost about 2 KB
        per connection and a thread hand-off per frame (docs/architecture.md)."""
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        self.outbox = None
        self._closing = None
        self._accepted = False
        self._close_after_accept: tuple[int, dict] | None = None
        self._released: asyncio.Task | None = None
        self._publishing: set[asyncio.Task] = set()
        self.bucket = TokenBucket(rate=self.runtime.server.publish_rate, burst=self.runtime.server.publish_burst)
        # Resolved once the previous frame has passed the on_publish hooks and entered the publish queue.
        self._hook_turn: asyncio.Future | None = None
        try:
            while True:
                message = await receive()
                handler = getattr(self, get_handler_name(message), None)
                if handler is None:
                    logger.warning("ignored an ASGI event of unknown type %r", message.get("type"))
                    continue
                await handler(message)
        except StopConsumer:
            pass
        finally:
            await self._release()
            if self._publishing:
                # Frames read from the client are published even when it has gone.
                await asyncio.wait(self._publishing)

    async def realtime_close_frame(self, message) -> None:
        """The client's close frame (``CLOSE_FRAME_EVENT``), queued behind the frames it sent before
        it, which are being published by now: release the connection, then let the server answer."""
        released = message["released"]
        try:
            await message["release"]()
        except Exception as exc:
            # Reported where the consumer ends, which awaits the same release.
            if not released.done():
                released.set_exception(exc)
            return
        if not released.done():
            released.set_result(None)

    def send_control(self, body: dict) -> None:
        """Queue a control frame (an answer, an error) for the client."""
        if self.outbox is not None:
            frame, size = encode_control(body)
            self.outbox.put(frame, size)

    def send_error(self, error: ApplicationError, extra: dict | None = None) -> None:
        """Queue an error frame: the refusal's code and reason, with ``extra`` (a ``ref``, a channel)."""
        self.send_control({"control": "error", "code": error.close_code, **error.as_dict(), **(extra or {})})

    def frame_refused(self, text_data: str | None, max_size: int) -> bool:
        """Close on a binary frame (1003) or one over ``max_size`` bytes (1009); whether it did."""
        runtime = self.runtime
        if text_data is None:
            runtime.stats.incr("frames_refused_binary")
            self.close_soon(
                CLOSE_UNSUPPORTED_DATA,
                {
                    "control": "close",
                    "code": CLOSE_UNSUPPORTED_DATA,
                    "error": "binary_frame",
                    "message": "Binary frames are not supported: send text frames.",
                },
            )
            return True
        size = len(text_data.encode("utf-8", "surrogatepass"))
        if size > max_size:
            error = payload_too_large(size, max_size)
            runtime.stats.incr("frames_refused_too_large")
            self.close_soon(error.close_code, {"control": "close", "code": error.close_code, **error.as_dict()})
            return True
        return False

    def rate_limited(self, reply: dict) -> bool:
        """Whether the connection publishes too fast; if so the client is told, and the frame dropped."""
        if self.bucket.allow():
            return False
        self.runtime.stats.incr("frames_refused_rate_limited")
        self.send_control(
            {
                "control": "error",
                "code": 4429,
                "error": "rate_limited",
                "message": "Publishing too fast: this message was not published; slow down "
                f"(server.publish_rate is {self.runtime.server.publish_rate}/s).",
                **reply,
            }
        )
        return True

    async def publish_soon(
        self, connection, hooks, frame: str, published: tuple[str, str], reply: dict | None = None
    ) -> None:
        """Publish a frame's payload without waiting for it, in the order frames arrived; with
        ``reply`` (a multiplexed connection) the client gets an ack, or an error, carrying it."""
        if len(self._publishing) >= PUBLISHES_IN_FLIGHT:
            await asyncio.wait(self._publishing, return_when=asyncio.FIRST_COMPLETED)
            if not self.is_open or self._closing is not None:
                return  # closed while this frame waited for room, like the frames not yet read
        if hooks:
            turn = asyncio.get_running_loop().create_future()
            publishing = asyncio.create_task(
                self._publish_hooked(connection, hooks, frame, published, reply, self._hook_turn, turn)
            )
            self._hook_turn = turn
        else:
            publishing = asyncio.create_task(self._publish(connection, *published, reply))
        self._publishing.add(publishing)
        publishing.add_done_callback(self._published)

    async def _publish(self, connection, payload: str, payload_kind: str, reply: dict | None) -> None:
        try:
            # Counted like an accepted push: a draining instance waits for it (shutdown.drain).
            with self.runtime.in_flight:
                message = await message_publish(
                    channel=connection.channel,
                    payload=payload,
                    client_id=connection.client_id,
                    payload_kind=payload_kind,
                    runtime=self.runtime,
                )
        except ApplicationError as error:
            # The connection may have been closed meanwhile; its outbox then drops this.
            self.send_error(error, reply)
            return
        if reply is not None:
            self.send_control({"control": "published", "id": message.id, "position": message.position, **reply})

    async def _publish_hooked(
        self, connection, hooks, frame: str, published: tuple[str, str], reply, previous, turn
    ) -> None:
        """Ask the on_publish hooks, then publish: one frame at a time per connection, so the frames
        that pass keep their order whatever each hook call takes."""
        with self.runtime.in_flight:
            try:
                if previous is not None:
                    await previous
                payload, payload_kind = await publish_hooks_run(
                    hooks=hooks,
                    channel=connection.channel,
                    client_id=connection.client_id,
                    frame=frame,
                    published=published,
                    payload_format=connection.payload_format,
                    token_claims=connection.token_claims,
                    info=connection.info,
                    runtime=self.runtime,
                )
            except ApplicationError as error:
                self.send_error(error, reply)
                return
            finally:
                # The next frame goes on once this one has entered the publish queue, which the
                # call below does before it first waits.
                turn.set_result(None)
            await self._publish(connection, payload, payload_kind, reply)

    def _published(self, publishing: asyncio.Task) -> None:
        self._publishing.discard(publishing)
        failure = None if publishing.cancelled() else publishing.exception()
        if failure is None:
            return
        logger.error("publishing a WebSocket frame failed", exc_info=failure)
        if not self.is_open:
            return  # the connection is already gone
        self.close_soon(
            CLOSE_INTERNAL_ERROR,
            {
                "control": "close",
                "code": CLOSE_INTERNAL_ERROR,
                "error": "internal_error",
                "message": "The server failed to publish your message; reconnect with ?since= to resume.",
            },
        )

    async def disconnect(self, code):
        """Release the subscriptions and the connection slots."""
        await self._release()

    def close_soon(self, code: int, body: dict) -> None:
        """Tell the client why, then close with ``code`` (used by the hub and on bad frames)."""
        if not self._accepted:
            # The hub may close a connection still replaying before it is accepted (a replaced
            # clientId, a channel deleted): nothing may be sent before the handshake completes.
            self._close_after_accept = self._close_after_accept or (code, body)
            return
        if self._closing is None:
            self._closing = asyncio.create_task(self._shutdown(code, body))

    def cut_off_slow(self, description: str) -> None:
        """Close a connection that could not keep up (4408); it resumes from history."""
        self.runtime.stats.incr("slow_consumer_disconnects")
        logger.info("disconnecting slow WebSocket client %s", description)
        self.close_soon(
            CLOSE_SLOW_CONSUMER,
            {
                "control": "close",
                "code": CLOSE_SLOW_CONSUMER,
                "error": "slow_consumer",
                "message": "The connection could not keep up with the channel; reconnect with "
                "?since=<last position> to resume from history.",
            },
        )

    async def _shutdown(self, code: int, body: dict) -> None:
        outbox = self.outbox
        await self._release()
        if outbox is not None:
            # What was already queued goes out before the close (nothing, for a slow consumer).
            await outbox.flush()
        abort = connection_aborter(self.base_send) if code == CLOSE_SLOW_CONSUMER else None
        if abort is not None:
            # A slow consumer may never read its close frame: daphne drops it 1 s after the close
            # (autobahn's close handshake timeout); under uvicorn nothing else would.
            asyncio.get_running_loop().call_later(1.0, abort)
        try:
            await self._send_close(code, body)
        except OSError:
            # uvicorn's ClientDisconnected, once the abort has run.
            pass

    async def _send_close(self, code: int, body: dict) -> None:
        await self.base_send({"type": "websocket.send", "text": json.dumps(body, separators=(",", ":"))})
        send_close_frame = None if asgi_close_code_allowed(code) else websocket_close_frame_sender(self.base_send)
        if send_close_frame is not None:
            send_close_frame(code)
        else:
            await self.close(code)

    async def _write(self, frame: str) -> None:
        try:
            await self.base_send({"type": "websocket.send", "text": frame})
        except RuntimeError as error:
            # A close reply sent before the release (CLOSE_REPLY_HOLD_SECONDS): the outbox stops as
            # it does for a connection that went away.
            if is_send_on_closed_websocket(error):
                raise ConnectionResetError("the WebSocket is closing") from error
            raise

    def _release(self) -> Awaitable[None]:
        """Leave the hub and give the slots back, once, for whichever asks first: the client's close
        frame (``hold_close_reply``), ``websocket.disconnect``, a close by the server, a refusal."""
        if self._released is None:
            # Detached at once: from now on the consumer takes no frame and queues nothing.
            self._released = asyncio.ensure_future(self._give_back(*self._detach()))
        # Shielded: a caller cancelled while waiting (a server killing a slow application) does
        # not stop the release the others wait for.
        return asyncio.shield(self._released)

    def _detach(self) -> tuple:
        """Take the connection's state off the consumer, for ``_give_back``."""
        raise NotImplementedError

    async def _give_back(self, *detached) -> None:
        raise NotImplementedError


class ChannelConsumer(SocketConsumer):
    """Subscribes a WebSocket to a WS channel and publishes the text frames it sends."""

    def __init__(self, *, runtime: Runtime, channel: str):
        """``channel``: the channel id or name from the URL (routing.WebSocketRouter matches it)."""
        super().__init__(runtime=runtime)
        self.channel_reference = channel
        self.connection = None
        self.subscription = None
        self._publish_hooks = ()

    @property
    def is_open(self) -> bool:
        """Whether the connection is admitted and not yet released."""
        return self.connection is not None

    async def connect(self):
        """Admit the connection or refuse it with a documented close code."""
        runtime = self.runtime
        query = query_params(self.scope)
        try:
            self.connection = await connection_open(
                reference=self.channel_reference,
                transport="WS",
                client_id=query.get("clientId"),
                since=query.get("since"),
                echo=flag(query.get("echo")),
                token=query.get("token"),
                payload_format=query.get("payload"),
                headers=self.scope.get("headers"),
                runtime=runtime,
            )
            self._prepare()
            # The slot is free again before the client's close completes, so a client that
            # reconnects at once with its clientId to resume is not refused (docs/protocol.md).
            hold_close_reply(self.base_send, self._release)
            # Subscribe (and queue the replay) before accepting: once the client sees the
            # handshake complete, every message published after that reaches it.
            await subscription_start(connection=self.connection, subscription=self.subscription, runtime=runtime)
        except ApplicationError as error:
            await self._release()
            runtime.stats.incr(f"refusals_{error.code}")
            logger.info("refused a WebSocket subscriber: %s (close %s)", error.code, error.close_code)
            await self.accept()
            await self._send_close(error.close_code, {"control": "close", "code": error.close_code, **error.as_dict()})
            return
        await self.accept()
        self._accepted = True
        self.outbox.start()
        if self._close_after_accept is not None:
            self.close_soon(*self._close_after_accept)

    def _prepare(self) -> None:
        if self.runtime.hooks.on_publish:
            self._publish_hooks = self.runtime.hooks.matching(ON_PUBLISH, self.connection.channel)
        self.subscription = new_subscription(
            runtime=self.runtime,
            connection=self.connection,
            send=self.base_send,
            write=self._write,
            encode=ENCODERS[self.connection.payload_format],
            encode_control=encode_control,
            on_overflow=self._on_overflow,
            on_close=self.close_soon,
            transport="WS",
        )
        self.outbox = self.subscription.outbox

    async def receive(self, text_data=None, bytes_data=None):
        """Publish a text frame to the channel; refuse binary, oversized and too-frequent frames, and on
        a connection in the ``json`` payload format frames that are not JSON."""
        connection = self.connection
        if connection is None or self._closing is not None:
            return
        runtime = self.runtime
        if self.frame_refused(text_data, runtime.server.max_message_size):
            return
        if not connection.can_publish:
            runtime.stats.incr("frames_refused_read_only")
            error = publish_forbidden(connection.channel.id)
            self.send_error(error)
            return
        if self.rate_limited({}):
            return
        payload, payload_kind = text_data, TEXT
        if connection.payload_format == JSON:
            try:
                payload, payload_kind = frame_payload(text_data)
            except ApplicationError as error:
                runtime.stats.incr("frames_refused_not_json")
                self.send_error(error)
                return
        await self.publish_soon(connection, self._publish_hooks, text_data, (payload, payload_kind))

    def _on_overflow(self) -> None:
        self.cut_off_slow(f"{self.connection.client_id} on channel {self.connection.channel.id}")

    def _detach(self) -> tuple:
        """Take the connection and its subscription off the consumer."""
        detached = self.connection, self.subscription
        self.connection = self.subscription = None
        return detached

    async def _give_back(self, connection, subscription) -> None:
        if self.outbox is not None:
            await self.outbox.stop()
        if connection is not None:
            await connection_close(connection=connection, subscription=subscription, runtime=self.runtime)
