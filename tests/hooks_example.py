"""The hooks of the live servers of test_hooks.py (``REALTIME_HOOKS=tests.hooks_example,tests.chatlog.hooks``).

What a hook does is chosen by the client: its clientId on connect, its frame on publish.
"""

import asyncio
import json
import time

import channels_app
from channels_app import hooks
from channels_app.models import Channel

# The on_disconnect hook announces who left on this channel.
LEFT_CHANNEL = "hooks-left"


@hooks.on_connect
async def admit(event):
    """Refuse, stall or fail as the clientId says; otherwise say who the subscriber is."""
    client = event.client_id
    if client.startswith("refuse"):
        raise hooks.Reject(code=4403, reason=f"{client} may not subscribe")
    if client.startswith("slow"):
        await asyncio.sleep(30)
    if client.startswith("broken"):
        raise RuntimeError("the admission hook broke")
    if client.startswith("badinfo"):
        event.info = {"not json": object()}
        return
    event.info = {"name": client.upper(), "transport": event.transport, "agent": event.headers.get("user-agent")}


@hooks.on_publish(channels=["hooked-*"])
def check(event):
    """A sync hook: refuse, stall, fail, rewrite or answer from the database, as the frame says (on a
    connection in the json payload format, as the JSON string it sends says)."""
    text = json.loads(event.payload) if event.payload_format == "json" else event.payload
    if not isinstance(text, str):
        return None
    command, _, rest = text.partition(":")
    if command == "refuse":
        raise hooks.Reject(code=4451, reason="not this one")
    if command == "slow":
        time.sleep(3)
    if command == "broken":
        raise RuntimeError("the publish hook broke")
    if command == "number":
        return 42
    if command == "upper":
        return rest.upper()
    if command == "whoami":
        return json.dumps(event.info)
    if command == "orm":
        return Channel.objects.get(public_id=event.channel.id).name
    return None


@hooks.on_publish(channels=["ordered-*"])
async def stall_the_first(event):
    """An async hook that holds the frame ``0`` longer than the frames after it."""
    if event.payload == "0":
        await asyncio.sleep(0.3)


@hooks.on_disconnect
async def left(event):
    """Announce who left (an on_disconnect hook may publish), or fail for ``leave-broken`` clients."""
    if event.client_id.startswith("leave-broken"):
        raise RuntimeError("the leaving hook broke")
    if event.channel.id != LEFT_CHANNEL:
        await channels_app.apublish(LEFT_CHANNEL, f"{event.client_id} left {event.channel.id} ({event.transport})")
