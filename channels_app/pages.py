"""The chat and notifications pages (``/web/chat/``, ``/web/notifications/``).

Each page exists only when its ``server.render_*_html`` flag is on; otherwise it answers 404, as
if it did not exist. The views only list channels and hand the page its settings as a JSON block
(``json_script``): everything else happens in the browser through ``static/realtime/realtime.js``.
Pages carry no inline script, handler or style, so a strict Content-Security-Policy can serve them.
"""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_safe

from .auth import api_open_for_debug
from .registry import ChannelInfo
from .runtime import get_runtime


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


def page_config(*, transport: str, channels: list[dict], selected: str) -> dict:
    """What every page's script needs: where channels live and which ones to offer."""
    messages_url = reverse("channel-messages", kwargs={"channel": "__channel__"})
    server = get_runtime().server
    return {
        "transport": transport,
        "channelsUrl": messages_url.removesuffix("__channel__/messages"),
        "channels": channels,
        "selected": selected,
        "maxMessageSize": server.max_message_size,
    }


def navigation(server) -> list[dict]:
    """Links to the pages that are switched on."""
    links = []
    if server.render_chat_html:
        links.append({"url": reverse("web-chat"), "label": "Chat", "key": "chat"})
    if server.render_notifications_html:
        links.append({"url": reverse("web-notifications"), "label": "Notifications", "key": "notifications"})
    return links


@require_safe
async def chat(request: HttpRequest) -> HttpResponse:
    """``GET /web/chat/``: talk on a WebSocket channel (``?channel=`` preselects one)."""
    runtime = get_runtime()
    server = runtime.server
    if not server.render_chat_html:
        raise Http404("The chat page is off: set server.render_chat_html: true.")
    channels, selected = channel_choices(
        await runtime.registry.all(), transport="WS", requested=request.GET.get("channel")
    )
    config = page_config(transport="ws", channels=channels, selected=selected)
    context = {"config": config, "channels": channels, "selected": selected, "nav": navigation(server), "page": "chat"}
    return render(request, "realtime/chat.html", context)


@require_safe
async def notifications(request: HttpRequest) -> HttpResponse:
    """``GET /web/notifications/``: follow an SSE channel, and push test notifications when allowed."""
    runtime = get_runtime()
    server = runtime.server
    if not server.render_notifications_html:
        raise Http404("The notifications page is off: set server.render_notifications_html: true.")
    channels, selected = channel_choices(
        await runtime.registry.all(), transport="SSE", requested=request.GET.get("channel")
    )
    config = page_config(transport="sse", channels=channels, selected=selected)
    config["allowPush"] = server.allow_push_server_messages
    config["apiKeyRequired"] = not api_open_for_debug()
    context = {
        "config": config,
        "channels": channels,
        "selected": selected,
        "nav": navigation(server),
        "page": "notifications",
        "allow_push": config["allowPush"],
        "api_key_required": config["apiKeyRequired"],
    }
    return render(request, "realtime/notifications.html", context)
