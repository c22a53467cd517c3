"""The Python publishing API reaches WebSocket and SSE subscribers through the one publish path."""

import asyncio
import json

import pytest
import websockets
from asgiref.sync import sync_to_async
from channels.testing import ApplicationCommunicator, WebsocketCommunicator

import channels_app
from channels_app.models import Channel
from tests.conftest import redis_config
from tests.support.processes import run_python

pytestmark = pytest.mark.django_db(transaction=True)


async def test_apublish_and_publish_reach_a_websocket_subscriber(inprocess):
    await Channel.objects.acreate(public_id="pub-ws", name="pub-ws", type="WS", max_connections=5)
    communicator = WebsocketCommunicator((await inprocess()).application, "/api/v1/channels/pub-ws?clientId=reader")
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


async def test_a_published_value_reaches_a_json_subscriber_as_that_value_and_a_string_as_a_string(inprocess):
    await Channel.objects.acreate(public_id="pub-json", name="pub-json", type="WS", max_connections=5)
    application = (await inprocess()).application
    as_json = WebsocketCommunicator(application, "/api/v1/channels/pub-json?clientId=json&payload=json")
    as_text = WebsocketCommunicator(application, "/api/v1/channels/pub-json?clientId=text")
    assert (await as_json.connect())[0] and (await as_text.connect())[0]
    await channels_app.apublish("pub-json", {"order": 7})
    await sync_to_async(channels_app.publish)("pub-json", '{"order": 8}')
    assert [json.loads(await as_json.receive_from(timeout=2))["payload"] for _ in range(2)] == [
        {"order": 7},
        '{"order": 8}',
    ]
    assert [json.loads(await as_text.receive_from(timeout=2))["payload"] for _ in range(2)] == [
        '{"order":7}',
        '{"order": 8}',
    ]
    await as_json.disconnect()
    await as_text.disconnect()


async def test_apublish_reaches_an_sse_subscriber(inprocess):
    await Channel.objects.acreate(public_id="pub-sse", name="pub-sse", type="SSE", max_connections=5)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/api/v1/channels/pub-sse",
        "query_string": b"clientId=reader",
        "headers": [(b"host", b"testserver")],
    }
    communicator = ApplicationCommunicator((await inprocess()).application, scope)
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


async def test_publishing_to_an_unknown_channel_says_so(inprocess):
    from channels_app.errors import ApplicationError

    await inprocess()  # this process serves subscribers
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
        script = await asyncio.to_thread(run_python, PUBLISH_SCRIPT, env=server.env, timeout=60)
        assert script.returncode == 0, script.stderr
        received = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(5)]
    assert [message["payload"] for message in received] == [f"from a script {index}" for index in range(5)]
    assert [message["offset"] for message in received] == [int(line) for line in script.stdout.split()]


MIXED_CALLS_SCRIPT = """
import asyncio
import threading

import django

django.setup()
from django.db import transaction

import channels_app

sent = []


def publish(label):
    channels_app.publish("chat-1", label)
    sent.append(label)


async def apublish(label):
    await channels_app.apublish("chat-1", label)
    sent.append(label)


for round in range(10):
    publish(f"sync-{round}")  # a script's plain call
    asyncio.run(apublish(f"run-{round}"))  # a new event loop per call, after a sync call
    publish(f"after-run-{round}")  # a sync call after that loop closed

    async def several(round=round):
        for index in range(3):
            await apublish(f"loop-{round}-{index}")  # several calls on one loop
        await asyncio.to_thread(publish, f"to-thread-{round}")  # sync, called from async code

    asyncio.run(several())
    with transaction.atomic():
        transaction.on_commit(lambda round=round: publish(f"on-commit-{round}"))
    thread = threading.Thread(target=lambda round=round: asyncio.run(apublish(f"thread-{round}")))
    thread.start()
    thread.join()
    publish(f"last-{round}")
print(len(sent))
"""


async def test_a_hundred_mixed_sync_and_async_calls_from_any_event_loop_are_each_delivered_once(
    start_server, redis_server
):
    """REDIS driver, from a process that serves nothing: a second asyncio.run(apublish(...)), or one after a
    sync publish(), raised "Event loop is closed" / "attached to a different loop" after recording the message."""
    server = start_server(redis_config(redis_server.url))
    async with websockets.connect(f"{server.ws}/api/v1/channels/chat-1?clientId=reader") as ws:
        script = await asyncio.to_thread(run_python, MIXED_CALLS_SCRIPT, env=server.env, timeout=120)
        assert script.returncode == 0, script.stderr[-3000:]
        assert script.stdout.split() == ["100"]
        received = [json.loads(await asyncio.wait_for(ws.recv(), 5))["payload"] for _ in range(100)]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 1)
    assert len(set(received)) == 100
    assert {label.rsplit("-", 1)[0].rstrip("-0123456789") for label in received} == {
        "sync", "run", "after-run", "loop", "to-thread", "on-commit", "thread", "last"
    }  # fmt: skip


NOT_SERVING_SCRIPT = """
import asyncio

import django

django.setup()
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

import channels_app

attempts = {
    "publish": lambda: channels_app.publish("chat-1", "lost?"),
    "apublish": lambda: asyncio.run(channels_app.apublish("chat-1", "lost?")),
    "on_commit": lambda: transaction.on_commit(lambda: channels_app.publish("chat-1", "lost?")),
}
for name, attempt in attempts.items():
    try:
        result = attempt()
    except ImproperlyConfigured as error:
        print(name, "refused:", error)
    else:
        print(name, "returned", result)
"""


async def test_memory_driver_publishing_from_a_process_that_serves_nothing_refuses_and_says_what_works(start_server):
    """A shell, command or worker has its own in-memory layer, which no subscriber listens to."""
    server = start_server()
    async with websockets.connect(f"{server.ws}/api/v1/channels/chat-1?clientId=reader") as ws:
        script = await asyncio.to_thread(run_python, NOT_SERVING_SCRIPT, env=server.env, timeout=60)
        assert script.returncode == 0, script.stderr[-3000:]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 1)
    lines = script.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["publish", "refused:"],
        ["apublish", "refused:"],
        ["on_commit", "refused:"],
    ]
    for line in lines:
        assert "POST /api/v1/channels/<channel>/messages" in line and "pubsub.driver REDIS" in line
