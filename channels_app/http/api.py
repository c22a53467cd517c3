"""The server API: JSON in, JSON out, errors as ``{"error": code, "message": text}``.

Views are thin: they check the API key, parse the body into typed values and call services.
``ApplicationError`` becomes its HTTP status here; anything unexpected becomes a 500 with no
details (it is logged).
"""

from __future__ import annotations

import asyncio
import functools
import logging

from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from ..channel import CREATE_FIELDS, ChannelInfo
from ..core.channel_services import channel_create, channel_delete, channel_draft_parse
from ..core.publish_queue import Receipt
from ..core.runtime import Runtime
from ..core.selectors import channel_as_dict, channel_list
from ..core.services import message_publish_receipt
from ..errors import ApplicationError, bad_request
from ..jsoncodec import json_parse, payload_of
from ..messages import JSON, payload_format_parse, position_parse
from ..naming import SERVER_CLIENT_ID, client_id_parse
from ..state.idempotency import MAX_KEY_LENGTH
from ..tokens import DEFAULT_TTL_SECONDS, MAX_TOKEN_CHANNELS, token_info_check, token_mint
from .auth import WWW_AUTHENTICATE, api_key_check

logger = logging.getLogger(__name__)

MAX_BATCH_MESSAGES = 100
# Room for the "#<index>" each item's key gets.
BATCH_KEY_MAX_LENGTH = MAX_KEY_LENGTH - len(f"#{MAX_BATCH_MESSAGES - 1}")
MAX_HISTORY_PAGE = 1000
MAX_PRESENCE_PAGE = 1000
MAX_CHANNEL_PAGE = 1000
# The create body's whole-number fields (see whole_numbers).
_CHANNEL_WHOLE_NUMBERS = tuple(field.api for field in CREATE_FIELDS if field.kind == "int")


def database_unavailable() -> ApplicationError:
    """The database cannot be reached (503); channels already known keep serving from the cache."""
    return ApplicationError(
        "database_unavailable",
        "The database is unreachable right now, so this change could not be made; retry shortly. "
        "Existing channels keep serving.",
        status=503,
    )


def json_error(error: ApplicationError) -> JsonResponse:
    """An ``ApplicationError`` as its JSON response."""
    response = JsonResponse(error.as_dict(), status=error.status)
    if error.status == 401:
        response["WWW-Authenticate"] = WWW_AUTHENTICATE
    return response


def api_endpoint(*methods: str, authenticated: bool = True, served_before_django: tuple[str, ...] = ()):
    """Wrap an async view: allowed methods, API key, and errors turned into JSON responses.

    ``served_before_django`` names methods the same URL answers in transports/routing.py (``GET`` on the
    channel URL), so that a 405's ``Allow`` header lists every method the URL supports.
    """
    allowed = ", ".join((*served_before_django, *methods))

    def decorate(view):
        @csrf_exempt
        @functools.wraps(view)
        async def handler(request: HttpRequest, *args, **kwargs):
            if request.method not in methods:
                response = JsonResponse(
                    {"error": "method_not_allowed", "message": f"Use {allowed.replace(', ', ' or ')} on this URL."},
                    status=405,
                )
                response["Allow"] = allowed
                return response
            runtime = request.realtime
            try:
                if authenticated:
                    api_key_check(request.headers.get("Authorization"))
                if runtime.draining and request.method != "GET":
                    raise ApplicationError(
                        "draining", "This instance is shutting down; retry against another one.", status=503
                    )
                with runtime.in_flight:
                    return await view(request, *args, **kwargs)
            except ApplicationError as error:
                return json_error(error)
            except RequestDataTooBig:
                return json_error(ApplicationError("payload_too_large", "The request body is too large.", status=413))
            except (OperationalError, InterfaceError) as exc:
                # The database is down or unreachable: say so, and log one line rather than a traceback.
                logger.warning("database unavailable during %s %s: %s", request.method, request.path, exc)
                return json_error(database_unavailable())
            except Exception:
                logger.exception("unexpected error in %s %s", request.method, request.path)
                return JsonResponse(
                    {"error": "internal_error", "message": "The server failed to handle this request; it was logged."},
                    status=500,
                )

        handler.allowed_methods = methods
        handler.authenticated = authenticated
        return handler

    return decorate


