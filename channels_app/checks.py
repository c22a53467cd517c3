"""System checks (``manage.py check``) for settings an operator must get right."""

from django.conf import settings
from django.core import checks


def _security(app_configs, **kwargs):
    problems = []
    if not settings.REALTIME_API_KEYS and settings.APP_DEBUG:
        problems.append(
            checks.Warning(
                "The server API is open: APP_DEBUG=1 and no API key is configured.",
                hint="Set REALTIME_API_KEYS (comma-separated) or server.api_keys before exposing the service.",
                id="realtime.W001",
            )
        )
    if not settings.SECRET_KEY_FROM_ENVIRONMENT:
        kept = settings.SECRET_KEY_FILE
        problems.append(
            checks.Warning(
                f"DJANGO_SECRET_KEY is not set; the key kept in {kept} is used, by this instance only."
                if kept is not None
                else f"DJANGO_SECRET_KEY is not set and {settings.SECRET_KEY_PROBLEM}; a random key is used for "
                "this process only.",
                hint="Set DJANGO_SECRET_KEY (and REALTIME_TOKEN_SECRET) to the same value on every instance.",
                id="realtime.W002",
            )
        )
    return problems


def register() -> None:
    """Register the checks (called from ``AppConfig.ready``)."""
    checks.register(_security, checks.Tags.security, deploy=True)
