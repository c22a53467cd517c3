"""The service's HTML pages: the landing page (``/``), the API docs (``/api/docs/``), and the chat
and notifications demos (``/web/chat/``, ``/web/notifications/``).

Each demo exists only when its ``server.render_*_html`` flag is on; otherwise it answers 404, as
if it did not exist. The views only list channels and hand the page its settings as a JSON block
(``json_script``): everything else happens in the browser through ``static/realtime/realtime.js``.
Pages carry no inline script, handler or style, so a strict Content-Security-Policy can serve them,
and load nothing from another origin, so they work offline.
"""

from __future__ import annotations

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_safe

from ..channel import ChannelInfo
from .auth import api_keys_configured, api_open_for_debug


def channel_choices(channels: list[ChannelInfo], *, transport: str, requested: str | None) -> tuple[list[dict], str]:
    """The channels of one transport for the page's picker, and the one to select.

    A ``?channel=`` naming no listed channel is kept as an extra choice, so the page can try it and
    explain the server's refusal in words rather than silently picking another channel.
    """
    choices = [
        {"id": channel.id, "name": channel.name, "private": channel.private}
        for channel in channels
        if channel.type == transport
    ]
    if requested:
        for choice in choices:
            if requested in (choice["id"], choice["name"]):
                return choices, choice["id"]
        choices.append({"id": requested, "name": requested, "private": False})
        return choices, requested
    return choices, choices[0]["id"] if choices else ""


def followed_channels(channels: list[ChannelInfo], requested: list[str]) -> list[dict]:
    """The channels a page follows on one multiplexed stream (``?channel=a&channel=b``), each once, by id.

    As in ``channel_choices``, a channel naming none of the listed ones is kept as given, so the
    page shows the server's refusal of it in words.
    """
    followed: dict[str, dict] = {}
    for reference in requested:
        match = next((channel for channel in channels if reference in (channel.id, channel.name)), None)
        entry = {"id": match.id, "name": match.name} if match else {"id": reference, "name": reference}
        followed.setdefault(entry["id"], entry)
    return list(followed.values())


def page_config(*, server, transport: str, channels: list[dict], selected: str) -> dict:
    """What every page's script needs: where channels live and which ones to offer."""
    messages_url = reverse("channel-messages", kwargs={"channel": "__channel__"})
    return {
        "transport": transport,
        "channelsUrl": messages_url.removesuffix("__channel__/messages"),
        "channels": channels,
        "selected": selected,
        "maxMessageSize": server.max_message_size,
    }


def navigation(server) -> list[dict]:
    """Links to the pages that are switched on, and to the API docs."""
    links = []
    if server.render_chat_html:
        links.append({"url": reverse("web-chat"), "label": "Chat", "key": "chat"})
    if server.render_notifications_html:
        links.append({"url": reverse("web-notifications"), "label": "Notifications", "key": "notifications"})
    links.append({"url": reverse("api-docs"), "label": "API docs", "key": "api-docs"})
    return links


def api_access(*, debug_open: bool, keys_configured: bool) -> str:
    """How the server API is opened here, in one word the landing page explains."""
    if debug_open:
        return "open"
    return "keys" if keys_configured else "closed"


async def render_page(
    request: HttpRequest,
    *,
    page: str,
    title: str,
    switched_on: bool,
    transport: str,
    extra_config: dict | None = None,
    multiplexed: bool = False,
) -> HttpResponse:
    """Render ``realtime/<page>.html`` offering the channels of ``transport``, or 404 when the page is off.

    ``extra_config`` adds the page's own settings to what its script receives (and the template reads);
    ``multiplexed`` pages follow every ``?channel=`` given, when there are several, on one connection.
    """
    if not switched_on:
        raise Http404(f"The {page} page is off: set server.render_{page}_html: true.")
    runtime = request.realtime
    registered = await runtime.registry.all()
    requested = [reference for reference in request.GET.getlist("channel") if reference]
    # A page following several channels selects the first; otherwise the last ?channel= wins, as it always did.
    preselected = requested[0] if multiplexed and requested else request.GET.get("channel")
    channels, selected = channel_choices(registered, transport=transport.upper(), requested=preselected)
    config = page_config(server=runtime.server, transport=transport, channels=channels, selected=selected) | (
        extra_config or {}
    )
    followed = followed_channels(registered, requested) if multiplexed else []
    if len(followed) > 1:
        config["follow"] = followed
    context = {
        "config": config,
        "channels": channels,
        "selected": selected,
        "nav": navigation(runtime.server),
        "page": page,
        "title": title,
    }
    return render(request, f"realtime/{page}.html", context)


@require_safe
async def chat(request: HttpRequest) -> HttpResponse:
    """``GET /web/chat/``: talk on a WebSocket channel (``?channel=`` preselects one)."""
    server = request.realtime.server
    return await render_page(request, page="chat", title="Chat", switched_on=server.render_chat_html, transport="ws")


@require_safe
async def notifications(request: HttpRequest) -> HttpResponse:
    """``GET /web/notifications/``: follow an SSE channel (or several on one stream: ``?channel=a&channel=b``),
    and push test notifications when allowed."""
    server = request.realtime.server
    push_settings = {"allowPush": server.allow_push_server_messages, "apiKeyRequired": not api_open_for_debug()}
    return await render_page(
        request,
        page="notifications",
        title="Notifications",
        switched_on=server.render_notifications_html,
        transport="sse",
        extra_config=push_settings,
        multiplexed=True,
    )


@require_safe
async def home(request: HttpRequest) -> HttpResponse:
    """``GET /``: what this service is, and a link to everything switched on here."""
    server = request.realtime.server
    context = {
        "title": "Realtime",
        "page": "home",
        "nav": navigation(server),
        "demos": navigation(server)[:-1],
        "base_url": request.build_absolute_uri("/").rstrip("/"),
        "api_access": api_access(debug_open=api_open_for_debug(), keys_configured=api_keys_configured()),
        "allow_push": server.allow_push_server_messages,
        "allow_create": server.allow_create_new_channels,
        "metrics_token": bool(settings.METRICS_TOKEN),
        "redis": request.realtime.config.pubsub.driver == "REDIS",
    }
    return render(request, "realtime/home.html", context)


@require_safe
async def api_docs(request: HttpRequest) -> HttpResponse:
    """``GET /api/docs/``: the OpenAPI document in Swagger UI, served from this app's static files."""
    return render(request, "realtime/api_docs.html", {"title": "API docs", "nav": navigation(request.realtime.server)})
