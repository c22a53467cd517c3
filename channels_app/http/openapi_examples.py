"""Examples for the OpenAPI document (``http/openapi.py``): request bodies and answers as the API gives them.

The channels are those of ``configs/memory.config.yaml``, so each request example works as written
against the embedded run. A channel's description is made by the code that answers it
(``channel_as_dict``), and an error's body by the function that raises it, where there is one.
tests/test_openapi.py checks every example against its schema, and sends each request example to a
real server to compare the answer with the documented one.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

from ..channel import CREATE_FIELDS, ChannelInfo
from ..core.channel_services import channel_draft_parse
from ..core.selectors import channel_as_dict
from ..errors import ApplicationError, channel_full, channel_not_found, client_id_taken, publish_outcome_unknown
from ..naming import SERVER_CLIENT_ID, client_id_parse
from ..state.idempotency import idempotency_key_reused
from ..state.redis import redis_unavailable
from ..tokens import MAX_TTL_SECONDS, token_forbidden, token_mint, token_required
from .api import MAX_HISTORY_PAGE

CHAT_ID = "742fc7fe-1527-4184-8945-10b30bf01347"
NOTIFICATIONS_ID = "f71a6fb5-8962-48f4-a0dd-5cf60c42a70f"
EPOCH = "9c1e4b7a"
CREATED_AT = "2026-12-01T09:30:00.000Z"


def example(value, summary: str) -> dict:
    """One entry of an ``examples`` map."""
    return {"summary": summary, "value": value}


def _refusal(call: Callable[[], object]) -> dict:
    """The body of the refusal ``call`` raises: the code's own words."""
    try:
        call()
    except ApplicationError as error:
        return error.as_dict()
    raise AssertionError("expected a refusal")


def _receipt(offset: int, message_id: str, channel_id: str = CHAT_ID) -> dict:
    return {
        "id": message_id,
        "channelId": channel_id,
        "offset": offset,
        "epoch": EPOCH,
        "position": f"{EPOCH}-{offset}",
        "createdAt": CREATED_AT,
    }


def _message(offset: int, message_id: str, payload: str, client_id: str = SERVER_CLIENT_ID) -> dict:
    return {
        "id": message_id,
        "channelId": CHAT_ID,
        "clientId": client_id,
        "payload": payload,
        "createdAt": CREATED_AT,
        "offset": offset,
        "epoch": EPOCH,
    }


def _channel(channel_id: str, name: str, kind: str, connections: int, *, source: str = "yaml", **fields) -> dict:
    info = ChannelInfo(
        id=channel_id, name=name, type=kind, max_connections=100, history_size=100, history_ttl=3600, source=source
    )
    return channel_as_dict(info, connections) | fields


CHAT = _channel(CHAT_ID, "my-chat-example", "WS", 2)
NOTIFICATIONS = _channel(NOTIFICATIONS_ID, "my-notification-example", "SSE", 14)
NEWS = _channel("news", "news", "SSE", 0, source="api", max=500, maxOfChannelConnections=500)

RECEIPT = _receipt(42, "0f8fa5e2-3a6b-4f43-9b57-2f9c2a3d4e5f")

PUSH_REQUEST = {
    "text": example({"payload": "hello"}, "A text message"),
    "json": example({"payload": {"order": 42, "status": "shipped"}}, "Any JSON value"),
}
PUSH_ANSWERS = {
    201: {"published": example(RECEIPT, "Published; position is where a subscriber resumes after it")},
    202: {
        "pending": example(RECEIPT | {"fanout": "pending"}, "Recorded; handed to subscribers once the layer is back")
    },
}

BATCH_REQUEST = {
    "two channels": example(
        {
            "messages": [
                {"channel": "my-chat-example", "payload": "hello"},
                {"channel": "my-notification-example", "payload": {"build": 41, "status": "passed"}},
            ]
        },
        "One message to each of two channels",
    )
}
BATCH_ANSWER = {
    "published": example(
        {
            "published": 2,
            "failed": 0,
            "results": [
                {"channel": "my-chat-example", "status": 201, **_receipt(43, "5b7d1c0e-8f4a-4c2b-9e61-0a3d7f2c8b14")},
                {
                    "channel": "my-notification-example",
                    "status": 201,
                    **_receipt(7, "c2e9a4f1-6d3b-4a8e-b5c7-1f0e9d2a3b46", NOTIFICATIONS_ID),
                },
            ],
        },
        "Both published",
    ),
    "one refused": example(
        {
            "published": 1,
            "failed": 1,
            "results": [
                {"channel": "my-chat-example", "status": 201, **_receipt(44, "7a1f3e5d-2c4b-4d6e-8f90-a1b2c3d4e5f6")},
                {"channel": "no-such-channel", "status": 404, **channel_not_found("no-such-channel").as_dict()},
            ],
        },
        "Each item is published or refused on its own",
    ),
}

