"""Django admin for the channel registry."""

from asgiref.sync import async_to_sync
from django.contrib import admin, messages

from .core.channel_services import channel_disconnect_all
from .core.runtime import Runtime
from .core.selectors import channels_with_counts
from .core.services import message_publish
from .errors import ApplicationError
from .models import Channel
from .naming import SERVER_CLIENT_ID

YAML_OVERWRITE_WARNING = (
    "This channel comes from the YAML configuration: the next sync_channels run overwrites edits "
    "made here. Change the YAML file instead."
)


@admin.register(Channel)
class ChannelAdmin(admin.ModelAdmin):
    """Channels with their limits and where they came from."""

    list_display = (
        "name",
        "public_id",
        "type",
        "live_connections",
        "max_connections",
        "private",
        "source",
        "active",
        "updated_at",
    )
    list_filter = ("type", "source", "active", "private")
    search_fields = ("name", "public_id")
    readonly_fields = ("source", "created_at", "updated_at")
    ordering = ("name",)
    actions = ("send_test_message", "disconnect_everyone")

    @admin.display(description="live connections")
    def live_connections(self, obj):
        """Replaced per request by ``get_list_display`` with counts taken once for the page."""
        return "?"

    def get_list_display(self, request):
        """Show live connections, counted once per page (cluster-wide with the REDIS driver)."""
        counts = async_to_sync(_live_counts)(request.realtime)

        @admin.display(description="live connections")
        def live_connections(obj):
            return counts.get(obj.public_id, 0)

        return tuple(live_connections if field == "live_connections" else field for field in self.list_display)

    @admin.action(description="Send a test message to the selected channels")
    def send_test_message(self, request, queryset):
        """Publish a test message through the same path as the HTTP push API."""
        for channel in queryset.filter(active=True):
            payload = f"Test message from the admin ({request.user.get_username()})"
            try:
                message = async_to_sync(_publish)(request.realtime, channel.public_id, payload)
            except ApplicationError as error:
                self.message_user(request, f"{channel.name}: {error.message}", messages.ERROR)
                continue
            self.message_user(
                request, f"{channel.name}: test message {message.id} published (offset {message.offset})."
            )

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


async def _publish(runtime: Runtime, reference: str, payload: str):
    channel = await runtime.registry.resolve(reference)
    return await message_publish(channel=channel, payload=payload, client_id=SERVER_CLIENT_ID, runtime=runtime)
