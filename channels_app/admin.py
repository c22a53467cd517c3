"""Django admin for the channel registry."""

from django.contrib import admin, messages

from .models import Channel

YAML_OVERWRITE_WARNING = (
    "This channel comes from the YAML configuration: the next sync_channels run overwrites edits "
    "made here. Change the YAML file instead."
)


@admin.register(Channel)
class ChannelAdmin(admin.ModelAdmin):
    """Channels with their limits and where they came from."""

    list_display = ("name", "public_id", "type", "max_connections", "private", "source", "active", "updated_at")
    list_filter = ("type", "source", "active", "private")
    search_fields = ("name", "public_id")
    readonly_fields = ("source", "created_at", "updated_at")
    ordering = ("name",)

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
