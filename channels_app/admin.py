"""Django admin for the channel registry, named after the service, with "View site" on the landing page.

The views are synchronous: the ORM is used directly, and the runtime's async calls (publishing,
presence, history) go through ``async_to_sync``.
"""

import logging
import uuid
from dataclasses import dataclass

from asgiref.sync import async_to_sync
from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.template.response import TemplateResponse

from .channel import ChannelInfo
from .core.channel_services import channel_disconnect_all
from .core.runtime import Runtime
from .core.selectors import channels_with_counts
from .core.services import message_publish
from .errors import ApplicationError
from .messages import Message, position_parse
from .models import Channel
from .naming import SERVER_CLIENT_ID

logger = logging.getLogger(__name__)

admin.site.site_header = "Realtime administration"
admin.site.site_title = "Realtime admin"
admin.site.index_title = "Channels and users"
# "View site": the landing page (Django prefixes it with the script name when the service is mounted below one).
admin.site.site_url = "/"
# Three models need no sidebar, and without it the channel list fits a 1280-pixel window.
admin.site.enable_nav_sidebar = False

YAML_OVERWRITE_WARNING = (
    "This channel comes from the YAML configuration: the next sync_channels run overwrites edits "
    "made here. Change the YAML file instead."
)
# How many of a channel's latest messages its change page shows.
RECENT_MESSAGES = 20
# Refusals of the payload itself: every channel would refuse it alike, so the form is shown again.
PAYLOAD_REFUSALS = ("bad_request", "payload_too_large")


class TestMessageForm(forms.Form):
    """The payload of "Send a test message"."""

    payload = forms.CharField(
        strip=False,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60}),
        help_text="Sent exactly as typed, as the HTTP API sends a text payload, from clientId server-message.",
    )


@dataclass(frozen=True)
class LiveState:
    """What the change page shows of a channel right now: its connections and its latest messages."""

    connections: int | None
    recent: list[Message]
    held: int
    problem: str = ""


