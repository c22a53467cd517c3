"""Signal wiring: registry changes invalidate this process's cache."""

from django.db.models.signals import post_delete, post_save


def _invalidate_registry(sender, **kwargs):
    from .runtime import get_runtime

    get_runtime().registry.invalidate()


def connect() -> None:
    """Connect the handlers (called from ``AppConfig.ready``)."""
    from .models import Channel

    post_save.connect(_invalidate_registry, sender=Channel, dispatch_uid="realtime-registry-save")
    post_delete.connect(_invalidate_registry, sender=Channel, dispatch_uid="realtime-registry-delete")
