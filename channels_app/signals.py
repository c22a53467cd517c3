"""Signal wiring: registry changes invalidate the channel cache of this and every other instance."""

import logging

from asgiref.sync import async_to_sync
from django.db import transaction
from django.db.models.signals import post_delete, post_save

logger = logging.getLogger(__name__)


def _invalidate_registry(sender, instance, **kwargs):
    from .composition import process_runtime

    # The row, and its id and name: a rename also drops the old name, which the row was cached under.
    pk, references = instance.pk, (instance.public_id, instance.name)
    process_runtime().registry.invalidate(pk=pk, references=references)
    # Other instances hear of it through the channel layer once the change is committed.
    transaction.on_commit(lambda: _broadcast_registry_change(pk, references))


def _broadcast_registry_change(pk: int, references: tuple[str, ...]) -> None:
    from .composition import process_runtime
    from .core.hub import broadcast_registry_change

    try:
        async_to_sync(broadcast_registry_change)(process_runtime().layer, pk=pk, references=references)
    except Exception:
        # The periodic fingerprint check (registry/cache.py) still catches the change within seconds.
        logger.exception("could not tell other instances that the channel registry changed")


def connect() -> None:
    """Connect the handlers (called from ``AppConfig.ready``)."""
    from .models import Channel

    post_save.connect(_invalidate_registry, sender=Channel, dispatch_uid="realtime-registry-save")
    post_delete.connect(_invalidate_registry, sender=Channel, dispatch_uid="realtime-registry-delete")