@admin.register(Channel)
class ChannelAdmin(admin.ModelAdmin):
    """Channels with their limits and where they came from."""

    # Eight narrow columns and the filters fit a 1280-pixel window (tests/test_admin_browser.py).
    list_display = ("name", "public_id", "kind", "connections", "private", "source", "active")
    list_filter = ("type", "source", "active", "private", "presence")
    search_fields = ("name", "public_id")
    readonly_fields = ("source", "created_at", "updated_at")
    ordering = ("name",)
    actions = ("send_test_message", "disconnect_everyone")

    @admin.display(description="type", ordering="type")
    def kind(self, obj):
        """``WS`` or ``SSE``: the type's code, narrower than its label."""
        return obj.type

    @admin.display(description="connections")
    def connections(self, obj):
        """Replaced per request by ``get_list_display`` with counts taken once for the page."""
        return f"? / {obj.max_connections}"

    def get_list_display(self, request):
        """Show live connections against the limit, counted once per page (cluster-wide with the REDIS driver)."""
        counts = async_to_sync(_live_counts)(request.realtime)

        @admin.display(description="connections (live / max)", ordering="max_connections")
        def connections(obj):
            return f"{counts.get(obj.public_id, 0)} / {obj.max_connections}"

        return tuple(connections if field == "connections" else field for field in self.list_display)

    @admin.action(description="Send a test message to the selected channels…")
    def send_test_message(self, request, queryset):
        """Ask for a payload (an intermediate page), then publish it through the same path as the HTTP push API."""
        channels = list(queryset)
        if "apply" in request.POST:
            form = TestMessageForm(request.POST)
            if form.is_valid() and self._publish_test_message(request, channels, form):
                return None
        else:
            form = TestMessageForm(initial={"payload": f"Test message from the admin ({request.user.get_username()})"})
        context = {
            **self.admin_site.each_context(request),
            "title": "Send a test message",
            "form": form,
            "channels": channels,
            "active": [channel for channel in channels if channel.active],
            "opts": self.model._meta,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/channels_app/channel/send_test_message.html", context)

    def _publish_test_message(self, request, channels: list[Channel], form: TestMessageForm) -> bool:
        """Publish to each active channel and report each outcome; False (with a form error) when the
        payload itself is refused, which happens before anything is published."""
        payload = form.cleaned_data["payload"]
        for channel in channels:
            if not channel.active:
                self.message_user(request, f"{channel.name}: inactive, nothing sent.", messages.WARNING)
                continue
            try:
                message = async_to_sync(_publish)(request.realtime, channel.public_id, payload)
            except ApplicationError as error:
                if error.code in PAYLOAD_REFUSALS:
                    form.add_error("payload", error.message)
                    return False
                self.message_user(request, f"{channel.name}: {error.message}", messages.ERROR)
                continue
            self.message_user(
                request, f"{channel.name}: test message {message.id} published (offset {message.offset})."
            )
        return True

    @admin.action(description="Disconnect everyone from the selected channels")
    def disconnect_everyone(self, request, queryset):
        """Close every connection to the selected channels on every instance (code 4000); clients may resume."""
        for channel in queryset:
            async_to_sync(channel_disconnect_all)(channel_id=channel.public_id, runtime=request.realtime)
            self.message_user(request, f"{channel.name}: every connection was asked to close.")

    def get_readonly_fields(self, request, obj=None):
        """A YAML channel's id and name tie it to its declaration: changing them here would make
        the next sync create a second channel (or refuse to run), so they stay read-only."""
        fields = super().get_readonly_fields(request, obj)
        if obj is not None and obj.source == Channel.Source.YAML:
            return ("name", "public_id", *fields)
        return fields

    def get_changeform_initial_data(self, request):
        """The add form proposes a random id (a UUID, like the example configuration's), which may be changed."""
        initial = super().get_changeform_initial_data(request)
        initial.setdefault("public_id", str(uuid.uuid4()))
        return initial

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """The change page also shows the channel's live connections and latest messages, read-only."""
        channel = self.get_object(request, object_id)
        if channel is not None:
            live = async_to_sync(_live_state)(request.realtime, ChannelInfo.from_model(channel))
            extra_context = {**(extra_context or {}), "live": live, "recent_limit": RECENT_MESSAGES}
        return super().change_view(request, object_id, form_url=form_url, extra_context=extra_context)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        """Warn, on the page itself, that edits to a YAML channel are overwritten by the next sync."""
        if obj is not None and obj.source == Channel.Source.YAML:
            messages.warning(request, YAML_OVERWRITE_WARNING)
        return super().render_change_form(request, context, add=add, change=change, form_url=form_url, obj=obj)

    def save_model(self, request, obj, form, change):
        """Channels created here are marked as admin-created."""
        if not change:
            obj.source = Channel.Source.ADMIN
        super().save_model(request, obj, form, change)


async def _live_counts(runtime: Runtime) -> dict[str, int]:
    return {channel.id: count for channel, count in await channels_with_counts(runtime=runtime)}


async def _live_state(runtime: Runtime, channel: ChannelInfo) -> LiveState:
    """The channel's live connection count (cluster-wide with the REDIS driver) and its latest messages, newest
    first; what could not be read is said in ``problem``, so the page still opens while Redis is away."""
    try:
        connections = await runtime.presence.count(channel.id)
        held = (await runtime.history.since(channel, position_parse("0"))).messages
    except ApplicationError as error:
        return LiveState(None, [], 0, problem=error.message)
    return LiveState(connections, list(reversed(held[-RECENT_MESSAGES:])), len(held))


async def _publish(runtime: Runtime, reference: str, payload: str):
    channel = await runtime.registry.resolve(reference)
    return await message_publish(channel=channel, payload=payload, client_id=SERVER_CLIENT_ID, runtime=runtime)
