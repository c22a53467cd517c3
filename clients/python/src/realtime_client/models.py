"""What the server sends back: messages, publish receipts, gaps, batch results, tokens and history pages."""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from .errors import RealtimeError


def _from_wire(cls: type, body: dict[str, Any], **given: Any) -> Any:
    """An instance of the dataclass ``cls`` from a wire object: each field not ``given`` is read from its key in
    camelCase (``channel_id`` from ``channelId``), which must be there unless the field has a default."""
    values = dict(given)
    for item in fields(cls):
        if item.name not in given:
            head, *rest = item.name.split("_")
            key = head + "".join(word.title() for word in rest)
            values[item.name] = body[key] if item.default is MISSING else body.get(key, item.default)
    return cls(**values)


def position_of(offset: int | None, epoch: str | None) -> str | None:
    """The resume position ``"<epoch>-<offset>"``, or None for a message outside history."""
    return f"{epoch}-{offset}" if offset is not None and epoch else None


@dataclass(frozen=True)
class Message:
    """One message as subscribers receive it. ``payload`` is a string (a JSON value pushed arrives as its JSON
    text), except with ``payload="json"``, where a payload published as a JSON value is that value."""

    id: str
    channel_id: str
    client_id: str
    payload: Any
    created_at: str
    offset: int | None = None
    epoch: str | None = None

    @property
    def position(self) -> str | None:
        """Where a subscriber resumes after this message (``since=``), or None for a raw ``group_send`` message."""
        return position_of(self.offset, self.epoch)

    def json(self) -> Any:
        """The payload parsed as JSON (for payloads pushed as JSON values); a payload that arrived as a JSON
        value (``payload="json"``) as it is."""
        return json.loads(self.payload) if isinstance(self.payload, str) else self.payload

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Message:
        """A message from the server's envelope ``{id, channelId, clientId, payload, createdAt, offset, epoch}``."""
        return _from_wire(cls, body)


@dataclass(frozen=True)
class Gap:
    """Messages since the subscriber's position are gone from the server's history (``reason`` says why);
    the messages that follow are the oldest it still holds."""

    reason: str
    requested: str | None
    earliest: str | None
    message: str

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Gap:
        """A gap from the ``{"control": "gap", ...}`` frame or SSE ``gap`` event."""
        return cls(
            reason=body.get("reason", ""),
            requested=body.get("requested"),
            earliest=body.get("earliest"),
            message=body.get("message", ""),
        )


@dataclass(frozen=True)
class FrameError:
    """The server's answer about a frame this subscriber sent: not published (4429, 4403, 4503), published or
    not (4504), or too large (1009, the connection was closed and resumes)."""

    error: RealtimeError


@dataclass(frozen=True)
class Receipt:
    """The answer to a publish: where the message is in the channel's history.

    ``fanout_pending`` (HTTP 202): published and in history, its hand-over to live subscribers is
    delayed; it is a success, never publish it again. ``replayed``: the server answered with the
    receipt of an earlier publish under the same idempotency key.
    """

    id: str
    channel_id: str
    offset: int
    epoch: str
    position: str
    created_at: str
    fanout_pending: bool = False
    replayed: bool = False

    @classmethod
    def from_wire(cls, body: dict[str, Any], *, replayed: bool = False) -> Receipt:
        """A receipt from a publish answer (or one batch result)."""
        return _from_wire(
            cls, body, fanout_pending=body.get("fanout") == "pending", replayed=replayed or bool(body.get("replayed"))
        )


@dataclass(frozen=True)
class BatchItem:
    """One message of a batch: its receipt, or the typed error that refused it."""

    channel: str | None
    status: int
    receipt: Receipt | None = None
    error: RealtimeError | None = None

    @property
    def ok(self) -> bool:
        """Whether the message is published (201, or 202 with its hand-over pending)."""
        return self.receipt is not None


@dataclass(frozen=True)
class BatchResult:
    """The answer to a batch publish, one item per message in the order sent."""

    items: list[BatchItem] = field(default_factory=list)

    @property
    def published(self) -> int:
        """How many messages are published."""
        return sum(1 for item in self.items if item.ok)

    @property
    def failed(self) -> list[BatchItem]:
        """The items that were not published (or whose outcome is unknown: ``OutcomeUnknown``)."""
        return [item for item in self.items if not item.ok]


@dataclass(frozen=True)
class Token:
    """A subscriber token for a private channel, as ``POST /api/v1/tokens`` answers it."""

    token: str
    channel_id: str
    client_id: str
    ttl: int
    publish: bool

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Token:
        """A token from the answer ``{token, channelId, clientId, ttl, publish}``."""
        return _from_wire(cls, body)


@dataclass(frozen=True)
class History:
    """A page of a channel's history: messages after ``since``, a gap when history could not cover it, and
    ``more`` when the page was cut at ``limit``."""

    channel_id: str
    messages: list[Message]
    gap: Gap | None
    more: bool

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> History:
        """A history page from the answer ``{channelId, messages, gap, more}``."""
        return cls(
            channel_id=body["channelId"],
            messages=[Message.from_wire(message) for message in body["messages"]],
            gap=Gap.from_wire(body["gap"]) if body.get("gap") else None,
            more=bool(body.get("more")),
        )
