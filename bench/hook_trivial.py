"""The trivial hook of the ``hooks`` scenario (``REALTIME_HOOKS=bench.hook_trivial``): an async
``on_publish`` hook that lets every frame through unchanged."""

from channels_app import hooks


@hooks.on_publish
async def allow(event):
    """Publish the frame as it is."""
    return None
