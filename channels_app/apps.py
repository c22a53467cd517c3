from django.apps import AppConfig


class ChannelsAppConfig(AppConfig):
    """The realtime service: channel registry, publish path, WebSocket and SSE endpoints."""

    name = "channels_app"
    verbose_name = "Realtime"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        """Wire registry invalidation and log redaction; no I/O happens here."""
        from django.conf import settings

        from . import checks, signals
        from .ops.logredact import install_log_redaction

        signals.connect()
        checks.register()
        install_log_redaction(secrets=(*settings.REALTIME_API_KEYS, settings.METRICS_TOKEN))
