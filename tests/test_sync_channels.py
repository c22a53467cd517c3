"""``python manage.py sync_channels`` and the service behind it (channels_app/registry/sync.py)."""

from __future__ import annotations

import sqlite3
import textwrap
from io import StringIO
from unittest import mock

import pytest
from django.core.management import CommandError, call_command

from channels_app.config import parse_config
from channels_app.models import Channel
from channels_app.registry.sync import SyncConflict, channels_sync
from tests.support.processes import base_environment, manage

pytestmark = pytest.mark.django_db

TWO_CHANNELS = """
channels:
  chat:
    id: "chat-1"
    type: "WS"
    max_of_channel_connections: 10
  feed:
    id: "feed-1"
    type: "SSE"
"""


@pytest.fixture
def write_config(tmp_path):
    """Write YAML text to a file and return its path."""

    def write(text: str, name: str = "realtime.yaml") -> str:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return str(path)

    return write


def sync(path: str, *args: str) -> str:
    """Run ``sync_channels --config path *args`` and return what it printed."""
    out = StringIO()
    call_command("sync_channels", "--config", path, *args, stdout=out)
    return out.getvalue()


def snapshot() -> list[tuple]:
    """Every channel row, every column, to prove nothing was written."""
    return list(Channel.objects.order_by("pk").values_list())


def test_creates_the_files_channels(write_config):
    output = sync(write_config(TWO_CHANNELS))
    chat = Channel.objects.get(public_id="chat-1")
    assert (chat.name, chat.type, chat.max_connections, chat.source, chat.active) == ("chat", "WS", 10, "yaml", True)
    assert Channel.objects.get(public_id="feed-1").max_connections == 100
    assert "created: chat\ncreated: feed\n" in output
    assert "2 created, 0 updated, 0 unchanged, 0 deactivated" in output


def test_second_run_changes_nothing(write_config):
    path = write_config(TWO_CHANNELS)
    sync(path)
    before = snapshot()
    output = sync(path)
    assert snapshot() == before
    assert "unchanged: chat\nunchanged: feed\n" in output
    assert "0 created, 0 updated, 2 unchanged, 0 deactivated" in output


def test_updates_changed_channels(write_config):
    sync(write_config(TWO_CHANNELS))
    output = sync(write_config(TWO_CHANNELS.replace("10", "25").replace('"SSE"', '"WS"')))
    assert Channel.objects.get(public_id="chat-1").max_connections == 25
    assert Channel.objects.get(public_id="feed-1").type == "WS"
    assert "updated: chat\nupdated: feed\n" in output


def test_renamed_channel_keeps_its_id(write_config):
    sync(write_config(TWO_CHANNELS))
    sync(write_config(TWO_CHANNELS.replace("chat:", "room:")))
    assert Channel.objects.get(public_id="chat-1").name == "room"
    assert Channel.objects.count() == 2


def test_name_handed_over_to_a_new_channel(write_config):
    sync(write_config(TWO_CHANNELS))
    output = sync(
        write_config(
            """
            channels:
              chat: {id: "chat-2", type: "WS"}
              chat-legacy: {id: "chat-1", type: "WS"}
            """
        )
    )
    assert Channel.objects.get(public_id="chat-1").name == "chat-legacy"
    assert Channel.objects.get(public_id="chat-2").name == "chat"
    assert "created: chat\nupdated: chat-legacy\n" in output


@pytest.mark.parametrize(
    ("renamed", "names"),
    [
        pytest.param(
            'channels:\n  feed: {id: "chat-1", type: "WS"}\n  chat: {id: "feed-1", type: "SSE"}\n',
            {"chat-1": "feed", "feed-1": "chat"},
            id="two_channels_swap_names",
        ),
        pytest.param(
            'channels:\n  room: {id: "chat-1", type: "WS"}\n  chat-2: {id: "chat", type: "WS"}\n',
            {"chat-1": "room", "chat": "chat-2"},
            id="name_freed_by_a_rename_may_become_an_id",
        ),
    ],
)
def test_names_and_ids_handed_around_in_one_sync(write_config, renamed, names):
    sync(write_config(TWO_CHANNELS))
    sync(write_config(renamed))
    for public_id, name in names.items():
        assert Channel.objects.get(public_id=public_id).name == name


