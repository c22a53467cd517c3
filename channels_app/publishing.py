"""The Python publishing API for Django code: ``channels_app.publish`` and ``channels_app.apublish``.

Both go through the one publish path (``services.message_publish``): the message is stamped,
kept in history and fanned out to WebSocket and SSE subscribers alike. Publish after your
transaction commits, so subscribers never hear of rows that were rolled back::

    from django.db import transaction
    import channels_app

    with transaction.atomic():
        order = Order.objects.create(...)
        transaction.on_commit(lambda: channels_app.publish("orders", {"id": order.pk, "status": "new"}))

Where they work: in the serving process (views, signals and consumers served by daphne or
uvicorn) under either driver, and in any other process (``manage.py shell``, commands, workers)
under the REDIS driver. Outside a serving process the MEMORY driver's channel layer reaches no
subscriber, so there they raise ``ImproperlyConfigured`` instead of returning a message nobody
receives. Outside a serving process every call, sync or async, from any event loop, runs on one
event loop that a background thread keeps, where the process's Redis connections live.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

from asgiref.sync import SyncToAsync, async_to_sync
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .composition import process_runtime, serves_subscribers
from .core.services import message_publish
from .jsoncodec import payload_of
from .messages import Message
from .naming import SERVER_CLIENT_ID

T = TypeVar("T")
NOT_SERVING_MEMORY = (
    "channels_app.publish() and apublish() reach no subscriber from this process: it serves none "
    "(manage.py shell, a command, a worker), and with pubsub.driver MEMORY the channel layer is the "
    "serving process's own memory. Publish over the HTTP API instead (POST "
    "/api/v1/channels/<channel>/messages with an API key), or run every process with pubsub.driver "
    "REDIS so they share one channel layer."
)


async def apublish(channel: str, payload, *, client_id: str = SERVER_CLIENT_ID) -> Message:
    """Publish ``payload`` to a channel by id or name: a string, or any JSON value, which subscribers in
    the ``json`` payload format receive as that value (the others as its JSON text)."""
    return await _on_runtime_loop(_publish_here, channel, payload, client_id)


def publish(channel: str, payload, *, client_id: str = SERVER_CLIENT_ID) -> Message:
    """Synchronous twin of ``apublish`` for views, signals, tasks and scripts."""
    return run_sync(_publish_here, channel, payload, client_id)


def run_sync(function: Callable[..., Awaitable[T]], *args) -> T:
    """Run ``await function(*args)`` from sync code, on the event loop where this process's runtime lives.

    In a thread the server runs sync code in (a sync view, a signal), ``async_to_sync`` runs it on
    the server's event loop. Anywhere else (a management command, a worker, a script) there is no
    such loop, and ``async_to_sync`` would make a new one per call, while the runtime's Redis
    connections stay bound to the first one (the next call failed with "Event loop is closed").
    There every call runs on one event loop that a background thread keeps for the process.
    """
    if _server_loop() is not None:
        return async_to_sync(_on_runtime_loop)(function, *args)
    if not serves_subscribers():
        _refuse_where_unreachable()
    return _publisher_loop().run(function(*args))


async def _on_runtime_loop(function: Callable[..., Awaitable[T]], *args) -> T:
    """``await function(*args)`` on the loop that holds the runtime: this one in a serving process,
    else the publisher loop's thread."""
    if serves_subscribers():
        return await function(*args)
    _refuse_where_unreachable()
    home = _publisher_loop().loop
    if asyncio.get_running_loop() is home:
        return await function(*args)
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(function(*args), home))


def _refuse_where_unreachable() -> None:
    """Outside a serving process, the MEMORY driver's layer reaches nobody: say so, publish nothing."""
    if settings.REALTIME.pubsub.driver == "MEMORY":
        raise ImproperlyConfigured(NOT_SERVING_MEMORY)


async def _publish_here(channel: str, payload, client_id: str) -> Message:
    runtime = process_runtime()
    channel_info = await runtime.registry.resolve(channel)
    text, kind = payload_of(payload)
    return await message_publish(
        channel=channel_info, payload=text, payload_kind=kind, client_id=client_id, runtime=runtime
    )


def _server_loop() -> asyncio.AbstractEventLoop | None:
    """The running event loop whose ``sync_to_async`` call this thread serves, if any.

    asgiref records it per thread; ``async_to_sync`` reads the same two attributes to decide
    whether to run on that loop or make a new one.
    """
    threadlocal = SyncToAsync.threadlocal
    if getattr(threadlocal, "main_event_loop_pid", None) != os.getpid():
        return None
    loop = getattr(threadlocal, "main_event_loop", None)
    return loop if loop is not None and loop.is_running() else None


class PublisherLoop:
    """An event loop in a daemon thread, running the coroutines of ``publish()`` called outside the server."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="realtime-publisher", daemon=True)
        self.thread.start()

    def run(self, coroutine):
        """Run ``coroutine`` on the loop; return its result (or raise its exception)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()


_publisher_loop_lock = threading.Lock()


@functools.cache
def _publisher_loop_unlocked() -> PublisherLoop:
    return PublisherLoop()


def _publisher_loop() -> PublisherLoop:
    with _publisher_loop_lock:
        return _publisher_loop_unlocked()
