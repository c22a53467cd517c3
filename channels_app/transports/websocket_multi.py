"""The multiplexed WebSocket: ``/api/v1/connect``. It starts with no channel; the client subscribes,
unsubscribes and publishes with JSON control frames, each answered (with its ``ref``, if any) while
the connection stays open (docs/protocol.md, "Many channels on one connection").

Every channel is admitted as if it were opened alone (existence, token, slots, clientId, hooks);
the connection's channels share one outbox, publish rate and size limits. A client may publish only
to WS channels; SSE channels are read-only here.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from functools import partial

from ..adapters.servers import hold_close_reply
from ..core.runtime import Runtime
from ..core.services import (
    Connection,
    connection_close,
    connection_open,
    publish_forbidden,
    subscription_start,
)
from ..core.subscription import Subscription
from ..errors import ApplicationError, bad_request, shutting_down, too_many_channels
from ..hooks import ON_PUBLISH
from ..jsoncodec import json_parse, json_text, payload_of
from ..messages import PAYLOAD_FORMATS, TEXT, Position, payload_format_parse
from ..naming import client_id_parse
from .subscribing import flag, new_outbox, query_params, subscription_for
from .websocket import ENCODERS, SocketConsumer, encode_control

logger = logging.getLogger(__name__)

OPERATIONS = ("subscribe", "unsubscribe", "publish")
# Codes that end the whole connection rather than one of its channels.
CLOSE_GOING_AWAY = 1001
MAX_REF_LENGTH = 128
MAX_REFERENCE_LENGTH = 256


def encode_channel_control(channel_id: str, body: dict) -> tuple[str, int]:
    """A control frame of one of the connection's channels (gap, join, leave), naming it."""
    return encode_control({**body, "channel": channel_id})


def not_subscribed(reference: str) -> ApplicationError:
    """A frame names a channel this connection does not follow (4404)."""
    return ApplicationError(
        "not_subscribed",
        f'This connection is not subscribed to {reference!r}: send {{"subscribe": {reference!r}}} first.',
        status=404,
        close_code=4404,
    )


def already_subscribed(channel_id: str) -> ApplicationError:
    """A second subscribe to a channel the connection follows (4409)."""
    return ApplicationError(
        "already_subscribed",
        f"This connection is already subscribed to {channel_id!r}: unsubscribe first to subscribe again "
        "from another position.",
        status=409,
        close_code=4409,
    )


def read_only_channel(channel_id: str) -> ApplicationError:
    """A publish to an SSE channel, which only the server API writes to (4403)."""
    return ApplicationError(
        "read_only_channel",
        f"Channel {channel_id!r} is an SSE channel: it is read-only for clients; backends publish to it "
        "with POST /api/v1/channels/<channel>/messages.",
        status=403,
        close_code=4403,
    )


@dataclass
class _Joined:
    connection: Connection
    subscription: Subscription
    publish_hooks: tuple