def json_body(request: HttpRequest) -> object:
    """The request body parsed as JSON within jsoncodec's limits; 400 when it is not such JSON."""
    return json_parse(request.body)


def whole_numbers(body: object, *fields: str) -> object:
    """``body`` with integral floats (``3.0``) in ``fields`` turned into ints.

    JSON has one number type and JSON Schema counts ``3.0`` as an integer; Python's parser does
    not, so a client (or a generator following the OpenAPI document) sending ``3.0`` would be
    refused for a value the document allows.
    """
    if not isinstance(body, dict):
        return body
    return {
        key: int(value) if key in fields and isinstance(value, float) and value.is_integer() else value
        for key, value in body.items()
    }


def push_payload(body: object) -> tuple[str, str]:
    """The message payload of a push body and its kind: a string as is (``text``), any other JSON value
    as its JSON text (``json``)."""
    if not isinstance(body, dict) or "payload" not in body:
        raise bad_request('The body must be a JSON object with a payload: {"payload": "..."}.', field="payload")
    return payload_of(body["payload"])


def message_receipt(receipt: Receipt) -> dict:
    """What a push answers: the message's id, offset and resume position, and ``"fanout": "pending"``
    when the channel layer refused it for now (it is recorded, and handed over once the layer is back)."""
    message = receipt.message
    body = {
        "id": message.id,
        "channelId": message.channel_id,
        "offset": message.offset,
        "epoch": message.epoch,
        "position": message.position,
        "createdAt": message.created_at,
    }
    if receipt.fanout_pending:
        body["fanout"] = "pending"
    return body


def receipt_status(receipt: Receipt) -> int:
    """201 Created, or 202 Accepted while the message's hand-over to subscribers is pending."""
    return 202 if receipt.fanout_pending else 201


def _require_push_allowed(runtime: Runtime) -> None:
    if not runtime.server.allow_push_server_messages:
        raise ApplicationError(
            "push_disabled",
            "Pushing messages is disabled: set server.allow_push_server_messages: true.",
            status=403,
        )


async def _push(
    runtime: Runtime, reference: str, payload: tuple[str, str], idempotency_key: str | None = None
) -> Receipt:
    channel = await runtime.registry.resolve(reference)
    return await _push_to(runtime, channel, payload, idempotency_key)


async def _push_to(
    runtime: Runtime, channel: ChannelInfo, payload: tuple[str, str], idempotency_key: str | None
) -> Receipt:
    text, kind = payload
    return await message_publish_receipt(
        channel=channel,
        payload=text,
        payload_kind=kind,
        client_id=SERVER_CLIENT_ID,
        idempotency_key=idempotency_key,
        runtime=runtime,
    )


@api_endpoint("GET", "POST")
async def channel_messages(request: HttpRequest, channel: str):
    """``POST /api/v1/channels/<channel>/messages`` publishes; ``GET`` reads history."""
    if request.method == "GET":
        return await _history(request, channel)
    return await _push_one(request, channel)


async def _push_one(request: HttpRequest, channel: str) -> JsonResponse:
    _require_push_allowed(request.realtime)
    payload = push_payload(json_body(request))
    receipt = await _push(request.realtime, channel, payload, request.headers.get("Idempotency-Key"))
    response = JsonResponse(message_receipt(receipt), status=receipt_status(receipt))
    if receipt.replayed:
        response["Idempotent-Replayed"] = "true"
    return response


