"""One channel, one identity (channels_app/identity.py): no id or name may be another channel's id or name.

The rule itself, the HTTP API against real daphne and uvicorn servers, and two processes creating
clashing channels at once on SQLite and on PostgreSQL. The YAML loader, sync_channels and the admin
are tested in test_config.py, test_sync_channels.py and test_admin.py.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from hypothesis import given

from channels_app.config import IDENTIFIER_PATTERN
from channels_app.identity import ChannelIdentity, Collision, identity_collisions
from tests.conftest import POSTGRES_SERVER
from tests.support.auth import API_KEY, AUTH
from tests.support.processes import ROOT, base_environment, manage
from tests.support.strategies import IDENTIFIER_ALPHABET, any_text

CHAT = ChannelIdentity("chat-1", "chat")


def test_an_id_or_name_used_by_another_channel_collides_in_both_columns():
    feed = ChannelIdentity("feed-1", "feed")
    assert identity_collisions(ChannelIdentity("chat", "news"), [CHAT, feed]) == [Collision("id", "chat", CHAT, "name")]
    assert identity_collisions(ChannelIdentity("news-1", "chat-1"), [CHAT]) == [Collision("name", "chat-1", CHAT, "id")]
    assert identity_collisions(ChannelIdentity("chat-1", "chat"), [CHAT]) == [
        Collision("id", "chat-1", CHAT, "id"),
        Collision("name", "chat", CHAT, "name"),
    ]


def test_a_channel_may_keep_its_own_identity_and_use_its_id_as_name():
    assert identity_collisions(ChannelIdentity("news", "news"), [CHAT]) == []
    assert identity_collisions(ChannelIdentity("chat", "chat-1"), [ChannelIdentity("chat-1", "chat", same=True)]) == []


def test_the_message_names_the_other_channel_and_what_to_change():
    (collision,) = identity_collisions(ChannelIdentity("chat", "news"), [CHAT])
    assert collision.message == (
        "The id 'chat' is already the name of channel 'chat-1' (named 'chat'): choose another id."
    )


# --- the HTTP API, under daphne and uvicorn ---------------------------------------------------


@pytest.fixture(scope="module")
def api_server(start_module_server, asgi_server):
    """TEST_CONFIG (chat-1 "chat", chat-2 "other-chat", feed-1 "feed") with an API key, once per server."""
    return start_module_server(server=asgi_server, env={"REALTIME_API_KEYS": API_KEY})


def create(server, **body) -> httpx.Response:
    """``POST /api/v1/channels`` with ``body``."""
    return httpx.post(f"{server.http}/api/v1/channels", json=body, headers=AUTH, timeout=10)


def preflight(server, reference: str) -> httpx.Response:
    """What ``reference`` resolves to: ``GET /api/v1/channels/<reference>?upgrade=0``."""
    return httpx.get(server.channel_url(reference, scheme="http", upgrade="0"), timeout=10)


def test_api_refuses_an_id_that_is_another_channels_name(api_server):
    response = create(api_server, id="chat", name="impostor", type="SSE")
    assert response.status_code == 409
    assert response.json() == {
        "error": "channel_exists",
        "message": "The id 'chat' is already the name of channel 'chat-1' (named 'chat'): choose another id.",
        "field": "id",
        "channel": "chat-1",
    }
    assert preflight(api_server, "chat").json()["id"] == "chat-1"
    assert preflight(api_server, "impostor").status_code == 404


def test_api_refuses_a_name_that_is_another_channels_id(api_server):
    response = create(api_server, id="impostor-2", name="feed-1", type="WS")
    assert response.status_code == 409
    assert response.json()["error"] == "channel_exists"
    assert response.json()["field"] == "name"
    assert "The name 'feed-1' is already the id of channel 'feed-1' (named 'feed')" in response.json()["message"]
    assert preflight(api_server, "impostor-2").status_code == 404
    assert create(api_server, id="fresh-1", name="fresh", type="WS").status_code == 201


# --- two processes at once ---------------------------------------------------------------------

# Creates one channel through channel_create; with a hold, it waits after its INSERT, before the commit.
CREATE_SCRIPT = """
import asyncio, time
from unittest import mock
from types import SimpleNamespace
from channels_app.core.channel_services import channel_create, channel_draft_parse
from channels_app.models import Channel

save = Channel.save

def save_then_hold(self, *args, **kwargs):
    save(self, *args, **kwargs)
    print("saved", flush=True)
    time.sleep({hold})

try:
    with mock.patch.object(Channel, "save", save_then_hold):
        body = {{"id": {id!r}, "name": {name!r}, "type": "WS", "maxOfChannelConnections": 10}}
        draft = channel_draft_parse(body, server=SimpleNamespace(history_size=10, history_ttl=60))
        asyncio.run(channel_create(draft=draft))
    print("created", flush=True)
except Exception as error:
    print(type(error).__name__, getattr(error, "code", ""), error, flush=True)
"""
HOLD_SECONDS = 1.5


def create_command(channel_id: str, name: str, hold: float) -> list[str]:
    """``manage.py shell`` creating one channel, holding its transaction open ``hold`` seconds after the INSERT."""
    script = CREATE_SCRIPT.format(id=channel_id, name=name, hold=hold)
    return [sys.executable, "manage.py", "shell", "--no-imports", "-c", script]


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    """A migrated database shared by the processes of one test: a SQLite file, then PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/identity.sqlite3"
    else:
        url = f"{POSTGRES_SERVER}/{request.getfixturevalue('postgres_database')}"
    manage("migrate", "--noinput", env=base_environment(DATABASE_URL=url))
    return url


@pytest.mark.timeout(120)
def test_two_processes_creating_clashing_channels_at_once_create_one(database_url):
    """A's name is B's id: B checks while A's row is written but not committed, and must still see it."""
    env = base_environment(DATABASE_URL=database_url)
    first = subprocess.Popen(
        create_command("room-a", "room-b", HOLD_SECONDS), cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout.readline().strip() == "saved"
        second = subprocess.run(
            create_command("room-b", "room-a", 0), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        first_output = first.communicate(timeout=60)[0]
    finally:
        first.kill()
    script = "from channels_app.models import Channel; print(*Channel.objects.values_list('public_id', flat=True))"
    listing = manage("shell", "--no-imports", "-c", script, env=env)
    assert first_output.strip() == "created"
    assert second.stdout.strip().startswith("ApplicationError channel_exists The id 'room-b' is already the name of")
    assert listing.stdout.split() == ["room-a"]


# --- The identifier rule, for any text (hypothesis) (moved from test_hardening_properties.py) -----


@given(any_text)
def test_identifier_pattern_is_the_documented_rule(raw):
    documented = 1 <= len(raw) <= 100 and set(raw) <= set(IDENTIFIER_ALPHABET) and set(raw) != {"."}
    assert bool(IDENTIFIER_PATTERN.match(raw)) is documented
