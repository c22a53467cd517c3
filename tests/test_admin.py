"""The Django admin for channels (channels_app/admin.py)."""

from __future__ import annotations

import re
import uuid

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from channels_app.admin import YAML_OVERWRITE_WARNING
from channels_app.models import Channel

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:channels_app_channel_changelist")


@pytest.fixture
def yaml_channel():
    """A channel written by sync_channels."""
    return Channel.objects.create(
        name="chat", public_id="chat-1", type="WS", max_connections=10, source=Channel.Source.YAML
    )


@pytest.fixture
def api_channel():
    """A channel created through the HTTP API."""
    return Channel.objects.create(
        name="alerts", public_id="alerts-1", type="SSE", max_connections=7, source=Channel.Source.API
    )


def change_url(channel: Channel) -> str:
    """The admin change page of ``channel``."""
    return reverse("admin:channels_app_channel_change", args=[channel.pk])


def test_list_shows_name_id_type_limit_source_and_active(admin_client, yaml_channel, api_channel):
    response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    page = response.content.decode()
    for header in ("column-name", "column-public_id", "column-kind", "column-connections", "column-source"):
        assert header in page
    assert "column-active" in page
    assert ">chat</a>" in page and "chat-1" in page and "alerts-1" in page
    assert "YAML file" in page and "HTTP API" in page
    assert '<td class="field-kind">WS</td>' in page and '<td class="field-connections">0 / 7</td>' in page


def test_the_admin_names_the_service_and_view_site_is_the_landing_page(admin_client):
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert "<title>Channels and users | Realtime admin</title>" in page
    assert '<div id="site-name"><a href="/admin/">Realtime administration</a></div>' in page
    assert re.search(r'<a href="/">View site</a>', page)
    assert admin_client.get("/").status_code == 200


def test_the_add_form_proposes_a_random_id_that_can_be_changed(admin_client):
    proposed = [
        re.search(r'name="public_id" value="([^"]+)"', admin_client.get(reverse("admin:channels_app_channel_add")).text)
        for _ in range(2)
    ]
    ids = [match.group(1) for match in proposed]
    assert all(str(uuid.UUID(value)) == value for value in ids) and ids[0] != ids[1]
    response = admin_client.post(
        reverse("admin:channels_app_channel_add"), ADD_FORM | {"public_id": ids[0], "name": "ops"}
    )
    assert response.status_code == 302
    assert Channel.objects.get(name="ops").public_id == ids[0]


def test_the_change_page_shows_connections_and_history_read_only(admin_client, api_channel):
    page = admin_client.get(change_url(api_channel)).content.decode()
    assert '<div class="readonly" id="live-connections">0 of 7</div>' in page
    assert 'id="recent-messages-empty"' in page


def test_send_test_message_asks_for_a_payload_first(admin_client, yaml_channel, api_channel):
    form = {"action": "send_test_message", "_selected_action": [yaml_channel.pk, api_channel.pk]}
    response = admin_client.post(CHANGELIST, form)
    assert response.status_code == 200
    page = response.content.decode()
    assert "Send a test message" in page and 'name="payload"' in page
    assert "Test message from the admin (admin)" in page
    assert page.count(f'name="_selected_action" value="{yaml_channel.pk}"') == 1
    assert "chat-1" in page and "alerts-1" in page
    assert "<script>" not in page and " style=" not in page


def test_send_test_message_refuses_an_oversized_payload_on_its_form(admin_client, yaml_channel):
    form = {"action": "send_test_message", "_selected_action": [yaml_channel.pk], "apply": "Send"}
    response = admin_client.post(CHANGELIST, form | {"payload": "x" * 70_000})
    assert response.status_code == 200
    assert response.context["form"].errors["payload"][0].startswith("The payload is 70000 bytes; the limit is")
    empty = admin_client.post(CHANGELIST, form | {"payload": ""})
    assert empty.status_code == 200 and "payload" in empty.context["form"].errors


def test_list_search_by_name_or_id(admin_client, yaml_channel, api_channel):
    by_name = admin_client.get(CHANGELIST, {"q": "alerts"}).context["cl"]
    by_id = admin_client.get(CHANGELIST, {"q": "chat-1"}).context["cl"]
    assert [channel.public_id for channel in by_name.result_list] == ["alerts-1"]
    assert [channel.public_id for channel in by_id.result_list] == ["chat-1"]