def test_without_prune_removed_channels_stay_active(write_config):
    sync(write_config(TWO_CHANNELS))
    output = sync(write_config('channels:\n  chat: {id: "chat-1", type: "WS", max_of_channel_connections: 10}\n'))
    assert Channel.objects.get(public_id="feed-1").active is True
    assert "deactivated: feed" not in output
    assert "1 unchanged, 0 deactivated" in output


def test_prune_deactivates_yaml_channels_no_longer_in_the_file(write_config):
    sync(write_config(TWO_CHANNELS))
    output = sync(
        write_config('channels:\n  chat: {id: "chat-1", type: "WS", max_of_channel_connections: 10}\n'), "--prune"
    )
    assert Channel.objects.get(public_id="feed-1").active is False
    assert Channel.objects.get(public_id="chat-1").active is True
    assert "deactivated: feed\n" in output
    assert "0 created, 0 updated, 1 unchanged, 1 deactivated" in output


def test_channel_back_in_the_file_is_reactivated(write_config):
    path = write_config(TWO_CHANNELS)
    sync(path)
    sync(write_config("channels: {}\n", name="empty.yaml"), "--prune")
    assert not Channel.objects.filter(active=True).exists()
    output = sync(path)
    assert Channel.objects.filter(active=True).count() == 2
    assert "updated: chat\nupdated: feed\n" in output


def test_dry_run_writes_nothing(write_config):
    output = sync(write_config(TWO_CHANNELS), "--dry-run")
    assert Channel.objects.count() == 0
    assert "would be created: chat\n" in output
    assert "(dry run: nothing written)" in output


def test_dry_run_of_update_and_prune_writes_nothing(write_config):
    sync(write_config(TWO_CHANNELS))
    before = snapshot()
    output = sync(
        write_config('channels:\n  chat: {id: "chat-1", type: "WS", max_of_channel_connections: 99}\n'),
        "--prune",
        "--dry-run",
    )
    assert snapshot() == before
    assert "would be updated: chat\nwould be deactivated: feed\n" in output


def test_bad_file_raises_with_the_loaders_messages_and_writes_nothing(write_config):
    sync(write_config(TWO_CHANNELS))
    before = snapshot()
    bad = write_config(
        'channels:\n  chat: {id: "chat-1", type: "WS", max_of_channel_connections: 0}\n  new: {id: "new-1"}\n',
        name="bad.yaml",
    )
    with pytest.raises(CommandError) as caught:
        sync(bad, "--prune")
    message = str(caught.value)
    assert message.startswith(f"{bad}: 2 configuration problems:")
    assert "channels.chat.max_of_channel_connections: must be a positive integer" in message
    assert 'channels.new.type: is missing: add  type: "WS" or "SSE"' in message
    assert snapshot() == before


def test_missing_file_raises(tmp_path):
    with pytest.raises(CommandError, match="no configuration file here"):
        sync(str(tmp_path / "missing.yaml"))


def test_api_and_admin_channels_are_never_touched(write_config):
    for source in (Channel.Source.API, Channel.Source.ADMIN):
        Channel.objects.create(name=f"from-{source}", public_id=f"{source}-1", type="WS", source=source)
    before = snapshot()
    sync(write_config(TWO_CHANNELS))
    sync(write_config("channels: {}\n", name="empty.yaml"), "--prune")
    after = [row for row in snapshot() if row[1].startswith("from-")]
    assert after == before


def test_id_taken_by_an_api_channel_is_a_conflict_and_nothing_is_written(write_config):
    Channel.objects.create(name="api-chat", public_id="chat-1", type="SSE", source=Channel.Source.API)
    before = snapshot()
    with pytest.raises(CommandError) as caught:
        sync(write_config(TWO_CHANNELS))
    message = str(caught.value)
    assert "channels.chat: the id 'chat-1' belongs to channel 'api-chat', created through the HTTP API" in message
    assert "change the id in the file, or delete that channel" in message
    assert snapshot() == before


def test_name_taken_by_an_admin_channel_is_a_conflict(write_config):
    Channel.objects.create(name="feed", public_id="admin-feed", type="SSE", source=Channel.Source.ADMIN)
    with pytest.raises(
        CommandError, match="the name 'feed' is used by channel 'admin-feed', created through the Admin"
    ):
        sync(write_config(TWO_CHANNELS))
    assert not Channel.objects.filter(source=Channel.Source.YAML).exists()


