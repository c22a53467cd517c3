"""The Python publishing API reaches WebSocket and SSE subscribers through the one publish path."""

import asyncio
import json
import subprocess
import sys

import pytest
import websockets
from asgiref.sync import sync_to_async
from channels.testing import ApplicationCommunicator, WebsocketCommunicator

import channels_app
from channels_app.models import Channel
from tests.conftest import redis_config
from tests.liveserver import ROOT

pytestmark = pytest.mark.django_db(transaction=True)


async def _application():
    from realtime_project.asgi import application

    return application


async def test_apublish_and_publish_reach_a_websocket_subscriber():
    await Channel.objects.acreate(public_id="pub-ws", name="pub-ws", type="WS", max_connections=5)
    communicator = WebsocketCommunicator(await _application(), "/api/v1/channels/pub-ws?clientId=reader")
    connected, _ = await communicator.connect()
    assert connected
    message = await channels_app.apublish("pub-ws", {"order": 7})
    received = json.loads(await communicator.receive_from(timeout=2))
    assert received["id"] == message.id
    assert received["payload"] == '{"order":7}'
    assert received["clientId"] == "server-message"
    # The synchronous twin, called from a worker thread as a Django view or signal would.
    sync_message = await sync_to_async(channels_app.publish)("pub-ws", "plain text")
    received = json.loads(await communicator.receive_from(timeout=2))
    assert received["id"] == sync_message.id
    assert received["offset"] == message.offset + 1
    await communicator.disconnect()


async def test_apublish_reaches_an_sse_subscriber():
    await Channel.objects.acreate(public_id="pub-sse", name="pub-sse", type="SSE", max_connections=5)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/api/v1/channels/pub-sse",
        "query_string": b"clientId=reader",
        "headers": [(b"host", b"testserver")],
    }
    communicator = ApplicationCommunicator(await _application(), scope)
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await communicator.receive_output(timeout=2)
    assert start["status"] == 200
    opening = await communicator.receive_output(timeout=2)
    assert b"stream-open" in opening["body"]
    message = await channels_app.apublish("pub-sse", "breaking news")
    chunk = (await communicator.receive_output(timeout=2))["body"].decode()
    assert f"id: {message.position}" in chunk
    data = json.loads(next(line for line in chunk.splitlines() if line.startswith("data: "))[len("data: ") :])
    assert data["payload"] == "breaking news"
    await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait(timeout=2)


async def test_publishing_to_an_unknown_channel_says_so():
    from channels_app.errors import ApplicationError

    with pytest.raises(ApplicationError) as refused:
        await channels_app.apublish("missing", "x")
    assert refused.value.status == 404


PUBLISH_SCRIPT = """
import django

django.setup()
import channels_app

for index in range(5):
    print(channels_app.publish("chat-1", f"from a script {index}").offset)
"""


async def test_publish_from_a_separate_process_reaches_a_redis_backed_server(start_server, redis_server):
    """A script, worker or management command publishes through Redis, call after call."""
    server = start_server(redis_config(redis_server.url))
    async with websockets.connect(f"{server.ws}/api/v1/channels/chat-1?clientId=reader") as ws:
        script = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", PUBLISH_SCRIPT],
            cwd=ROOT,
            env=server.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert script.returncode == 0, script.stderr
        received = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(5)]
    assert [message["payload"] for message in received] == [f"from a script {index}" for index in range(5)]
    assert [message["offset"] for message in received] == [int(line) for line in script.stdout.split()]