def test_list_filters_by_source_and_type(admin_client, yaml_channel, api_channel):
    by_source = admin_client.get(CHANGELIST, {"source__exact": "yaml"}).context["cl"]
    by_type = admin_client.get(CHANGELIST, {"type__exact": "SSE"}).context["cl"]
    assert [channel.public_id for channel in by_source.result_list] == ["chat-1"]
    assert [channel.public_id for channel in by_type.result_list] == ["alerts-1"]


def test_yaml_channel_page_warns_that_sync_overwrites_edits(admin_client, yaml_channel):
    response = admin_client.get(change_url(yaml_channel))
    assert response.status_code == 200
    assert YAML_OVERWRITE_WARNING in response.content.decode()
    assert "the next sync_channels run overwrites edits made here" in YAML_OVERWRITE_WARNING


def test_api_channel_page_has_no_warning(admin_client, api_channel):
    response = admin_client.get(change_url(api_channel))
    assert response.status_code == 200
    assert 'value="alerts-1"' in response.content.decode()
    assert YAML_OVERWRITE_WARNING not in response.content.decode()


def test_warning_is_not_carried_to_the_next_page(admin_client, yaml_channel):
    admin_client.get(change_url(yaml_channel))
    assert YAML_OVERWRITE_WARNING not in admin_client.get(CHANGELIST).content.decode()


def test_yaml_channel_id_and_name_are_read_only(admin_client, yaml_channel):
    page = admin_client.get(change_url(yaml_channel)).content.decode()
    assert 'name="public_id"' not in page
    assert 'name="name"' not in page
    assert 'name="max_connections"' in page


def test_editing_a_yaml_channels_limit_is_saved(admin_client, yaml_channel):
    data = {
        "type": "WS",
        "max_connections": 3,
        "history_size": 100,
        "history_ttl": 3600,
        "payload_format": "text",
        "active": "on",
    }
    response = admin_client.post(change_url(yaml_channel), data)
    assert response.status_code == 302
    yaml_channel.refresh_from_db()
    assert (yaml_channel.max_connections, yaml_channel.name, yaml_channel.source) == (3, "chat", "yaml")


def test_channel_created_in_admin_is_marked_admin(admin_client):
    data = {
        "name": "ops",
        "public_id": "ops-1",
        "type": "SSE",
        "max_connections": 5,
        "history_size": 10,
        "history_ttl": 60,
        "payload_format": "json",
        "active": "on",
    }
    response = admin_client.post(reverse("admin:channels_app_channel_add"), data)
    assert response.status_code == 302
    created = Channel.objects.get(public_id="ops-1")
    assert (created.source, created.payload_format) == (Channel.Source.ADMIN, "json")


def test_admin_refuses_ids_unusable_in_urls(admin_client):
    data = {"name": "ops", "public_id": "ops 1", "type": "SSE", "max_connections": 5, "history_size": 1}
    response = admin_client.post(reverse("admin:channels_app_channel_add"), data | {"history_ttl": 60})
    assert response.status_code == 200
    assert not Channel.objects.exists()


ADD_FORM = {
    "type": "SSE",
    "max_connections": 5,
    "history_size": 10,
    "history_ttl": 60,
    "payload_format": "text",
    "active": "on",
}


@pytest.mark.parametrize(
    ("identity", "field", "message"),
    [
        ({"public_id": "chat", "name": "other"}, "public_id", "The id 'chat' is already the name of channel 'chat-1'"),
        ({"public_id": "other", "name": "chat-1"}, "name", "The name 'chat-1' is already the id of channel 'chat-1'"),
    ],
)
def test_add_form_refuses_another_channels_id_or_name(admin_client, yaml_channel, identity, field, message):
    response = admin_client.post(reverse("admin:channels_app_channel_add"), ADD_FORM | identity)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == [field]
    assert errors[field][0].startswith(message)
    assert list(Channel.objects.values_list("public_id", flat=True)) == ["chat-1"]