def test_all_conflicts_are_reported_together():
    Channel.objects.create(name="x", public_id="chat-1", type="WS", source=Channel.Source.API)
    Channel.objects.create(name="feed", public_id="y", type="WS", source=Channel.Source.ADMIN)
    with pytest.raises(SyncConflict) as caught:
        channels_sync(config=parse_config(TWO_CHANNELS))
    assert [conflict.split(":")[0] for conflict in caught.value.conflicts] == ["channels.chat", "channels.feed"]
    assert str(caught.value).startswith("2 channels collide")


@pytest.mark.parametrize(
    ("holder", "message"),
    [
        (
            {"name": "chat-1", "public_id": "api-7", "source": Channel.Source.API},
            "channels.chat: the id 'chat-1' is the name of channel 'api-7', created through the HTTP API: "
            "change the id in the file, or rename that channel",
        ),
        (
            {"name": "admin-feed", "public_id": "feed", "source": Channel.Source.ADMIN},
            "channels.feed: the name 'feed' is the id of channel 'admin-feed', created through the Admin: "
            "rename the channel in the file, or delete that channel",
        ),
    ],
)
def test_id_or_name_that_is_another_channels_name_or_id_is_a_conflict(write_config, holder, message):
    Channel.objects.create(type="SSE", **holder)
    with pytest.raises(CommandError) as caught:
        sync(write_config(TWO_CHANNELS))
    assert message in str(caught.value)
    assert not Channel.objects.filter(source=Channel.Source.YAML).exists()


@pytest.mark.parametrize(
    ("renamed", "message"),
    [
        pytest.param(
            'channels:\n  room: {id: "chat", type: "WS"}\n',
            "the id 'chat' still belongs to channel id 'chat-1' as its name",
            id="id_that_is_the_name_of_a_yaml_channel_no_longer_in_the_file",
        ),
        pytest.param(
            'channels:\n  chat: {id: "chat-9", type: "WS"}\n',
            "the name 'chat' still belongs to channel id 'chat-1'",
            id="name_held_by_a_yaml_channel_no_longer_in_the_file",
        ),
    ],
)
def test_what_a_yaml_channel_no_longer_in_the_file_held_is_a_conflict(write_config, renamed, message):
    sync(write_config(TWO_CHANNELS))
    with pytest.raises(CommandError, match=message):
        sync(write_config(renamed))


def test_failure_while_writing_rolls_everything_back():
    real_create = Channel.objects.create
    calls = []

    def create_then_fail(**fields):
        calls.append(fields["name"])
        if len(calls) == 2:
            raise RuntimeError("database went away")
        return real_create(**fields)

    with mock.patch.object(Channel.objects, "create", side_effect=create_then_fail):
        with pytest.raises(RuntimeError):
            channels_sync(config=parse_config(TWO_CHANNELS))
    assert calls == ["chat", "feed"]
    assert Channel.objects.count() == 0


def test_without_config_option_uses_the_configured_file(settings):
    settings.REALTIME = parse_config(TWO_CHANNELS, path="configured.yaml")
    out = StringIO()
    call_command("sync_channels", stdout=out)
    assert set(Channel.objects.values_list("public_id", flat=True)) == {"chat-1", "feed-1"}
    assert "configured.yaml: 2 created" in out.getvalue()


def test_report_says_whether_anything_changed():
    config = parse_config(TWO_CHANNELS)
    assert channels_sync(config=config).changed is True
    report = channels_sync(config=config)
    assert report.changed is False
    assert report.unchanged == ["chat", "feed"]


def test_command_exits_non_zero_on_a_bad_file(tmp_path):
    database = tmp_path / "db.sqlite3"
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(TWO_CHANNELS)
    bad.write_text('channels:\n  chat: {id: "chat 1", type: "WS"}\n')
    env = base_environment(DATABASE_URL=f"sqlite:///{database}", CONFIG_FOLDER_PATH=str(good))
    manage("migrate", "--noinput", env=env)
    manage("sync_channels", env=env)

    result = manage("sync_channels", "--config", str(bad), "--prune", env=env, check=False)

    assert result.returncode == 2
    assert f"{bad}: 1 configuration problem" in result.stderr
    assert "channels.chat.id: 'chat 1' cannot be used in a URL or a group name" in result.stderr
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT public_id, active FROM channels_app_channel ORDER BY public_id").fetchall()
    assert rows == [("chat-1", 1), ("feed-1", 1)]
