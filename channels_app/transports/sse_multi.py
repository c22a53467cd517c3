"""The multiplexed event stream: ``GET /api/v1/events?channel=<a>&channel=<b>``.

One stream carries the messages of every channel it lists, SSE or WS channels alike (read-only).
Each channel is admitted as if it were opened alone (existence, token, slots, clientId); one refusal
refuses the whole stream, naming the channel. Every event id holds every channel's position
(``multiplexing.stream_id``), so the browser's ``Last-Event-ID`` resumes them all exactly.
"""

from __future__ import annotations

import logging

from ..core.runtime import Runtime
from ..core.services import Connection, channel_describe, connection_close, connection_open
from ..errors import ApplicationError
from .multiplexing import channel_references, connections_close, refusal_naming, stream_id_parse
from .origins import header
from .sse import EventStream, send_json, stream_cors
from .subscribing import flag, query_lists

logger = logging.getLogger(__name__)


class EventsEndpoint:
    """ASGI app for ``GET /api/v1/events``: one event stream of several channels, or its preflight."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    async def __call__(self, scope, receive, send):
        """Answer a preflight, refuse with JSON naming the channel, or stream until the client leaves."""
        runtime = self.runtime
        cors = await stream_cors(scope, send, runtime)
        if cors is None:
            return
        lists = query_lists(scope)
        query = {key: values[-1] for key, values in lists.items()}
        try:
            references = channel_references(lists.get("channel", []), runtime.server.max_channels_per_connection)
            if query.get("upgrade") == "0":
                await send_json(send, 200, await self._describe(references, query), cors)
                return
            # The header (sent by a reconnecting EventSource) is newer than an id written into the URL.
            positions = stream_id_parse(header(scope, b"last-event-id") or query.get("lastEventId"))
            connections = await self._open(references, positions, lists, query, scope)
        except ApplicationError as error:
            runtime.stats.incr(f"refusals_{error.code}")
            logger.info("refused a multiplexed SSE subscriber: %s (HTTP %s)", error.code, error.status)
            await send_json(send, error.status, error.as_dict(), cors)
            return
        stream = EventStream(receive, send, connections, cors, runtime, multiplexed=True)
        try:
            await stream.run()
        finally:
            # A refusal while subscribing leaves the later channels without a subscription.
            subscriptions = stream.subscriptions + [None] * (len(connections) - len(stream.subscriptions))
            for connection, subscription in zip(connections, subscriptions, strict=True):
                await connection_close(connection=connection, subscription=subscription, runtime=runtime)

    async def _open(self, references, positions, lists, query, scope) -> list[Connection]:
        """Admit the stream on every channel, or on none: the slots taken before a refusal are given back."""
        runtime = self.runtime
        connections: list[Connection] = []
        client_id = query.get("clientId")
        for reference in references:
            try:
                channel = await runtime.registry.resolve(reference)
                if any(connection.channel.id == channel.id for connection in connections):
                    continue  # the same channel by its id and by its name
                connection = await connection_open(
                    reference=channel.id,
                    transport="SSE",
                    client_id=client_id,
                    since=positions.get(channel.id),
                    echo=flag(query.get("echo")),
                    token=lists.get("token"),
                    payload_format=query.get("payload"),
                    headers=scope.get("headers"),
                    multiplexed=True,
                    runtime=runtime,
                )
            except ApplicationError as error:
                await connections_close(connections, runtime)
                raise refusal_naming(error, reference) from None
            # A clientId the first channel chose (or its token named) is the stream's on every channel.
            client_id = connection.client_id
            connections.append(connection)
        return connections

    async def _describe(self, references, query) -> dict:
        """The preflight: every channel as a subscribe would find it; the first refusal, naming its channel."""
        channels = []
        for reference in references:
            try:
                channels.append(
                    await channel_describe(reference=reference, client_id=query.get("clientId"), runtime=self.runtime)
                )
            except ApplicationError as error:
                raise refusal_naming(error, reference) from None
        return {"channels": channels}
