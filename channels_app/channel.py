"""A channel as the realtime path sees it, and the one declaration of a channel's fields.

Each field of ``ChannelInfo`` carries a ``ChannelField``: its YAML key, model field, API keys,
kind, default, bounds and doc. The YAML key table (config.py), the model's defaults and bounds,
``from_model``, the API's create body and description, the YAML sync and the OpenAPI schema are
all derived from it. No Django import: ``config.py`` (imported by the settings) uses it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The kinds of field, and the Python type each holds.
KIND_TYPES = {"identifier": str, "choice": str, "int": int, "bool": bool}
_SCHEMA = "channel_field"


@dataclass(frozen=True)
class ChannelField:
    """One field of a channel: where the YAML file, the model and the API keep it, and its rules.

    ``default`` is the model's, and the file's and the create body's unless ``inherited`` (left
    out, it takes the server section's key of its YAML name) or ``defaults_to`` (left out of a
    create body, it takes that field's value). ``maximum`` bounds the create body only: the file
    and the admin are trusted.
    """

    kind: str  # "identifier", "choice", "int" or "bool"
    doc: str
    model: str  # the Channel model's field ("pk": the row's primary key)
    yaml: str | None = None  # its key under channels.<name>
    api: str | None = None  # its key in the create body (POST /api/v1/channels)
    described_as: tuple[str, ...] = ()  # its keys in the API's description of a channel
    preflight: bool = False  # described in the preflight answer (?upgrade=0) too
    go_body: bool = False  # one of the Go service's create body fields, which a ChannelDraft takes first
    default: Any = None
    required: bool = False
    inherited: bool = False
    defaults_to: str | None = None
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    attr: str = ""  # the ChannelInfo attribute, filled in from the declaration


def _declared(field: ChannelField, *, optional: bool = False) -> Any:
    """A ``ChannelInfo`` field declared by ``field``; an ``optional`` one defaults to the field's default."""
    if optional:
        return dataclasses.field(default=field.default, metadata={_SCHEMA: field})
    return dataclasses.field(metadata={_SCHEMA: field})


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """What the realtime path needs to know about a channel, detached from the ORM."""

    id: str = _declared(
        ChannelField(
            "identifier",
            "Public identifier clients use in URLs.",
            model="public_id",
            yaml="id",
            api="id",
            described_as=("id",),
            preflight=True,
            go_body=True,
            required=True,
        )
    )
    # In the YAML file a channel's name is its key under ``channels``.
    name: str = _declared(
        ChannelField(
            "identifier",
            "The channel's name, which clients may use in URLs instead of its id.",
            model="name",
            api="name",
            described_as=("name",),
            preflight=True,
            defaults_to="id",
        )
    )
    type: str = _declared(
        ChannelField(
            "choice",
            "`WS` (WebSocket, two-way) or `SSE` (Server-Sent Events).",
            model="type",
            yaml="type",
            api="type",
            described_as=("type",),
            preflight=True,
            go_body=True,
            required=True,
            choices=("WS", "SSE"),
        )
    )
    max_connections: int = _declared(
        ChannelField(
            "int",
            "Live connections the channel accepts.",
            model="max_connections",
            yaml="max_of_channel_connections",
            api="maxOfChannelConnections",
            described_as=("max", "maxOfChannelConnections"),
            preflight=True,
            go_body=True,
            default=100,
            minimum=1,
            maximum=10_000_000,
        )
    )
    history_size: int = _declared(
        ChannelField(
            "int",
            "Recent messages kept for resume (default: `server.history_size`).",
            model="history_size",
            yaml="history_size",
            api="historySize",
            described_as=("historySize",),
            default=100,
            inherited=True,
            minimum=0,
            maximum=10_000,
        )
    )
    history_ttl: int = _declared(
        ChannelField(
            "int",
            "Seconds messages stay in history (default: `server.history_ttl`).",
            model="history_ttl",
            yaml="history_ttl",
            api="historyTtl",
            described_as=("historyTtl",),
            default=3600,
            inherited=True,
            minimum=1,
            maximum=7 * 24 * 3600,
        )
    )
    private: bool = _declared(
        ChannelField(
            "bool",
            "Subscribers need a signed token (`?token=`).",
            model="private",
            yaml="private",
            api="private",
            described_as=("private",),
            preflight=True,
            default=False,
        ),
        optional=True,
    )
    payload_format: str = _declared(
        ChannelField(
            "choice",
            "How subscribers receive payloads published as JSON values: `text` (as their JSON text in a "
            "string, the Go service's envelope) or `json` (as the JSON values); a connection may choose "
            "with `?payload=`.",
            model="payload_format",
            yaml="payload_format",
            api="payloadFormat",
            described_as=("payloadFormat",),
            preflight=True,
            default="text",
            choices=("text", "json"),
        ),
        optional=True,
    )
    presence: bool = _declared(
        ChannelField(
            "bool",
            "Track who is connected: `GET /api/v1/channels/<channel>/presence` lists them, and subscribers "
            "receive `join` and `leave` as they come and go.",
            model="presence",
            yaml="presence",
            api="presence",
            described_as=("presence",),
            preflight=True,
            default=False,
        ),
        optional=True,
    )
    source: str = _declared(
        ChannelField(
            "choice",
            "Where the channel was declared: the YAML file, the HTTP API or the admin.",
            model="source",
            described_as=("source",),
            default="admin",
            choices=("yaml", "api", "admin"),
        ),
        optional=True,
    )
    # The registry row's primary key: a channel deleted and created again under the same id is
    # another incarnation, whose history starts over in a new epoch.
    incarnation: int = _declared(
        ChannelField("int", "The registry row's primary key.", model="pk", default=0), optional=True
    )

    @classmethod
    def from_model(cls, channel) -> ChannelInfo:
        """Copy the fields of a ``Channel`` row."""
        return cls(**{field.attr: getattr(channel, field.model) for field in CHANNEL_FIELDS.values()})


# Every field, by ChannelInfo attribute, in declaration order.
CHANNEL_FIELDS: dict[str, ChannelField] = {
    field.name: dataclasses.replace(field.metadata[_SCHEMA], attr=field.name)
    for field in dataclasses.fields(ChannelInfo)
}
# The fields a create body (POST /api/v1/channels) may set, in the order they are checked.
CREATE_FIELDS = tuple(field for field in CHANNEL_FIELDS.values() if field.api)
# The live connection count is described just before the limit it is counted against.
_COUNTED_AGAINST = "max_connections"


def _description(*, preflight: bool) -> tuple[tuple[str, ChannelField | None], ...]:
    keys: list[tuple[str, ChannelField | None]] = []
    for field in CHANNEL_FIELDS.values():
        if preflight and not field.preflight:
            continue
        if field.attr == _COUNTED_AGAINST:
            keys.append(("connections", None))
        keys.extend((key, field) for key in field.described_as)
    return tuple(keys)


# The keys of the API's description of a channel, in order, each with the field it shows
# (None: the live connection count); the preflight answer shows fewer.
DESCRIPTION = _description(preflight=False)
PREFLIGHT_DESCRIPTION = _description(preflight=True)


def model_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` keyed by ChannelInfo attribute, keyed by the model's field names instead."""
    return {CHANNEL_FIELDS[attr].model: value for attr, value in values.items()}