_CREATE_SAMPLES = {
    "id": "news",
    "name": "news",
    "type": "SSE",
    "max_connections": 500,
    "history_size": 50,
    "history_ttl": 600,
}
CREATE_REQUEST = {
    "minimal": example(
        {"id": "news", "type": "SSE", "maxOfChannelConnections": 500}, "The Go service's body: id, type, limit"
    ),
    "every field": example(
        {
            field.api: _CREATE_SAMPLES.get(field.attr, field.default)
            for field in CREATE_FIELDS
            if field.attr in _CREATE_SAMPLES or field.default is not None
        },
        "Every field; the ones left out take the server's defaults",
    ),
}
CREATE_ANSWER = {"created": example(NEWS, "The new channel")}
LIST_ANSWER = {"channels": example({"channels": [CHAT, NOTIFICATIONS]}, "Two channels and their live connections")}
_CHAT_INFO = ChannelInfo(
    id=CHAT_ID, name="my-chat-example", type="WS", max_connections=100, history_size=100, history_ttl=3600
)
PREFLIGHT_ANSWER = {
    "channel": example(channel_as_dict(_CHAT_INFO, 2, preflight=True), "What ?upgrade=0 says about a channel")
}
DELETE_ANSWER = {"deleted": example({"id": "news", "name": "news", "deleted": True}, "Deleted")}

HISTORY_ANSWER = {
    "messages": example(
        {
            "channelId": CHAT_ID,
            "messages": [
                _message(41, "e4d3c2b1-a098-4765-8432-10fedcba9876", "hi", client_id="alice"),
                _message(42, "0f8fa5e2-3a6b-4f43-9b57-2f9c2a3d4e5f", "hello"),
            ],
            "gap": None,
            "more": False,
        },
        "?since=9c1e4b7a-40: the two messages after it",
    ),
    "gap": example(
        {
            "channelId": CHAT_ID,
            "messages": [_message(42, "0f8fa5e2-3a6b-4f43-9b57-2f9c2a3d4e5f", "hello")],
            "gap": {
                "control": "gap",
                "reason": "expired",
                "requested": f"{EPOCH}-3",
                "earliest": f"{EPOCH}-42",
                "message": "Some messages since the requested position are no longer in history; "
                "the messages that follow are the oldest still available.",
            },
            "more": False,
        },
        "?since= older than history: the oldest messages still held, and the gap",
    ),
}

TOKEN_REQUEST = {
    "subscribe": example(
        {"channel": "my-chat-example", "clientId": "alice", "ttl": 3600, "publish": False},
        "alice may subscribe for an hour",
    )
}
TOKEN_ANSWER = {
    "token": example(
        {
            "token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
            "eyJjaGFubmVsIjoiNzQyZmM3ZmUtMTUyNy00MTg0LTg5NDUtMTBiMzBiZjAxMzQ3Iiwic3ViIjoiYWxpY2UiLCJpYXQiOjE3OTY0MDcxNzMs"
            "ImV4cCI6MTc5NjQxMDc3MywicHViIjpmYWxzZX0.c2lnbmF0dXJl",
            "channelId": CHAT_ID,
            "clientId": "alice",
            "ttl": 3600,
            "publish": False,
        },
        "Subscribe with ?clientId=alice&token=...",
    )
}

# One error per status, as the API words it; an operation's own refusals can differ in detail.
ERRORS = {
    400: {
        "error": "bad_request",
        "message": 'The body must be a JSON object with a payload: {"payload": "..."}.',
        "field": "payload",
    },
    401: {"error": "api_key_required", "message": "Send the API key as Authorization: Bearer <key>."},
    403: {
        "error": "push_disabled",
        "message": "Pushing messages is disabled: set server.allow_push_server_messages: true.",
    },
    404: channel_not_found("no-such-channel").as_dict(),
    409: {
        "error": "channel_exists",
        "message": "The id 'news' is already the id of channel 'news': choose another id.",
        "field": "id",
        "channel": "news",
    },
    413: {
        "error": "payload_too_large",
        "message": "The payload is 70000 bytes; the limit is 65536 bytes (server.max_message_size).",
        "limit": 65536,
    },
    422: idempotency_key_reused().as_dict(),
    503: redis_unavailable(ConnectionError(), publishing=True).as_dict(),
    504: publish_outcome_unknown().as_dict(),
}

_SERVER = SimpleNamespace(history_size=100, history_ttl=3600)
CREATE_REFUSED = _refusal(lambda: channel_draft_parse({"id": "news", "type": "XMPP"}, server=_SERVER))
CREATE_OFF = {
    "error": "create_disabled",
    "message": "Creating channels is disabled: set server.allow_create_new_channels: true.",
}
DELETE_REFUSED = {
    "error": "channel_declared_in_yaml",
    "message": f"Channel {CHAT_ID!r} is declared in the YAML file: remove it there and run sync_channels --prune.",
}
HISTORY_REFUSED = {
    "error": "bad_request",
    "message": f"limit must be a whole number from 1 to {MAX_HISTORY_PAGE}.",
    "field": "limit",
}
BATCH_REFUSED = {
    "error": "bad_request",
    "message": 'The body must be {"messages": [{"channel": "...", "payload": "..."}, ...]}.',
}
TOKEN_REFUSED = _refusal(lambda: token_mint(channel_id=CHAT_ID, client_id="alice", ttl=MAX_TTL_SECONDS + 1))
SUBSCRIBE_REFUSALS = {
    400: _refusal(lambda: client_id_parse("a b")),
    401: token_required(CHAT_ID).as_dict(),
    403: token_forbidden(f"The token is for another channel, not {CHAT_ID!r}.").as_dict(),
    409: client_id_taken(CHAT_ID, "alice").as_dict(),
    422: channel_full(CHAT_ID, 100).as_dict(),
}
