"""Business logic of the realtime path: publishing, opening and closing subscriptions.

Consumers, views, admin actions and commands call these; they raise ``ApplicationError`` for
anything refused and never touch the ORM synchronously.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..channel import ChannelInfo
from ..errors import (
    ApplicationError,
    bad_request,
    channel_full,
    client_id_replaced,
    client_id_taken,
    shutting_down,
    wrong_transport,
)
from ..messages import PAYLOAD_FORMATS, TEXT, Message, Position, payload_format_parse, position_parse, utc_timestamp
from ..naming import channel_group, client_id_parse
from ..state.history import Draft
from ..state.idempotency import idempotency_key_parse
from ..state.presence import Member, new_holder
from ..tokens import TokenClaims, token_forbidden, token_required, token_verify
from .hook_calls import connect_hooks_run, disconnect_hooks_start
from .presence_events import JOIN, LEAVE
from .publish_queue import PublishQueue, Receipt
from .runtime import Runtime
from .selectors import channel_as_dict
from .subscription import Subscription

logger = logging.getLogger(__name__)

# The members a new subscriber of a presence channel is told of on arrival (the rest: GET .../presence).
PRESENCE_SNAPSHOT_LIMIT = 1000


@dataclass(frozen=True)
class Connection:
    """A subscriber admitted to a channel: it holds one of the channel's connection slots."""

    channel: ChannelInfo
    client_id: str
    position: Position | None
    echo: bool
    can_publish: bool = True
    # This connection's hold on its slot: only it releases the slot, and a replace names it.
    holder: str = ""
    # How it receives payloads published as JSON values, and how its WebSocket frames are read:
    # ``?payload=``, else the channel's ``payload_format``.
    payload_format: str = TEXT
    transport: str = "WS"
    # The private channel's token, and what the on_connect hooks said about the subscriber (presence).
    token_claims: TokenClaims | None = None
    info: dict | None = None


def payload_too_large(size: int, limit: int) -> ApplicationError:
    """A message payload over ``server.max_message_size`` (413 / 1009)."""
    return ApplicationError(
        "payload_too_large",
        f"The payload is {size} bytes; the limit is {limit} bytes (server.max_message_size).",
        status=413,
        close_code=1009,
        extra={"limit": limit},
    )


async def message_publish(
    *, channel: ChannelInfo, payload: str, client_id: str, payload_kind: str = TEXT, runtime: Runtime
) -> Message:
    """Validate, stamp, record and fan out one message: the only way messages are published.

    ``payload`` is text; ``payload_kind`` says what it is: ``text`` (a string) or ``json`` (the JSON
    text of a JSON value, ``jsoncodec.payload_of``), delivered as the value to ``json`` subscribers."""
    receipt = await message_publish_receipt(
        channel=channel, payload=payload, client_id=client_id, payload_kind=payload_kind, runtime=runtime
    )
    return receipt.message


async def message_publish_receipt(
    *,
    channel: ChannelInfo,
    payload: str,
    client_id: str,
    idempotency_key: str | None = None,
    payload_kind: str = TEXT,
    runtime: Runtime,
) -> Receipt:
    """``message_publish``, with an optional ``Idempotency-Key`` (a retry gets the original message,
    never a second one), answering with the whole ``Receipt``."""
    if not isinstance(payload, str):
        raise bad_request("payload must be a string")
    if payload_kind not in PAYLOAD_FORMATS:
        raise ValueError(f"payload_kind {payload_kind!r}: use one of {', '.join(PAYLOAD_FORMATS)}")
    try:
        size = len(payload.encode("utf-8"))
    except UnicodeEncodeError as exc:
        # A JSON body can carry a lone surrogate ("\ud800"); it cannot be written to a WebSocket
        # or an event stream, so it would break delivery of this message to every subscriber.
        raise bad_request(
            f"payload is not valid Unicode text: it holds a lone surrogate at character {exc.start}",
            field="payload",
        ) from exc
    limit = runtime.server.max_message_size
    if size > limit:
        raise payload_too_large(size, limit)
    key = idempotency_key_parse(idempotency_key, payload=payload, payload_kind=payload_kind)
    # One run at a time per channel, in offset order: the hub drops a message that arrives after a
    # higher offset (docs/architecture.md, "Runs of publishes").
    queue = _publish_queue(runtime, channel.id)
    return await queue.submit(channel, Draft(payload, client_id, key, payload_kind=payload_kind), size=size)


