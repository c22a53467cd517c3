"""Business logic for managing channels at runtime: create, delete, disconnect everyone.

Called by the HTTP API and the admin. Closing connections goes through the channel layer
(a ``realtime.close`` event to the channel's group), so every instance closes its own.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from channels.db import database_sync_to_async
from django.db import IntegrityError, transaction

from ..channel import ChannelInfo
from ..errors import ApplicationError, bad_request, channel_not_found
from ..identity import IDENTIFIER_PATTERN, IDENTIFIER_RULE, Collision
from ..models import Channel, lock_identities
from ..naming import channel_group
from .runtime import Runtime

logger = logging.getLogger(__name__)

CLOSE_CHANNEL_DELETED = 4410
CLOSE_DISCONNECTED = 4000
MAX_HISTORY_SIZE = 10_000
MAX_HISTORY_TTL = 7 * 24 * 3600


@dataclass(frozen=True)
class ChannelDraft:
    """A validated request to create a channel; its fields are the model's (``id`` is ``public_id``)."""

    id: str
    type: str
    max_connections: int
    name: str
    history_size: int
    history_ttl: int
    private: bool


def channel_draft_parse(body: object, *, default_history_size: int, default_history_ttl: int) -> ChannelDraft:
    """Validate the Go service's create body ``{"id", "type", "maxOfChannelConnections"}`` (+ options)."""
    if not isinstance(body, dict):
        raise bad_request('The body must be a JSON object such as {"id": "news", "type": "SSE"}.')
    known = {"id", "type", "maxOfChannelConnections", "name", "historySize", "historyTtl", "private"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise bad_request(f"Unknown field(s) {', '.join(unknown)}; known fields are {', '.join(sorted(known))}.")
    channel_id = body.get("id")
    if not isinstance(channel_id, str) or not IDENTIFIER_PATTERN.match(channel_id):
        raise bad_request(f"id must be {IDENTIFIER_RULE}.", field="id")
    name = body.get("name", channel_id)
    if not isinstance(name, str) or not IDENTIFIER_PATTERN.match(name):
        raise bad_request(f"name must be {IDENTIFIER_RULE}.", field="name")
    channel_type = body.get("type")
    if channel_type not in ("WS", "SSE"):
        raise bad_request('type must be "WS" or "SSE".', field="type")
    max_connections = _integer(body, "maxOfChannelConnections", 100, minimum=1, maximum=10_000_000)
    history_size = _integer(body, "historySize", default_history_size, minimum=0, maximum=MAX_HISTORY_SIZE)
    history_ttl = _integer(body, "historyTtl", default_history_ttl, minimum=1, maximum=MAX_HISTORY_TTL)
    private = body.get("private", False)
    if not isinstance(private, bool):
        raise bad_request("private must be true or false.", field="private")
    return ChannelDraft(channel_id, channel_type, max_connections, name, history_size, history_ttl, private)


def _integer(body: dict, field: str, default: int, *, minimum: int, maximum: int) -> int:
    value = body.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise bad_request(f"{field} must be a whole number from {minimum} to {maximum}.", field=field)
    return value


def _create_row(draft: ChannelDraft, source: str) -> ChannelInfo:
    fields = asdict(draft)
    row = Channel(public_id=fields.pop("id"), source=source, **fields)
    try:
        with transaction.atomic():
            lock_identities()
            collisions = row.identity_collisions()
            if collisions:
                raise _identity_taken(collisions)
            row.save()
    except IntegrityError as exc:
        # Only a writer that skips lock_identities (a shell, a script) can get here.
        raise ApplicationError(
            "channel_exists",
            f"A channel with the id {draft.id!r} or the name {draft.name!r} already exists.",
            status=409,
        ) from exc
    return ChannelInfo.from_model(row)


def _identity_taken(collisions: list[Collision]) -> ApplicationError:
    """409 ``channel_exists``: the id or name is already another channel's id or name (``channel`` is its id)."""
    first = collisions[0]
    return ApplicationError(
        "channel_exists",
        " ".join(collision.message for collision in collisions),
        status=409,
        extra={"field": first.field, "channel": first.other.id},
    )


async def channel_create(*, draft: ChannelDraft, source: str = Channel.Source.API) -> ChannelInfo:
    """Persist a new channel; it is usable at once (the registry cache is invalidated on save)."""
    channel = await database_sync_to_async(_create_row)(draft, source)
    logger.info("channel %s (%s) created through the %s", channel.id, channel.type, source)
    return channel


def _delete_row(reference: str) -> ChannelInfo:
    with transaction.atomic():
        row = (
            Channel.objects.select_for_update().filter(public_id=reference).first()
            or Channel.objects.select_for_update().filter(name=reference).first()
        )
        if row is None:
            raise channel_not_found(reference)
        if row.source == Channel.Source.YAML:
            raise ApplicationError(
                "channel_declared_in_yaml",
                f"Channel {row.public_id!r} is declared in the YAML file: remove it there and run "
                "sync_channels --prune.",
                status=409,
            )
        info = ChannelInfo.from_model(row)
        row.delete()
    return info


async def channel_delete(*, reference: str, runtime: Runtime) -> ChannelInfo:
    """Remove an API- or admin-created channel and close its connections on every instance (4410)."""
    channel = await database_sync_to_async(_delete_row)(reference)
    await channel_disconnect_all(
        channel_id=channel.id,
        code=CLOSE_CHANNEL_DELETED,
        error="channel_deleted",
        message=f"Channel {channel.id!r} was deleted.",
        runtime=runtime,
    )
    await runtime.history.forget(channel.id)
    logger.info("channel %s deleted", channel.id)
    return channel


async def channel_disconnect_all(
    *,
    channel_id: str,
    code: int = CLOSE_DISCONNECTED,
    error: str = "disconnected",
    message: str = "The server closed this connection; reconnect to resume.",
    runtime: Runtime,
) -> None:
    """Close every connection to a channel, on every instance, with ``code``."""
    await runtime.layer.group_send(
        channel_group(channel_id),
        {"type": "realtime.close", "channel_id": channel_id, "code": code, "error": error, "message": message},
    )
