from django.apps import AppConfig


class ChannelsAppConfig(AppConfig):
    """The realtime service: channel registry, publish path, WebSocket and SSE endpoints."""

    name = "channels_app"
    verbose_name = "Realtime"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        """Wire registry invalidation to model changes; no I/O happens here."""
        from . import signals

        signals.connect()
