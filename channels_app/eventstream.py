"""django-eventstream's ``send_event`` reaches this service's subscribers.

An app written for django-eventstream publishes with
``django_eventstream.send_event(channel, "message", data)``. django-eventstream hands every event of a
reliable channel to its storage class (``EVENTSTREAM_STORAGE_CLASS``) before anything else, and
keeps the id the storage gives it. ``RealtimeStorage`` is that class: it publishes the event through
the one publish path (``channels_app.publish``), so history, positions, resume and both transports
work as for any other publish, and the event's id is the message's offset. It also answers
django-eventstream's own reads (``get_events``, ``get_current_id``) from the channel's history.

What is honoured: ``channel`` (a channel's id or name; an unknown one raises, nothing is sent),
``data`` (JSON text, as ``json_encode=True`` makes it, is published as that JSON value; any other
text as a string), ``json_encode``. ``event_type`` must be ``"message"``, the only event this
service's streams carry to subscribers. ``skip_user_ids`` is ignored (subscribers here are clients,
not Django users), and ``async_publish`` too: the call returns once the message is recorded.
"""

from __future__ import annotations

import logging

from django_eventstream.event import Event
from django_eventstream.storage import EventDoesNotExist, StorageBase

from .composition import process_runtime
from .errors import ApplicationError
from .jsoncodec import json_parse
from .messages import Message
from .publishing import publish, run_sync

logger = logging.getLogger(__name__)

MESSAGE_EVENT = "message"


class RealtimeStorage(StorageBase):
    """django-eventstream's storage, backed by this service's publish path and history."""

    def append_event(self, channel: str, event_type: str, data: str) -> Event:
        """Publish ``data`` to ``channel``; the event's id is the message's offset."""
        if event_type != MESSAGE_EVENT:
            raise ValueError(
                f'send_event(..., event_type={event_type!r}, ...): this service delivers "message" events only '
                '(its streams name other events themselves); send event_type="message".'
            )
        message = publish(channel, _published_value(data))
        return Event(channel, event_type, data, id=message.offset)

    def get_events(self, channel: str, last_id: int, limit: int = 100) -> list[Event]:
        """The events after ``last_id``, oldest first; ``EventDoesNotExist`` when some are no longer held."""
        return run_sync(_events_after, channel, last_id, limit)

    def get_current_id(self, channel: str) -> int:
        """The id (offset) of the channel's newest event, 0 when none."""
        return run_sync(_head, channel)


def _published_value(data: str) -> object:
    """JSON text as the JSON value it holds (what ``json_encode=True`` sends); other text as a string."""
    try:
        return json_parse(data)
    except ApplicationError:
        return data


def _as_event(channel: str, message: Message) -> Event:
    return Event(channel, MESSAGE_EVENT, message.payload, id=message.offset)


async def _head(channel: str) -> int:
    runtime = process_runtime()
    channel_info = await runtime.registry.resolve(channel)
    return await runtime.history.head(channel_info.id)


async def _events_after(channel: str, last_id: int, limit: int) -> list[Event]:
    runtime = process_runtime()
    channel_info = await runtime.registry.resolve(channel)
    head = await runtime.history.head(channel_info.id)
    if last_id >= head:
        return []
    messages = await runtime.history.between(channel_info, last_id + 1, min(head, last_id + limit))
    if not messages or messages[0].offset != last_id + 1:
        logger.info("django-eventstream asked for %s after %s, which history no longer holds", channel, last_id)
        raise EventDoesNotExist(f"Events after {last_id} of {channel} are no longer held.", head)
    return [_as_event(channel, message) for message in messages]