def _publish_queue(runtime: Runtime, channel_id: str) -> PublishQueue:
    """The queue of a channel's publishes; it is forgotten once no publish waits in it."""
    queue = runtime.publish_queues.get(channel_id)
    if queue is None:
        queue = runtime.publish_queues[channel_id] = PublishQueue(runtime)
    return queue


async def connection_open(
    *,
    reference: str,
    transport: str,
    client_id: str | None,
    since: str | Position | None,
    echo: bool = False,
    token: str | Sequence[str] | None = None,
    payload_format: str | None = None,
    headers=None,
    multiplexed: bool = False,
    runtime: Runtime,
) -> Connection:
    """Admit a subscriber: validate the query, find the channel, check its token if the channel
    is private, ask the ``on_connect`` hooks, take a connection slot. ``payload_format`` is the
    ``?payload=`` asked for (None: the channel's); ``headers``, the request's (ASGI pairs), for the hooks.

    ``token`` may be several tokens (a multiplexed stream's), one of which must cover the channel.
    A ``multiplexed`` connection may follow channels of either type; it may publish only to WS
    channels, and only over a WebSocket."""
    if runtime.draining:
        raise shutting_down()
    position = since if isinstance(since, Position) else position_parse(since)
    channel = await runtime.registry.resolve(reference)
    if channel.type != transport and not multiplexed:
        raise wrong_transport(channel.id, channel.type)
    payload_format = payload_format_parse(payload_format, default=channel.payload_format)
    can_publish, claims, info = channel.type == transport == "WS" or not multiplexed, None, None
    if channel.private:
        claims = subscriber_authorize(channel_id=channel.id, token=token, client_id=client_id)
        client_id, can_publish, info = claims.client_id, can_publish and claims.can_publish, claims.info
    parsed_client_id = client_id_parse(client_id)
    if runtime.hooks.on_connect:
        # Before the slot is taken, so a slow hook holds none. A hook's info replaces the token's.
        hook_info = await connect_hooks_run(
            channel=channel,
            client_id=parsed_client_id,
            transport=transport,
            token_claims=claims,
            headers=headers,
            runtime=runtime,
        )
        if hook_info is not None:
            info = hook_info
    holder = new_holder()
    member = Member(parsed_client_id, transport, utc_timestamp(), info) if channel.presence else None
    replaced = await runtime.presence.acquire(
        channel, parsed_client_id, holder, replace=_replaces(runtime), member=member
    )
    if member is not None:
        runtime.presence_events.note(channel.id, JOIN, parsed_client_id, info)
    if runtime.http_hooks is not None and replaced is None:
        # A replacement continues the same member: no second member_added.
        await runtime.http_hooks.member_joined(runtime.presence, channel, parsed_client_id)
    runtime.stats.incr(f"connections_opened_{transport.lower()}")
    logger.info("%s subscriber %s joined channel %s", transport, parsed_client_id, channel.id)
    if replaced is not None:
        await _close_replaced(runtime, channel.id, parsed_client_id, replaced)
    return Connection(
        channel=channel,
        client_id=parsed_client_id,
        position=position,
        echo=echo,
        can_publish=can_publish,
        holder=holder,
        payload_format=payload_format,
        transport=transport,
        token_claims=claims,
        info=info,
    )


def _replaces(runtime: Runtime) -> bool:
    """Whether a connection takes the slot of a live one with its clientId (``server.duplicate_client_id``)."""
    return runtime.server.duplicate_client_id == "replace"


async def _close_replaced(runtime: Runtime, channel_id: str, client_id: str, holder: str) -> None:
    """Tell every instance to close the connection that held the slot (it may be on any of them)."""
    runtime.stats.incr("connections_replaced")
    logger.info("subscriber %s on channel %s replaced its previous connection", client_id, channel_id)
    try:
        await runtime.layer.group_send(
            channel_group(channel_id),
            {"type": "realtime.replaced", "channel_id": channel_id, "client_id": client_id, "holder": holder},
        )
    except Exception:
        # The new connection has the slot either way; the old one lives on until it ends by itself.
        logger.exception("could not ask the hubs to close the replaced connection of %s on %s", client_id, channel_id)