@pytest.mark.parametrize(
    ("identity", "field"), [({"public_id": "chat", "name": "alerts"}, "public_id"), ({"name": "chat-1"}, "name")]
)
def test_change_form_refuses_another_channels_id_or_name(admin_client, yaml_channel, api_channel, identity, field):
    response = admin_client.post(change_url(api_channel), ADD_FORM | {"public_id": "alerts-1"} | identity)
    assert response.status_code == 200
    assert list(response.context["adminform"].form.errors) == [field]
    api_channel.refresh_from_db()
    assert (api_channel.public_id, api_channel.name) == ("alerts-1", "alerts")


def test_change_form_accepts_the_channels_own_id_as_its_name(admin_client, yaml_channel, api_channel):
    response = admin_client.post(change_url(api_channel), ADD_FORM | {"public_id": "alerts-1", "name": "alerts-1"})
    assert response.status_code == 302
    api_channel.refresh_from_db()
    assert api_channel.name == "alerts-1"


def test_full_clean_refuses_another_channels_id_or_name(yaml_channel):
    with pytest.raises(ValidationError) as caught:
        Channel(public_id="chat", name="chat-1", type="WS").full_clean()
    assert sorted(caught.value.message_dict) == ["name", "public_id"]


def test_anonymous_user_is_redirected_to_login(client, yaml_channel):
    for url in (CHANGELIST, change_url(yaml_channel)):
        response = client.get(url)
        assert response.status_code == 302
        assert response.url.startswith(reverse("admin:login"))


@pytest.mark.django_db(transaction=True)
def test_admin_shows_live_connections_and_its_actions_reach_real_clients(start_server, tmp_path):
    """Against a real daphne: the list counts live connections; both actions reach a WebSocket client."""
    import asyncio
    import json
    import re

    import httpx
    import websockets

    from tests.support.processes import manage

    server = start_server()
    manage(
        "shell", "-c",
        "from django.contrib.auth.models import User; User.objects.create_superuser('root', 'r@x.io', 'pw-123456')",
        env=server.env,
    )  # fmt: skip

    async def scenario():
        async with (
            websockets.connect(server.channel_url("chat-1", clientId="watcher")) as ws,
            httpx.AsyncClient(base_url=server.http, follow_redirects=True) as client,
        ):
            login_page = await client.get("/admin/login/")
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login_page.text).group(1)
            await client.post(
                "/admin/login/?next=/admin/",
                data={"username": "root", "password": "pw-123456", "csrfmiddlewaretoken": token},
                headers={"Referer": f"{server.http}/admin/login/"},
            )
            listing = await client.get("/admin/channels_app/channel/")
            row_id = re.search(r'href="/admin/channels_app/channel/(\d+)/change/[^"]*">chat<', listing.text)
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', listing.text).group(1)
            form = {"_selected_action": row_id.group(1), "csrfmiddlewaretoken": token, "index": "0"}
            headers = {"Referer": f"{server.http}/admin/channels_app/channel/"}
            asked = await client.post(
                "/admin/channels_app/channel/", data={**form, "action": "send_test_message"}, headers=headers
            )
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', asked.text).group(1)
            sent = {**form, "csrfmiddlewaretoken": token, "action": "send_test_message", "apply": "Send"}
            await client.post("/admin/channels_app/channel/", data={**sent, "payload": '{"typed": "by staff"}'},
                              headers=headers)  # fmt: skip
            test_message = json.loads(await asyncio.wait_for(ws.recv(), 5))
            change_page = await client.get(f"/admin/channels_app/channel/{row_id.group(1)}/change/")
            await client.post(
                "/admin/channels_app/channel/", data={**form, "action": "disconnect_everyone"}, headers=headers
            )
            control = json.loads(await asyncio.wait_for(ws.recv(), 5))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            return listing.text, asked.text, test_message, change_page.text, control, closed.value.rcvd.code

    listing, asked, test_message, change_page, control, close_code = asyncio.run(scenario())
    assert "Connections (live / max)" in listing
    assert re.search(r'<td class="field-connections">1 / 5</td>', listing)
    assert 'name="payload"' in asked
    assert test_message["payload"] == '{"typed": "by staff"}'
    assert '<div class="readonly" id="live-connections">1 of 5</div>' in change_page
    assert "<td>{&quot;typed&quot;: &quot;by staff&quot;}</td>" in change_page
    assert control["error"] == "disconnected"
    assert close_code == 4000