class ConnectConsumer(SocketConsumer):
    """One WebSocket following any number of channels (up to ``server.max_channels_per_connection``)."""

    def __init__(self, *, runtime: Runtime):
        super().__init__(runtime=runtime)
        self._open = False
        self.client_id: str | None = None
        self.joined: dict[str, _Joined] = {}
        self._ids_by_name: dict[str, str] = {}
        self._payload_format: str | None = None
        self._echo = False

    @property
    def is_open(self) -> bool:
        """Whether the connection is accepted and not yet released."""
        return self._open

    async def connect(self):
        """Accept the connection with no channel, or refuse it with a documented close code."""
        runtime = self.runtime
        query = query_params(self.scope)
        try:
            if runtime.draining:
                raise shutting_down()
            raw_client_id = query.get("clientId")
            # Absent, the first subscription decides it (a private channel's token names it).
            self.client_id = client_id_parse(raw_client_id) if raw_client_id is not None else None
            if query.get("payload") is not None:
                self._payload_format = payload_format_parse(query.get("payload"), default=PAYLOAD_FORMATS[0])
            self._echo = flag(query.get("echo"))
        except ApplicationError as error:
            runtime.stats.incr(f"refusals_{error.code}")
            await self.accept()
            await self._send_close(error.close_code, {"control": "close", "code": error.close_code, **error.as_dict()})
            return
        self.outbox = new_outbox(runtime=runtime, send=self.base_send, write=self._write, on_overflow=self._on_overflow)
        self._open = True
        runtime.hub.socket_opened(self.close_soon)
        hold_close_reply(self.base_send, self._release)
        await self.accept()
        self._accepted = True
        runtime.stats.incr("connections_opened_multiplexed")
        self.send_control(
            {
                "control": "connected",
                "clientId": self.client_id,
                "maxChannels": runtime.server.max_channels_per_connection,
            }
        )
        self.outbox.start()

    async def receive(self, text_data=None, bytes_data=None):
        """Answer one control frame: subscribe, unsubscribe or publish."""
        if not self._open or self._closing is not None:
            return
        server = self.runtime.server
        # A publish frame holds a payload of up to max_message_size, escaped as JSON.
        if self.frame_refused(text_data, 6 * server.max_message_size + 65_536):
            return
        reply: dict = {}
        try:
            frame = json_parse(text_data)
            if not isinstance(frame, dict):
                raise bad_request('A frame must be a JSON object such as {"subscribe": "<channel>"}.')
            if "ref" in frame:
                reply["ref"] = _ref(frame["ref"])
            operations = [operation for operation in OPERATIONS if operation in frame]
            if len(operations) != 1:
                raise bad_request(
                    'A frame must hold exactly one of "subscribe", "unsubscribe" or "publish", '
                    'such as {"subscribe": "<channel>", "ref": 1}.'
                )
            operation = operations[0]
            reference = _reference(frame[operation], operation)
        except ApplicationError as error:
            self.runtime.stats.incr("frames_refused_bad_control")
            self.send_error(error, reply)
            return
        if operation == "subscribe":
            await self._subscribe(reference, frame, reply)
        elif operation == "unsubscribe":
            await self._unsubscribe(reference, reply)
        else:
            await self._publish_frame(reference, frame, reply)

    async def _subscribe(self, reference: str, frame: dict, reply: dict) -> None:
        runtime = self.runtime
        try:
            since, token = _optional_text(frame, "since"), _optional_text(frame, "token")
            channel = await runtime.registry.resolve(reference)
            if channel.id in self.joined:
                raise already_subscribed(channel.id)
            limit = runtime.server.max_channels_per_connection
            if len(self.joined) >= limit:
                raise too_many_channels(limit)
            connection = await connection_open(
                reference=channel.id,
                transport="WS",
                client_id=self.client_id,
                since=since,
                echo=self._echo,
                token=token,
                payload_format=self._payload_format,
                headers=self.scope.get("headers"),
                multiplexed=True,
                runtime=runtime,
            )
        except ApplicationError as error:
            runtime.stats.incr(f"refusals_{error.code}")
            self.send_error(error, {"channel": reference, **reply})
            return
        if not self._open or channel.id in self.joined:
            # Closed meanwhile, or subscribed by a frame handled while this one waited.
            await connection_close(connection=connection, subscription=None, runtime=runtime)
            return
        self.client_id = connection.client_id
        subscription = subscription_for(
            connection,
            self.outbox,
            encode=ENCODERS[connection.payload_format],
            encode_control=partial(encode_channel_control, channel.id),
            on_close=partial(self._channel_closed, channel.id),
            transport="WS",
        )
        hooks = runtime.hooks.matching(ON_PUBLISH, channel) if runtime.hooks.on_publish else ()
        self.joined[channel.id] = _Joined(connection, subscription, hooks)
        self._ids_by_name[channel.name] = channel.id
        answer = {"control": "subscribed", "channel": channel.id, "name": channel.name, "clientId": self.client_id}

        def subscribed(position: Position) -> None:
            self.send_control({**answer, "position": str(position), **reply})

        try:
            await subscription_start(
                connection=connection,
                subscription=subscription,
                from_current=True,
                on_position=subscribed,
                runtime=runtime,
            )
        except ApplicationError as error:
            if self.joined.get(channel.id) is not None and self.joined[channel.id].subscription is subscription:
                del self.joined[channel.id]
            subscription.stop()
            await connection_close(connection=connection, subscription=subscription, runtime=runtime)
            self.send_error(error, {"channel": reference, **reply})

    async def _unsubscribe(self, reference: str, reply: dict) -> None:
        joined = self._pop(reference)
        if joined is None:
            error = not_subscribed(reference)
            self.send_error(error, reply)
            return
        await self._leave(joined)
        self.send_control({"control": "unsubscribed", "channel": joined.connection.channel.id, **reply})

    async def _publish_frame(self, reference: str, frame: dict, reply: dict) -> None:
        joined = self._find(reference)
        try:
            if joined is None:
                raise not_subscribed(reference)
            connection = joined.connection
            if connection.channel.type != "WS":
                raise read_only_channel(connection.channel.id)
            if not connection.can_publish:
                raise publish_forbidden(connection.channel.id)
            if "payload" not in frame:
                raise bad_request('A publish frame needs a "payload": any JSON value.', field="payload")
            payload, payload_kind = payload_of(frame["payload"])
        except ApplicationError as error:
            self.runtime.stats.incr("frames_refused_publish")
            self.send_error(error, reply)
            return
        reply = {"channel": connection.channel.id, **reply}
        if self.rate_limited(reply):
            return
        # What on_publish hooks see as the frame: as a one-channel connection in this payload format would send it.
        frame_text = payload if connection.payload_format == TEXT else json_text(frame["payload"])
        await self.publish_soon(connection, joined.publish_hooks, frame_text, (payload, payload_kind), reply)

    def _channel_closed(self, channel_id: str, code: int, body: dict) -> None:
        """The hub ends one channel (deleted, this clientId replaced there), or all (shutting down)."""
        if code == CLOSE_GOING_AWAY:
            self.close_soon(code, body)
            return
        joined = self.joined.get(channel_id)
        if joined is None:
            return
        del self.joined[channel_id]
        ended = {key: value for key, value in body.items() if key != "control"}
        self.send_control({"control": "unsubscribed", "channel": channel_id, **ended})
        task = asyncio.ensure_future(self._leave(joined))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    def _find(self, reference: str) -> _Joined | None:
        return self.joined.get(reference) or self.joined.get(self._ids_by_name.get(reference, ""))

    def _pop(self, reference: str) -> _Joined | None:
        joined = self._find(reference)
        if joined is not None:
            del self.joined[joined.connection.channel.id]
        return joined

    async def _leave(self, joined: _Joined) -> None:
        joined.subscription.stop()
        await connection_close(connection=joined.connection, subscription=joined.subscription, runtime=self.runtime)

    def _on_overflow(self) -> None:
        self.cut_off_slow(f"{self.client_id} on {len(self.joined)} channel(s)")

    def _detach(self) -> tuple:
        """Take the connection's channels off the consumer."""
        if self._open:
            self.runtime.hub.socket_closed(self.close_soon)
        joined, self.joined, self._open = list(self.joined.values()), {}, False
        return (joined,)

    async def _give_back(self, joined: list[_Joined]) -> None:
        if self.outbox is not None:
            await self.outbox.stop()
        for each in joined:
            await connection_close(connection=each.connection, subscription=each.subscription, runtime=self.runtime)


def _ref(value: object) -> object:
    """A frame's ``ref``: a string or a number the answer carries back."""
    if isinstance(value, bool) or not isinstance(value, str | int | float) or len(str(value)) > MAX_REF_LENGTH:
        raise bad_request(f"ref must be a string or a number of at most {MAX_REF_LENGTH} characters.", field="ref")
    return value


def _reference(value: object, operation: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_REFERENCE_LENGTH:
        raise bad_request(f'"{operation}" must name a channel: its id or name, as a string.', field=operation)
    return value


def _optional_text(frame: dict, key: str) -> str | None:
    value = frame.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and key == "since":
        return str(value)
    if value is not None and not isinstance(value, str):
        raise bad_request(f"{key} must be a string.", field=key)
    return value