def subscriber_authorize(*, channel_id: str, token: str | Sequence[str] | None, client_id: str | None) -> TokenClaims:
    """A private channel's subscriber must bring a token for this channel (and this clientId); of
    several tokens, the first that covers the channel counts."""
    tokens = [token] if isinstance(token, str) else [each for each in token or () if each]
    if not tokens or not tokens[0]:
        raise token_required(channel_id)
    refusal = None
    for each in tokens:
        try:
            claims = token_verify(each, channel_id=channel_id)
            break
        except ApplicationError as error:
            refusal = refusal or error
    else:
        raise refusal
    if client_id is not None and client_id != claims.client_id:
        raise token_forbidden(
            f"The token was minted for clientId {claims.client_id!r}, not {client_id!r}: "
            "connect with that clientId, or without one."
        )
    return claims


def publish_forbidden(channel_id: str) -> ApplicationError:
    """A read-only subscriber of a private channel tried to publish (403 / 4403)."""
    return token_forbidden(
        f"Your token for channel {channel_id!r} is read-only: mint one with publish=true to send messages."
    )


async def subscription_start(
    *,
    connection: Connection,
    subscription: Subscription,
    from_current: bool = False,
    on_position: Callable[[Position], None] | None = None,
    runtime: Runtime,
) -> Position | None:
    """Join the hub, then replay what the client missed since its position, then go live.

    With ``from_current`` (a multiplexed connection), a connection without a position starts at the
    channel's newest one, read once the hub holds live messages for it. The position it starts from
    is returned, and given to ``on_position`` before the replay is queued (a multiplexed WebSocket
    answers the subscribe with it): resuming there later loses nothing and repeats nothing."""
    await runtime.hub.subscribe(subscription)
    if _replaces(runtime) and not await runtime.presence.holds(
        connection.channel.id, connection.client_id, connection.holder
    ):
        # Replaced before the hub joined the channel's group, so the hub missed the close.
        raise client_id_replaced(connection.channel.id, connection.client_id)
    if connection.channel.presence:
        # Who is already here, as joins, so that a subscriber's list starts complete.
        members, _ = await runtime.presence.members(connection.channel.id, limit=PRESENCE_SNAPSHOT_LIMIT)
        for member in members:
            subscription.send_control({"control": JOIN, "clientId": member.client_id, "info": member.info})
    position, replay = connection.position, None
    if from_current and position is None:
        position = await runtime.history.current(connection.channel)
    if position is not None:
        replay = await runtime.history.since(connection.channel, position)
        if replay.gap is not None:
            runtime.stats.incr("resume_gaps")
    if on_position is not None:
        on_position(position)
    subscription.replay(replay, position)
    return position


async def connection_close(*, connection: Connection, subscription: Subscription | None, runtime: Runtime) -> None:
    """Leave the hub and give the connection slot back, then start the ``on_disconnect`` hooks
    (nothing waits for them); called once per connection."""
    if subscription is not None:
        await runtime.hub.unsubscribe(subscription)
    released = await runtime.presence.release(connection.channel.id, connection.client_id, connection.holder)
    if released and connection.channel.presence:
        runtime.presence_events.note(connection.channel.id, LEAVE, connection.client_id, connection.info)
    if released and runtime.http_hooks is not None:
        await runtime.http_hooks.member_left(runtime.presence, connection.channel, connection.client_id)
    logger.info("subscriber %s left channel %s", connection.client_id, connection.channel.id)
    if runtime.hooks.on_disconnect:
        disconnect_hooks_start(
            channel=connection.channel,
            client_id=connection.client_id,
            transport=connection.transport,
            info=connection.info,
            runtime=runtime,
        )


async def channel_describe(*, reference: str, client_id: str | None = None, runtime: Runtime) -> dict:
    """The preflight answer: the channel and its live connections; refuses when a subscribe would be."""
    parsed_client_id = client_id_parse(client_id) if client_id is not None else None
    channel = await runtime.registry.resolve(reference)
    connections = await runtime.presence.count(channel.id)
    connected = parsed_client_id is not None and await runtime.presence.contains(channel.id, parsed_client_id)
    if connected and not _replaces(runtime):
        raise client_id_taken(channel.id, parsed_client_id)
    description = channel_as_dict(channel, connections, preflight=True)
    # A connection that replaces another takes its slot, so a full channel admits it.
    if connections >= channel.max_connections and not connected:
        error = channel_full(channel.id, channel.max_connections)
        error.extra.update({"channel": description})
        raise error
    return description
