from django.apps import AppConfig


class ChatlogConfig(AppConfig):
    """The chat archive of docs/hooks.md's example."""

    name = "tests.chatlog"
    label = "chatlog"
    default_auto_field = "django.db.models.BigAutoField"
