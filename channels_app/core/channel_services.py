"""Business logic for managing channels at runtime: create, delete, disconnect everyone.

Called by the HTTP API and the admin. Closing connections goes through the channel layer
(a ``realtime.close`` event to the channel's group), so every instance closes its own.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, make_dataclass

from channels.db import database_sync_to_async
from django.db import IntegrityError, transaction

from ..channel import CREATE_FIELDS, KIND_TYPES, ChannelField, ChannelInfo, model_values
from ..config import ServerConfig
from ..errors import ApplicationError, bad_request, channel_not_found
from ..identity import IDENTIFIER_PATTERN, IDENTIFIER_RULE, Collision
from ..models import Channel, lock_identities
from ..naming import channel_group
from .runtime import Runtime

logger = logging.getLogger(__name__)

CLOSE_CHANNEL_DELETED = 4410
CLOSE_DISCONNECTED = 4000
# A validated request to create a channel: the fields a create body sets, by ChannelInfo
# attribute (``id`` is the model's ``public_id``), the Go service's body fields first.
ChannelDraft = make_dataclass(
    "ChannelDraft",
    [(field.attr, KIND_TYPES[field.kind]) for field in sorted(CREATE_FIELDS, key=lambda field: not field.go_body)],
    frozen=True,
    namespace={"__doc__": "A validated request to create a channel.", "__module__": __name__},
)


def channel_draft_parse(body: object, *, server: ServerConfig) -> ChannelDraft:
    """Validate the Go service's create body ``{"id", "type", "maxOfChannelConnections"}`` (+ options);
    a history setting left out is the server's."""
    if not isinstance(body, dict):
        raise bad_request('The body must be a JSON object such as {"id": "news", "type": "SSE"}.')
    known = {field.api for field in CREATE_FIELDS}
    unknown = sorted(set(body) - known)
    if unknown:
        raise bad_request(f"Unknown field(s) {', '.join(unknown)}; known fields are {', '.join(sorted(known))}.")
    values: dict = {}
    for field in CREATE_FIELDS:
        if field.defaults_to:
            default = values[field.defaults_to]
        else:
            default = getattr(server, field.yaml) if field.inherited else field.default
        values[field.attr] = _field_value(field, body.get(field.api, default))
    return ChannelDraft(**values)


def _field_value(field: ChannelField, value: object) -> object:
    """``value`` if it is valid for ``field``; else a 400 naming the field and what it must be."""
    if field.kind == "identifier":
        valid, rule = isinstance(value, str) and IDENTIFIER_PATTERN.match(value), IDENTIFIER_RULE
    elif field.kind == "choice":
        valid, rule = value in field.choices, " or ".join(f'"{choice}"' for choice in field.choices)
    elif field.kind == "int":
        in_range = isinstance(value, int) and not isinstance(value, bool) and field.minimum <= value <= field.maximum
        valid, rule = in_range, f"a whole number from {field.minimum} to {field.maximum}"
    else:
        valid, rule = isinstance(value, bool), "true or false"
    if not valid:
        raise bad_request(f"{field.api} must be {rule}.", field=field.api)
    return value


def _create_row(draft: ChannelDraft, source: str) -> ChannelInfo:
    row = Channel(source=source, **model_values(asdict(draft)))
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
