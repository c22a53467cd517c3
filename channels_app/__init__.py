"""Realtime: pub/sub over WebSockets and Server-Sent Events.

``publish(channel, payload)`` and ``apublish(...)`` are the Python API for Django code; they are
imported lazily so that importing this package (as Django does at start-up) loads no models.
"""


def publish(channel, payload, **options):
    """Publish to a channel from synchronous Django code; see ``channels_app.publishing``."""
    from .publishing import publish as _publish

    return _publish(channel, payload, **options)


async def apublish(channel, payload, **options):
    """Publish to a channel from async code; see ``channels_app.publishing``."""
    from .publishing import apublish as _apublish

    return await _apublish(channel, payload, **options)
