"""The OpenAPI 3.1 document of the HTTP API, served at ``/api/v1/openapi.json``.

Limits, patterns and a channel's fields are taken from the code that enforces them; the examples
are in ``openapi_examples.py``. tests/test_openapi.py checks that every API route and method is
described here and nothing else, that the document's limits are the code's, and that each example
is what the API accepts and answers. ``/api/docs/`` shows it in Swagger UI.
"""

from __future__ import annotations

from functools import cache

from django.conf import settings
from django.http import HttpRequest, JsonResponse

from ..channel import CREATE_FIELDS, DESCRIPTION, ChannelField
from ..identity import IDENTIFIER_JSON_PATTERN
from ..messages import PAYLOAD_FORMATS, POSITION_JSON_PATTERN
from ..naming import CLIENT_ID_JSON_PATTERN, SERVER_CLIENT_ID
from ..state.idempotency import IDEMPOTENCY_WINDOW_SECONDS, MAX_KEY_LENGTH
from ..tokens import MAX_INFO_BYTES, MAX_TOKEN_CHANNELS, MAX_TTL_SECONDS, MIN_TTL_SECONDS
from . import openapi_examples as examples
from .api import (
    BATCH_KEY_MAX_LENGTH,
    MAX_BATCH_MESSAGES,
    MAX_CHANNEL_PAGE,
    MAX_HISTORY_PAGE,
    MAX_PRESENCE_PAGE,
    api_endpoint,
    presence_disabled,
)


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str, named_examples: dict | None = None) -> dict:
    """A JSON answer, with ``named_examples`` (an OpenAPI ``examples`` map) when given."""
    media: dict = {"schema": schema}
    if named_examples:
        media["examples"] = named_examples
    return {"description": description, "content": {"application/json": media}}


def _json_body(schema: dict, named_examples: dict) -> dict:
    """A required JSON request body, with its examples."""
    return {"required": True, "content": {"application/json": {"schema": schema, "examples": named_examples}}}


def _object(properties: dict, *, required: list[str] | None = None, closed: bool = False) -> dict:
    """A JSON object schema; ``closed`` refuses properties not listed."""
    schema: dict = {"type": "object"}
    if required:
        schema["required"] = required
    if closed:
        schema["additionalProperties"] = False
    schema["properties"] = properties
    return schema


def _errors(*statuses: int, specific: dict[int, dict] | None = None) -> dict:
    """The error answers of an operation, each with an example (``specific`` replaces the usual one)."""
    descriptions = {
        400: "Bad request: the body or query is invalid.",
        401: "Missing or invalid API key.",
        403: "Disabled by the server configuration.",
        404: "Unknown channel.",
        409: "Conflict.",
        413: "Payload too large.",
        422: "Unprocessable: the request cannot be carried out as asked.",
        503: "Not done: Redis could not be reached before anything was sent (nothing was published).",
        504: "Outcome unknown: Redis did not answer in time; retry with the same Idempotency-Key.",
    }
    bodies = examples.ERRORS | (specific or {})
    return {
        str(status): _json(_ref("Error"), descriptions[status], {bodies[status]["error"]: {"value": bodies[status]}})
        for status in statuses
    }


def _channel_property(field: ChannelField | None, *, bounded: bool = False) -> dict:
    """The JSON schema of a channel field (None: the live connection count); ``bounded`` adds its limits."""
    if field is None:
        return {"type": "integer"}
    if field.kind == "identifier":
        return {"type": "string", **({"pattern": IDENTIFIER_JSON_PATTERN} if bounded else {})}
    if field.kind == "choice":
        return {"type": "string", "enum": list(field.choices)}
    if field.kind == "int":
        return {"type": "integer", **({"minimum": field.minimum, "maximum": field.maximum} if bounded else {})}
    return {"type": "boolean"}


_CHANNEL_PARAMETER = {
    "name": "channel",
    "in": "path",
    "required": True,
    "description": "The channel's id or name.",
    "schema": {"type": "string", "pattern": IDENTIFIER_JSON_PATTERN},
}
_BEARER = [{"apiKey": []}]
_SINCE = {
    "name": "since",
    "in": "query",
    "description": "Resume after this position: <epoch>-<offset>, a bare offset, or a message id.",
    "schema": {"type": "string", "pattern": POSITION_JSON_PATTERN},
}
_PAYLOAD_FORMAT = {
    "name": "payload",
    "in": "query",
    "description": "How payloads published as JSON values arrive: text (as their JSON text in a string) or json "
    "(as the values). Default: the channel's payloadFormat.",
    "schema": {"type": "string", "enum": list(PAYLOAD_FORMATS)},
}
_CLIENT_ID = {
    "name": "clientId",
    "in": "query",
    "description": f"Who the client is; {SERVER_CLIENT_ID} is reserved.",
    "schema": {"type": "string", "pattern": CLIENT_ID_JSON_PATTERN, "not": {"const": SERVER_CLIENT_ID}},
}


