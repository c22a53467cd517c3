"""The Python publishing API for Django code: ``channels_app.publish`` and ``channels_app.apublish``.

Both go through the one publish path (``services.message_publish``): the message is stamped,
kept in history and fanned out to WebSocket and SSE subscribers alike. Publish after your
transaction commits, so subscribers never hear of rows that were rolled back::

    from django.db import transaction
    import channels_app

    with transaction.atomic():
        order = Order.objects.create(...)
        transaction.on_commit(lambda: channels_app.publish("orders", {"id": order.pk, "status": "new"}))
"""

from __future__ import annotations

import json

from asgiref.sync import async_to_sync

from .messages import Message
from .naming import SERVER_CLIENT_ID
from .runtime import get_runtime
from .services import message_publish


def _as_text(payload) -> str:
    if isinstance(payload, str):
        return payload
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


async def apublish(channel: str, payload, *, client_id: str = SERVER_CLIENT_ID) -> Message:
    """Publish ``payload`` (a string, or any JSON value sent as its JSON text) to a channel by id or name."""
    runtime = get_runtime()
    channel_info = await runtime.registry.resolve(channel)
    return await message_publish(channel=channel_info, payload=_as_text(payload), client_id=client_id)


def publish(channel: str, payload, *, client_id: str = SERVER_CLIENT_ID) -> Message:
    """Synchronous twin of ``apublish`` for views, signals and tasks."""
    return async_to_sync(apublish)(channel, payload, client_id=client_id)