@api_endpoint("POST")
async def messages_push_batch(request: HttpRequest):
    """``POST /api/v1/messages``: publish to many channels; each result is reported.

    With an ``Idempotency-Key``, item ``i`` is published under the key ``<key>#<i>``: a retried
    batch publishes each item once, and answers the items published before with their receipts.
    """
    _require_push_allowed(request.realtime)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= BATCH_KEY_MAX_LENGTH:
        raise bad_request(f"Idempotency-Key must be 1 to {BATCH_KEY_MAX_LENGTH} characters on a batch.")
    body = json_body(request)
    items = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise bad_request('The body must be {"messages": [{"channel": "...", "payload": "..."}, ...]}.')
    if len(items) > MAX_BATCH_MESSAGES:
        raise bad_request(f"At most {MAX_BATCH_MESSAGES} messages per request; split the batch.")
    results: list[dict | None] = [None] * len(items)
    ready = []
    for index, item in enumerate(items):
        try:
            if not isinstance(item, dict) or not isinstance(item.get("channel"), str):
                raise bad_request(f"messages[{index}] must be an object with a channel and a payload.")
            payload = push_payload(item)
            channel = await request.realtime.registry.resolve(item["channel"])
            ready.append((index, item["channel"], channel, payload, None if key is None else f"{key}#{index}"))
        except ApplicationError as error:
            results[index] = _batch_failure(item, error)
    # Published together, so that their Redis calls share round trips; the tasks start in the items'
    # order and each queues on its channel before it first waits, so a channel's items keep their order.
    published_items = await asyncio.gather(
        *(
            _push_batch_item(request.realtime, reference, channel, payload, item_key)
            for _, reference, channel, payload, item_key in ready
        )
    )
    for (index, *_), result in zip(ready, published_items, strict=True):
        results[index] = result
    published = sum(1 for result in results if result["status"] in (201, 202))
    return JsonResponse({"published": published, "failed": len(results) - published, "results": results})


async def _push_batch_item(
    runtime: Runtime, reference: str, channel: ChannelInfo, payload: tuple[str, str], idempotency_key: str | None
) -> dict:
    """One batch item's result: its receipt, or its failure."""
    try:
        receipt = await _push_to(runtime, channel, payload, idempotency_key)
    except ApplicationError as error:
        return _batch_failure({"channel": reference}, error)
    result = {"channel": reference, "status": receipt_status(receipt), **message_receipt(receipt)}
    if receipt.replayed:
        result["replayed"] = True
    return result


def _batch_failure(item, error: ApplicationError) -> dict:
    channel_reference = item.get("channel") if isinstance(item, dict) else None
    return {"channel": channel_reference, "status": error.status, **error.as_dict()}


@api_endpoint("GET", "POST")
async def channels_collection(request: HttpRequest):
    """``GET /api/v1/channels`` lists channels; ``POST`` creates one (the Go service's body)."""
    if request.method == "GET":
        return await _channel_page(request)
    server = request.realtime.server
    if not server.allow_create_new_channels:
        raise ApplicationError(
            "create_disabled",
            "Creating channels is disabled: set server.allow_create_new_channels: true.",
            status=403,
        )
    draft = channel_draft_parse(whole_numbers(json_body(request), *_CHANNEL_WHOLE_NUMBERS), server=server)
    channel = await channel_create(draft=draft)
    return JsonResponse(channel_as_dict(channel, 0), status=201)


@api_endpoint("DELETE", served_before_django=("GET",))
async def channel_item(request: HttpRequest, channel: str):
    """``DELETE /api/v1/channels/<channel>``: remove an API- or admin-created channel (closes with 4410)."""
    deleted = await channel_delete(reference=channel, runtime=request.realtime)
    return JsonResponse({"id": deleted.id, "name": deleted.name, "deleted": True})


def page_limit(request: HttpRequest, most: int, default: int | None = None) -> int:
    """The ``limit`` query parameter: a whole number from 1 to ``most`` (``default`` when absent, else ``most``)."""
    raw = request.GET.get("limit")
    if raw is None:
        return most if default is None else default
    # isascii(): isdigit() alone accepts digits int() refuses, such as "²".
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= most:
        raise bad_request(f"limit must be a whole number from 1 to {most}.", field="limit")
    return int(raw)


async def _channel_page(request: HttpRequest) -> JsonResponse:
    """The channel list: all of it, as the Go service answers, or a page when ``limit`` or ``after`` is given."""
    runtime = request.realtime
    if "limit" not in request.GET and "after" not in request.GET:
        return JsonResponse({"channels": await channel_list(runtime=runtime)})
    limit = page_limit(request, MAX_CHANNEL_PAGE)
    # One more than asked tells whether another page follows without counting the registry.
    channels = await channel_list(runtime=runtime, after=request.GET.get("after"), limit=limit + 1)
    page = channels[:limit]
    return JsonResponse({"channels": page, "next": page[-1]["name"] if len(channels) > limit else None})


