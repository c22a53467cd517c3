"""The message envelope and stream positions.

Every message a client receives is the Go service's envelope
``{"id", "channelId", "clientId", "payload", "createdAt"}`` plus ``offset`` and ``epoch``.
A payload is kept as text with its kind: ``text`` (a string, published as is) or ``json`` (the
JSON text of a JSON value that was published). Subscribers in the ``text`` payload format (the
Go service's, and the default) receive every payload as a string; those in the ``json`` format
receive a ``json`` payload as the JSON value itself.
A position ``"<epoch>-<offset>"`` names a message in one incarnation of a channel's history:
when history is lost (an in-memory instance restarted), the epoch changes and old positions
are recognised as stale instead of pointing at unrelated messages.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from .errors import bad_request

# ASCII digits only: "\d" and str.isdigit() also accept other scripts' digits (and "²", which int() refuses).
_OFFSET_DIGITS = "[0-9]{1,18}"
_EPOCH = "[A-Za-z0-9]{1,32}"
_UUID = "[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
_OFFSET = re.compile(rf"^{_OFFSET_DIGITS}\Z")
_POSITION = re.compile(rf"^(?P<epoch>{_EPOCH})-(?P<offset>{_OFFSET_DIGITS})\Z")
_MESSAGE_ID = re.compile(rf"^{_UUID}\Z")
# What ``position_parse`` accepts, in the OpenAPI document's form (JSON Schema, where "$" ends the
# text); empty is no position.
POSITION_JSON_PATTERN = f"^({_EPOCH}-{_OFFSET_DIGITS}|{_OFFSET_DIGITS}|{_UUID})?$"


# A payload's kind, and a subscriber's payload format: the same two words.
TEXT = "text"
JSON = "json"
PAYLOAD_FORMATS = (TEXT, JSON)


def payload_format_parse(raw: str | None, *, default: str) -> str:
    """The ``?payload=`` of a subscribe or history request: ``text`` or ``json``; absent, ``default``
    (the channel's ``payload_format``); anything else is a 400 / 4400 naming the field."""
    if raw is None:
        return default
    if raw not in PAYLOAD_FORMATS:
        raise bad_request(
            'payload must be "text" (every payload as a string, the default) or "json" (payloads published '
            "as JSON values delivered as JSON values)",
            field="payload",
        )
    return raw


def _compact(value: dict) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def utc_timestamp(moment: datetime | None = None) -> str:
    """RFC 3339 UTC timestamp with millisecond precision, as the Go service wrote it."""
    moment = moment or datetime.now(UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Message:
    """One published message, stamped by the history store."""

    id: str
    channel_id: str
    client_id: str
    payload: str
    created_at: str
    offset: int | None = None
    epoch: str | None = None
    published_at: float | None = None  # monotonic-free wall clock (time.time()) for latency metrics
    payload_kind: str = TEXT  # JSON: ``payload`` is the JSON text of a published JSON value

    @property
    def position(self) -> str | None:
        """The resume position ``"<epoch>-<offset>"``, or None for a message outside history."""
        if self.offset is None or self.epoch is None:
            return None
        return f"{self.epoch}-{self.offset}"

    def as_wire(self) -> dict:
        """The JSON object clients receive (the ``text`` payload format: the payload is a string)."""
        wire = {
            "id": self.id,
            "channelId": self.channel_id,
            "clientId": self.client_id,
            "payload": self.payload,
            "createdAt": self.created_at,
        }
        if self.offset is not None:
            wire["offset"] = self.offset
            wire["epoch"] = self.epoch
        return wire

    def as_wire_with_values(self) -> dict:
        """The JSON object clients in the ``json`` payload format receive: a ``json`` payload is its value."""
        wire = self.as_wire()
        if self.payload_kind == JSON:
            wire["payload"] = json.loads(self.payload)
        return wire

    def to_event(self) -> dict:
        """The body of a ``realtime.message`` channel-layer event."""
        event = {"type": "realtime.message", "channel_id": self.channel_id, "message": self.layer_wire()}
        if self.published_at is not None:
            event["published_at"] = self.published_at
        return event

    def layer_wire(self) -> dict:
        """The wire object as the channel layer carries it: with ``payloadKind`` for a ``json`` payload
        (absent: ``text``, as in events sent before payload kinds existed)."""
        wire = self.as_wire()
        if self.payload_kind != TEXT:
            wire["payloadKind"] = self.payload_kind
        return wire

    def to_json(self) -> str:
        """The wire object as compact JSON text (one WebSocket frame, one SSE ``data`` line)."""
        return json.dumps(self.as_wire(), ensure_ascii=False, separators=(",", ":"))

    def to_json_with_values(self) -> str:
        """``as_wire_with_values`` as compact JSON text (the ``json`` payload format's frame)."""
        if self.payload_kind != JSON:
            return _compact(self.as_wire())
        # The payload already is the JSON text of its value: it is written in place, not parsed and
        # written again for every frame.
        wire = self.as_wire()
        del wire["payload"]
        head = _compact({key: wire.pop(key) for key in ("id", "channelId", "clientId")})
        return f'{head[:-1]},"payload":{self.payload},{_compact(wire)[1:]}'

    @classmethod
    def from_wire(cls, wire: dict, *, published_at: float | None = None) -> Message:
        """Rebuild a message from its wire object (as carried over the channel layer)."""
        return cls(
            id=wire["id"],
            channel_id=wire["channelId"],
            client_id=wire["clientId"],
            payload=wire["payload"],
            created_at=wire["createdAt"],
            offset=wire.get("offset"),
            epoch=wire.get("epoch"),
            published_at=published_at,
            # Only JSON is ever read as anything but text, so another value needs no check here.
            payload_kind=wire.get("payloadKind", TEXT),
        )


def layer_event(messages: Sequence[Message]) -> dict:
    """The channel-layer event carrying a run of one channel's messages, oldest first.

    One message travels as ``realtime.message`` (the event raw ``group_send`` callers send too);
    several travel as one ``realtime.messages`` event, so the layer carries them in one send and
    a hub fans them out in one turn.
    """
    if len(messages) == 1:
        return messages[0].to_event()
    return {
        "type": "realtime.messages",
        "channel_id": messages[0].channel_id,
        "messages": [message.layer_wire() for message in messages],
        "published_at": [message.published_at for message in messages],
    }


@dataclass(frozen=True, slots=True)
class Position:
    """Where a client wants to resume: after ``offset`` in ``epoch``, or after message ``message_id``."""

    epoch: str | None = None
    offset: int | None = None
    message_id: str | None = None

    def __str__(self) -> str:
        if self.message_id is not None:
            return self.message_id
        return f"{self.epoch}-{self.offset}" if self.epoch else str(self.offset)


def position_parse(raw: str | None) -> Position | None:
    """Parse ``since`` / ``Last-Event-ID``: ``<epoch>-<offset>``, a bare offset, or a message id."""
    if raw is None or raw == "":
        return None
    raw = raw.strip()
    if _OFFSET.match(raw):
        return Position(offset=int(raw))
    match = _POSITION.match(raw)
    if match:
        return Position(epoch=match["epoch"], offset=int(match["offset"]))
    if _MESSAGE_ID.match(raw):
        # Message ids are handed out in the canonical UUID form; accept any spelling of one.
        return Position(message_id=str(uuid.UUID(raw)))
    raise bad_request(
        "since must be a position such as 'k3x9a-42' (the epoch and offset of the last message "
        "received), a bare offset, or a message id",
        field="since",
    )
