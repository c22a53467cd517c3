"""django-eventstream's ``send_event`` reaches WebSocket and SSE subscribers through the one publish path,
with history and resume: from a view in the serving process (both drivers) and from another process
(REDIS)."""

import asyncio
import json

import httpx
import pytest
import websockets

from tests.conftest import TEST_CONFIG, redis_config
from tests.support.clients import open_stream, opened, recv_json
from tests.support.processes import run_python

SERVES_SEND_EVENT_VIEW = {"DJANGO_SETTINGS_MODULE": "tests.eventstream_settings"}

SCRIPT = """
import sys

import django

django.setup()
from django_eventstream import send_event

for data in sys.argv[2:]:
    send_event(sys.argv[1], "message", {"text": data})
"""


@pytest.fixture(params=["memory", "redis"])
def driver(request) -> str:
    return request.param


@pytest.fixture
def server(request, driver, start_server):
    if driver == "memory":
        return start_server(TEST_CONFIG, env=SERVES_SEND_EVENT_VIEW)
    redis_server = request.getfixturevalue("redis_server")
    return start_server(redis_config(redis_server.url), env=SERVES_SEND_EVENT_VIEW)


@pytest.fixture
def senders(driver) -> list[str]:
    """How an app calls send_event here: in a view of the serving process, and under REDIS in a script too."""
    return ["view", "script"] if driver == "redis" else ["view"]


async def send_events(server, sender: str, channel: str, *texts: str) -> None:
    if sender == "view":
        async with httpx.AsyncClient(timeout=10) as client:
            for text in texts:
                answer = await client.post(
                    f"{server.http}/test/send-event", json={"channel": channel, "data": {"text": text}}
                )
                assert answer.status_code == 204, answer.text
        return
    code = SCRIPT.replace("sys.argv[1]", repr(channel)).replace("sys.argv[2:]", repr(list(texts)))
    script = await asyncio.to_thread(run_python, code, env=server.env, timeout=60)
    assert script.returncode == 0, script.stderr[-3000:]


async def test_send_event_reaches_a_websocket_subscriber(server, senders):
    for sender in senders:
        async with websockets.connect(f"{server.ws}/api/v1/channels/chat-1?clientId=reader-{sender}") as ws:
            await send_events(server, sender, "chat-1", f"{sender}-1", f"{sender}-2")
            received = [await recv_json(ws) for _ in range(2)]
        assert [json.loads(message["payload"]) for message in received] == [
            {"text": f"{sender}-1"},
            {"text": f"{sender}-2"},
        ]
        assert received[1]["offset"] == received[0]["offset"] + 1
        assert received[0]["clientId"] == "server-message"


async def test_send_event_reaches_an_sse_subscriber_that_resumes_after_a_disconnect(server, senders):
    url = f"{server.http}/api/v1/channels/feed-1?clientId=resumer"
    for sender in senders:
        async with open_stream(url) as (_, events):
            await opened(events)
            await send_events(server, sender, "feed-1", f"{sender}-seen")
            last_id, seen = await events.message()
        assert json.loads(seen["payload"]) == {"text": f"{sender}-seen"}
        await send_events(server, sender, "feed-1", f"{sender}-missed-1", f"{sender}-missed-2")
        async with open_stream(url, {"Last-Event-ID": last_id}) as (_, events):
            await opened(events)
            resumed = [(await events.message())[1] for _ in range(2)]
        assert [json.loads(message["payload"]) for message in resumed] == [
            {"text": f"{sender}-missed-1"},
            {"text": f"{sender}-missed-2"},
        ]
        assert resumed[0]["offset"] == seen["offset"] + 1


async def test_send_event_to_an_unknown_channel_fails_and_sends_nothing(server):
    async with websockets.connect(f"{server.ws}/api/v1/channels/chat-1?clientId=watcher") as ws:
        async with httpx.AsyncClient(timeout=10) as client:
            with pytest.raises(httpx.HTTPError):
                # The view does not catch send_event's error: Django answers 500 (or the server drops it).
                answer = await client.post(f"{server.http}/test/send-event", json={"channel": "nope", "data": 1})
                answer.raise_for_status()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.5)


@pytest.mark.django_db(transaction=True)
async def test_the_storage_answers_django_eventstreams_reads_from_history(inprocess):
    """``get_current_id`` and ``get_events`` (what django-eventstream's own views would call) read history;
    events no longer held raise ``EventDoesNotExist`` with the current id."""
    from asgiref.sync import sync_to_async
    from django_eventstream import send_event
    from django_eventstream.storage import EventDoesNotExist

    from channels_app.eventstream import RealtimeStorage
    from channels_app.models import Channel

    await Channel.objects.acreate(public_id="es-1", name="es-news", type="SSE", max_connections=5, history_size=3)
    await inprocess()
    for index in range(5):
        await sync_to_async(send_event)("es-news", "message", {"n": index})
    storage = RealtimeStorage()
    assert await sync_to_async(storage.get_current_id)("es-news") == 5
    events = await sync_to_async(storage.get_events)("es-news", 3)
    assert [(event.id, json.loads(event.data)) for event in events] == [(4, {"n": 3}), (5, {"n": 4})]
    assert await sync_to_async(storage.get_events)("es-news", 5) == []
    with pytest.raises(EventDoesNotExist) as gone:
        await sync_to_async(storage.get_events)("es-news", 0)
    assert gone.value.current_id == 5
    with pytest.raises(ValueError, match='event_type="message"'):
        await sync_to_async(send_event)("es-news", "update", {"n": 9})