async def _history(request: HttpRequest, channel: str) -> JsonResponse:
    runtime = request.realtime
    channel_info = await runtime.registry.resolve(channel)
    since = position_parse(request.GET.get("since"))
    json_payload = payload_format_parse(request.GET.get("payload"), default=channel_info.payload_format) == JSON
    replay = await runtime.history.since(channel_info, since or position_parse("0"))
    gap = replay.gap if since is not None else None
    messages = replay.messages[: page_limit(request, MAX_HISTORY_PAGE)]
    return JsonResponse(
        {
            "channelId": channel_info.id,
            "messages": [message.as_wire_with_values() if json_payload else message.as_wire() for message in messages],
            "gap": gap.as_wire() if gap else None,
            "more": len(replay.messages) > len(messages),
        }
    )


def presence_disabled(channel_id: str) -> ApplicationError:
    """Presence asked of a channel that does not track it (409)."""
    return ApplicationError(
        "presence_disabled",
        f"Channel {channel_id!r} does not track presence: set presence: true on it (YAML, API or admin).",
        status=409,
    )


@api_endpoint("GET")
async def channel_presence(request: HttpRequest, channel: str):
    """``GET /api/v1/channels/<channel>/presence``: who is connected, cluster-wide, by clientId, paged."""
    runtime = request.realtime
    channel_info = await runtime.registry.resolve(channel)
    if not channel_info.presence:
        raise presence_disabled(channel_info.id)
    limit = page_limit(request, MAX_PRESENCE_PAGE)
    cursor = request.GET.get("cursor", "")
    count = await runtime.presence.count(channel_info.id)
    members, more = await runtime.presence.members(channel_info.id, after=cursor, limit=limit)
    return JsonResponse(
        {
            "channelId": channel_info.id,
            "count": count,
            "clients": [member.as_wire() for member in members],
            "next": members[-1].client_id if more and members else None,
        }
    )


def _channel_list(value: object) -> bool:
    """Whether ``value`` is a list of 1 to ``MAX_TOKEN_CHANNELS`` channel references."""
    return (
        isinstance(value, list)
        and 1 <= len(value) <= MAX_TOKEN_CHANNELS
        and all(isinstance(item, str) for item in value)
    )


@api_endpoint("POST")
async def tokens_create(request: HttpRequest):
    """``POST /api/v1/tokens``: mint a subscriber token for a private channel."""
    body = whole_numbers(json_body(request), "ttl")
    if not isinstance(body, dict) or not (isinstance(body.get("channel"), str) or _channel_list(body.get("channels"))):
        raise bad_request(
            'The body must be {"channel": "...", "clientId": "...", "ttl": 3600, "publish": false}, '
            'or name several channels as "channels": ["...", "..."].'
        )
    registry = request.realtime.registry
    single = isinstance(body.get("channel"), str)
    if single:
        channels = [await registry.resolve(body["channel"])]
    else:
        channels = [await registry.resolve(reference) for reference in body["channels"]]
    client_id = client_id_parse(body.get("clientId"))
    ttl = body.get("ttl", DEFAULT_TTL_SECONDS)
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise bad_request("ttl must be a whole number of seconds.", field="ttl")
    publish = body.get("publish", False)
    if not isinstance(publish, bool):
        raise bad_request("publish must be true or false.", field="publish")
    info = token_info_check(body.get("info"))
    ids = list(dict.fromkeys(channel.id for channel in channels))
    covered = ids[0] if single else ids
    token = token_mint(channel_id=covered, client_id=client_id, ttl=ttl, can_publish=publish, info=info)
    answer = {"token": token, "clientId": client_id, "ttl": ttl, "publish": publish}
    answer.update({"channelId": covered} if single else {"channelIds": ids})
    if info is not None:
        answer["info"] = info
    return JsonResponse(answer, status=201)
