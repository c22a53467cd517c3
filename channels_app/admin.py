"""Django admin for the channel registry."""

from django.contrib import admin, messages

from .models import Channel


@admin.register(Channel)
class ChannelAdmin(admin.ModelAdmin):
    """Channels with their limits and where they came from."""

    list_display = ("name", "public_id", "type", "max_connections", "private", "source", "active", "updated_at")
    list_filter = ("type", "source", "active", "private")
    search_fields = ("name", "public_id")
    readonly_fields = ("source", "created_at", "updated_at")
    ordering = ("name",)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """Warn that edits to a YAML-sourced channel are overwritten by the next sync."""
        channel = self.get_object(request, object_id)
        if channel is not None and channel.source == Channel.Source.YAML:
            messages.warning(
                request,
                "This channel comes from the YAML configuration: the next sync_channels run "
                "overwrites edits made here. Change the YAML file instead.",
            )
        return super().change_view(request, object_id, form_url, extra_context)

    def save_model(self, request, obj, form, change):
        """Channels created here are marked as admin-created."""
        if not change:
            obj.source = Channel.Source.ADMIN
        super().save_model(request, obj, form, change)
