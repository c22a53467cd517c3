"""Settings read from the environment (realtime_project/settings.py): DATABASE_URL, and a real PostgreSQL."""

from __future__ import annotations

import pytest

from realtime_project import settings as project_settings
from tests.conftest import POSTGRES_SERVER, psql
from tests.support.processes import ROOT, base_environment, manage


def test_sqlite_relative_path_is_under_the_project_folder():
    database = project_settings._database_from_url("sqlite:///var/realtime.sqlite3")
    assert database["ENGINE"] == "django.db.backends.sqlite3"
    assert database["NAME"] == str(ROOT / "var" / "realtime.sqlite3")


def test_sqlite_default_url():
    assert project_settings._database_from_url("sqlite:///db.sqlite3")["NAME"] == str(ROOT / "db.sqlite3")


def test_sqlite_absolute_path(tmp_path):
    database = project_settings._database_from_url(f"sqlite:///{tmp_path}/rt.sqlite3")
    assert database["NAME"] == f"{tmp_path}/rt.sqlite3"


def test_postgres_url_is_split_into_its_parts():
    database = project_settings._database_from_url("postgres://app:p%40ss@db.internal:6543/realtime")
    assert database["ENGINE"] == "django.db.backends.postgresql"
    assert (database["NAME"], database["USER"], database["PASSWORD"]) == ("realtime", "app", "p@ss")
    assert (database["HOST"], database["PORT"]) == ("db.internal", "6543")


def test_postgresql_scheme_without_password_or_port():
    database = project_settings._database_from_url("postgresql://postgres@localhost/rt")
    assert database["ENGINE"] == "django.db.backends.postgresql"
    assert (database["USER"], database["PASSWORD"], database["HOST"], database["PORT"]) == (
        "postgres",
        "",
        "localhost",
        "",
    )


def test_unsupported_scheme_exits_with_a_message(capsys):
    with pytest.raises(SystemExit) as caught:
        project_settings._database_from_url("mysql://root@localhost/rt")
    assert caught.value.code == 2
    assert "DATABASE_URL mysql://... is not supported: use sqlite:///path or postgres://" in capsys.readouterr().err


def test_tests_run_on_the_default_configuration():
    assert project_settings.REALTIME.pubsub.driver in ("MEMORY", "REDIS")
    assert project_settings.CHANNEL_LAYERS["default"]["BACKEND"].startswith("channels")


def test_migrate_and_sync_channels_on_postgres(postgres_database):
    env = base_environment(
        DATABASE_URL=f"{POSTGRES_SERVER}/{postgres_database}",
        CONFIG_FOLDER_PATH=str(ROOT / "configs/memory.config.yaml"),
    )
    migrated = manage("migrate", "--noinput", env=env, check=False)
    assert migrated.returncode == 0, migrated.stderr

    first = manage("sync_channels", env=env, check=False)
    second = manage("sync_channels", env=env, check=False)

    assert first.returncode == 0, first.stderr

    assert "2 created, 0 updated, 0 unchanged" in first.stdout
    assert "0 created, 0 updated, 2 unchanged" in second.stdout
    rows = psql(
        "-d",
        postgres_database,
        "-c",
        "SELECT name, public_id, type, max_connections, source FROM channels_app_channel ORDER BY name",
    )
    assert rows.stdout.splitlines() == [
        "my-chat-example|742fc7fe-1527-4184-8945-10b30bf01347|WS|100|yaml",
        "my-notification-example|f71a6fb5-8962-48f4-a0dd-5cf60c42a70f|SSE|100|yaml",
    ]