_DESCRIPTION = (
    "Publish to the service's channels from your backend, manage channels, read history and mint tokens "
    "for private channels. Every operation with a lock needs an API key (`REALTIME_API_KEYS`), sent as "
    "`Authorization: Bearer <key>`: press **Authorize** to set it for the forms below. Subscribers connect to "
    "`/api/v1/channels/<channel>` (a WebSocket for `WS` channels, an event stream for `SSE` ones): see "
    "docs/protocol.md for frames, positions and close codes."
)
_TAGS = [
    {"name": "Messages", "description": "Publish, one message or many, and read a channel's recent history."},
    {"name": "Channels", "description": "List, create and delete channels."},
    {"name": "Subscribing", "description": "The channel URL itself: WebSocket, event stream, or a description."},
    {"name": "Presence", "description": "Who is connected to a channel with presence: true."},
    {"name": "Tokens", "description": "Tokens that let a client subscribe to a private channel."},
    {"name": "Document", "description": "This description of the API."},
]


@cache
def _document() -> dict:
    schemas = {
        "Error": _object({"error": {"type": "string"}, "message": {"type": "string"}}, required=["error", "message"]),
        "Message": _object(
            {
                "id": {"type": "string", "format": "uuid"},
                "channelId": {"type": "string"},
                "clientId": {"type": "string"},
                "payload": {
                    "description": "A string; in the json payload format, a payload published as a JSON value "
                    "is that value."
                },
                "createdAt": {"type": "string", "format": "date-time"},
                "offset": {"type": ["integer", "null"]},
                "epoch": {"type": ["string", "null"]},
            },
            required=["id", "channelId", "clientId", "payload", "createdAt"],
        ),
        "Receipt": _object(
            {
                "id": {"type": "string"},
                "channelId": {"type": "string"},
                "offset": {"type": "integer"},
                "epoch": {"type": "string"},
                "position": {"type": "string"},
                "createdAt": {"type": "string", "format": "date-time"},
                "fanout": {
                    "type": "string",
                    "enum": ["pending"],
                    "description": "Present (202) when the channel layer refused the recorded message for now: "
                    "it is handed to subscribers once the layer is back.",
                },
            },
            required=["id", "channelId", "offset", "epoch", "position", "createdAt"],
        ),
        "Push": _object(
            {
                "payload": {
                    "description": "A string, or any other JSON value: subscribers in the json payload format "
                    "receive it as that value, the others as its JSON text."
                }
            },
            required=["payload"],
        ),
        "Channel": _object(
            {key: _channel_property(field) for key, field in DESCRIPTION},
            required=["id", "name", "type", "connections", "max"],
        ),
        "ChannelCreate": _object(
            {field.api: _channel_property(field, bounded=True) for field in CREATE_FIELDS},
            required=[field.api for field in CREATE_FIELDS if field.required],
            closed=True,
        ),
        "Gap": _object(
            {
                "control": {"const": "gap"},
                "reason": {"type": "string"},
                "requested": {"type": ["string", "null"]},
                "earliest": {"type": ["string", "null"]},
                "message": {"type": "string"},
            }
        ),
    }
    paths = {
        "/api/v1/channels": {
            "get": {
                "summary": "List channels with live connection counts",
                "tags": ["Channels"],
                "security": _BEARER,
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "description": f"Channels per page (most: {MAX_CHANNEL_PAGE}). Without limit or after, "
                        "every channel is listed in one answer, as the Go service does.",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_CHANNEL_PAGE},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "description": "The next of the previous page: channels are listed by name, after this one.",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": _json(
                        _object(
                            {
                                "channels": {"type": "array", "items": _ref("Channel")},
                                "next": {
                                    "type": ["string", "null"],
                                    "description": "Paged answers only: the after of the next page (null: none).",
                                },
                            }
                        ),
                        "The active channels, by name.",
                        examples.LIST_ANSWER,
                    ),
                    **_errors(400, 401),
                },
            },
            "post": {
                "summary": "Create a channel (the Go service's body)",
                "tags": ["Channels"],
                "security": _BEARER,
                "requestBody": _json_body(_ref("ChannelCreate"), examples.CREATE_REQUEST),
                "responses": {
                    "201": _json(_ref("Channel"), "Created.", examples.CREATE_ANSWER),
                    **_errors(400, 401, 403, 409, specific={400: examples.CREATE_REFUSED, 403: examples.CREATE_OFF}),
                },
            },
        },
        "/api/v1/channels/{channel}": {
            "parameters": [_CHANNEL_PARAMETER],
            "get": {
                "summary": "Subscribe (WebSocket upgrade or SSE stream by channel type), or describe with upgrade=0",
                "tags": ["Subscribing"],
                "parameters": [
                    {"name": "upgrade", "in": "query", "schema": {"type": "string", "enum": ["0"]}},
                    _CLIENT_ID,
                    _SINCE,
                    {"name": "token", "in": "query", "schema": {"type": "string"}},
                    _PAYLOAD_FORMAT,
                ],
                "responses": {
                    "200": {
                        "description": "The channel (upgrade=0) or an event stream (SSE channels).",
                        "content": {
                            "application/json": {"schema": _ref("Channel"), "examples": examples.PREFLIGHT_ANSWER},
                            "text/event-stream": {},
                        },
                    },
                    **_errors(400, 401, 403, 404, 409, 422, specific=examples.SUBSCRIBE_REFUSALS),
                },
            },
            "delete": {
                "summary": "Delete an API- or admin-created channel; its connections close with 4410",
                "tags": ["Channels"],
                "security": _BEARER,
                "responses": {
                    "200": _json(
                        _object({"id": {"type": "string"}, "name": {"type": "string"}, "deleted": {"type": "boolean"}}),
                        "Deleted.",
                        examples.DELETE_ANSWER,
                    ),
                    **_errors(401, 404, 409, specific={409: examples.DELETE_REFUSED}),
                },
            },
        },
        "/api/v1/channels/{channel}/messages": {
            "parameters": [_CHANNEL_PARAMETER],
            "post": {
                "summary": "Push a message (clientId server-message)",
                "tags": ["Messages"],
                "security": _BEARER,
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "description": "Retries with the same key publish once, whatever became of the first "
                        f"attempt's answer (remembered for {IDEMPOTENCY_WINDOW_SECONDS // 3600} hours, per channel). "
                        "Reused for another payload: 422.",
                        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
                    }
                ],
                "requestBody": _json_body(_ref("Push"), examples.PUSH_REQUEST),
                "responses": {
                    "201": _json(_ref("Receipt"), "Published.", examples.PUSH_ANSWERS[201]),
                    "202": _json(
                        _ref("Receipt"),
                        "Published (recorded); its hand-over to subscribers is pending.",
                        examples.PUSH_ANSWERS[202],
                    ),
                    **_errors(400, 401, 403, 404, 413, 422, 503, 504),
                },
            },
            "get": {
                "summary": "Read the channel's recent history",
                "tags": ["Messages"],
                "security": _BEARER,
                "parameters": [
                    _SINCE,
                    _PAYLOAD_FORMAT,
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_HISTORY_PAGE},
                    },
                ],
                "responses": {
                    "200": _json(
                        _object(
                            {
                                "channelId": {"type": "string"},
                                "messages": {"type": "array", "items": _ref("Message")},
                                "gap": {"oneOf": [_ref("Gap"), {"type": "null"}]},
                                "more": {"type": "boolean"},
                            }
                        ),
                        "Messages after the position, oldest first.",
                        examples.HISTORY_ANSWER,
                    ),
                    **_errors(400, 401, 404, specific={400: examples.HISTORY_REFUSED}),
                },
            },
        },
        "/api/v1/channels/{channel}/presence": {
            "parameters": [_CHANNEL_PARAMETER],
            "get": {
                "summary": "List who is connected (a channel with presence: true), across every instance",
                "tags": ["Presence"],
                "security": _BEARER,
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "description": f"Clients per page (default and most: {MAX_PRESENCE_PAGE}).",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PRESENCE_PAGE},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "description": "The next of the previous page: clients are listed by clientId, after this one.",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": _json(
                        _object(
                            {
                                "channelId": {"type": "string"},
                                "count": {"type": "integer"},
                                "clients": {
                                    "type": "array",
                                    "items": _object(
                                        {
                                            "clientId": {"type": "string"},
                                            "transport": {"type": ["string", "null"], "enum": ["WS", "SSE", None]},
                                            "connectedAt": {"type": ["string", "null"]},
                                            "info": {"type": ["object", "null"]},
                                        }
                                    ),
                                },
                                "next": {"type": ["string", "null"]},
                            }
                        ),
                        "The connected clients, by clientId; next is the cursor of the next page (null: none).",
                        {
                            "members": {
                                "value": {
                                    "channelId": "chat",
                                    "count": 1,
                                    "clients": [
                                        {
                                            "clientId": "alice",
                                            "transport": "WS",
                                            "connectedAt": "2026-12-04T20:00:00.000Z",
                                            "info": {"name": "Alice"},
                                        }
                                    ],
                                    "next": None,
                                }
                            }
                        },
                    ),
                    **_errors(400, 401, 404, 409, specific={409: presence_disabled("chat").as_dict()}),
                },
            },
        },
        "/api/v1/messages": {
            "post": {
                "summary": f"Publish to many channels in one request (at most {MAX_BATCH_MESSAGES} messages)",
                "tags": ["Messages"],
                "security": _BEARER,
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "description": "Item i is published under <key>#<i>: a retried batch publishes each item once "
                        '(items published before are answered with their receipts and "replayed": true).',
                        "schema": {"type": "string", "minLength": 1, "maxLength": BATCH_KEY_MAX_LENGTH},
                    }
                ],
                "requestBody": _json_body(
                    _object(
                        {
                            "messages": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": MAX_BATCH_MESSAGES,
                                # Each item is checked on its own: a malformed one is
                                # reported in results (status 400), the others are published.
                                "items": {
                                    "description": 'One message: {"channel": "<id or name>", "payload": ...}; '
                                    "a malformed item is reported in results with status 400.",
                                    "examples": [{"channel": "chat", "payload": "hello"}],
                                },
                            }
                        },
                        required=["messages"],
                    ),
                    examples.BATCH_REQUEST,
                ),
                "responses": {
                    "200": _json(
                        _object(
                            {
                                "published": {"type": "integer"},
                                "failed": {"type": "integer"},
                                "results": {"type": "array", "items": {"type": "object"}},
                            }
                        ),
                        "One result per message, in order.",
                        examples.BATCH_ANSWER,
                    ),
                    **_errors(400, 401, 403, specific={400: examples.BATCH_REFUSED}),
                },
            },
        },
        "/api/v1/tokens": {
            "post": {
                "summary": "Mint a subscriber token for a private channel",
                "tags": ["Tokens"],
                "security": _BEARER,
                "requestBody": _json_body(
                    _object(
                        {
                            "channel": {"type": "string"},
                            "channels": {
                                "type": "array",
                                "items": {"type": "string"},
                                "minItems": 1,
                                "maxItems": MAX_TOKEN_CHANNELS,
                                "description": "Instead of channel: the channels one token covers, for one "
                                "multiplexed connection (GET /api/v1/events, /api/v1/connect).",
                            },
                            "clientId": {"type": "string"},
                            "ttl": {"type": "integer", "minimum": MIN_TTL_SECONDS, "maximum": MAX_TTL_SECONDS},
                            "publish": {"type": "boolean"},
                            "info": {
                                "type": "object",
                                "description": "What presence shows about the subscriber (a display name, say): "
                                f"a JSON object of at most {MAX_INFO_BYTES} bytes, signed into the token.",
                            },
                        },
                    )
                    | {"anyOf": [{"required": ["channel"]}, {"required": ["channels"]}]},
                    examples.TOKEN_REQUEST,
                ),
                "responses": {
                    "201": _json(
                        _object(
                            {
                                "token": {"type": "string"},
                                "channelId": {"type": "string"},
                                "channelIds": {"type": "array", "items": {"type": "string"}},
                                "clientId": {"type": "string"},
                                "ttl": {"type": "integer"},
                                "publish": {"type": "boolean"},
                                "info": {"type": "object"},
                            }
                        ),
                        "The token.",
                        examples.TOKEN_ANSWER,
                    ),
                    **_errors(400, 401, 404, specific={400: examples.TOKEN_REFUSED}),
                },
            },
        },
        "/api/v1/openapi.json": {
            "get": {
                "summary": "This document",
                "tags": ["Document"],
                "responses": {"200": {"description": "The OpenAPI document."}},
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Realtime API", "version": "1.0.0", "description": _DESCRIPTION},
        "tags": _TAGS,
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
    }


def openapi_document(*, server_url: str = "/") -> dict:
    """The document, with ``servers`` set to where the API is served."""
    return {**_document(), "servers": [{"url": server_url}]}


@api_endpoint("GET", authenticated=False)
async def openapi_json(request: HttpRequest):
    """``GET /api/v1/openapi.json``: the OpenAPI document of this API."""
    return JsonResponse(openapi_document(server_url=settings.FORCE_SCRIPT_NAME or "/"))
