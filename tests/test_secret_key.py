"""Without DJANGO_SECRET_KEY, the embedded run keeps its key in the data folder (channels_app/ops/secret_key.py):
a restart keeps admins logged in, the file is readable by its owner only, and the logs say where it is."""

from __future__ import annotations

import re
import stat
import threading
from pathlib import Path

import httpx
import pytest

from channels_app.ops import secret_key
from channels_app.ops.secret_key import KEY_FILE_NAME, SecretKeyFileError, secret_key_keep
from realtime_project.settings import data_folder
from tests.support.processes import ROOT, base_environment, manage

NO_KEY = {"DJANGO_SECRET_KEY": ""}
ADMIN_PASSWORD = "pw-123456-long-enough"


def test_the_first_call_creates_the_key_file_readable_by_its_owner_only(tmp_path):
    first = secret_key_keep(tmp_path)
    assert first.created and first.path == tmp_path / KEY_FILE_NAME
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600
    assert len(first.key) >= 50
    again = secret_key_keep(tmp_path)
    assert (again.key, again.created) == (first.key, False)


def test_processes_starting_together_agree_on_one_key(tmp_path):
    kept = []
    threads = [threading.Thread(target=lambda: kept.append(secret_key_keep(tmp_path))) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({item.key for item in kept}) == 1
    assert sum(item.created for item in kept) == 1


def test_an_empty_key_file_is_refused_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(secret_key, "_WRITE_WAIT_SECONDS", 0.1)
    (tmp_path / KEY_FILE_NAME).write_text("")
    with pytest.raises(SecretKeyFileError, match="is empty: delete it"):
        secret_key_keep(tmp_path)


def test_the_data_folder_is_realtime_data_dir_or_the_sqlite_databases_folder(tmp_path):
    sqlite = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "db.sqlite3")}
    postgres = {"ENGINE": "django.db.backends.postgresql", "NAME": "realtime"}
    assert data_folder(sqlite, None) == tmp_path
    assert data_folder(sqlite, "/data") == Path("/data")
    assert data_folder(postgres, None) is None
    assert data_folder(postgres, str(tmp_path)) == tmp_path


def _settings_of(env: dict[str, str]) -> tuple[str, str]:
    """SECRET_KEY_FILE and SECRET_KEY_PROBLEM as a new process's settings make them."""
    shown = "from django.conf import settings as s; print(s.SECRET_KEY_FILE); print(s.SECRET_KEY_PROBLEM)"
    file, problem = manage("shell", "-v", "0", "-c", shown, env=env).stdout.split("\n")[:2]
    return file, problem


def test_settings_keep_the_key_beside_the_database_or_in_realtime_data_dir(tmp_path):
    database = base_environment(DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3", **NO_KEY)
    assert _settings_of(database) == (str(tmp_path / KEY_FILE_NAME), "")
    assert (tmp_path / KEY_FILE_NAME).exists()
    elsewhere = tmp_path / "data"
    elsewhere.mkdir()
    assert _settings_of(database | {"REALTIME_DATA_DIR": str(elsewhere)}) == (str(elsewhere / KEY_FILE_NAME), "")
    # From the environment, the key is used as it is and no file is read or written.
    given = base_environment(DATABASE_URL=f"sqlite:///{tmp_path}/given/db.sqlite3", DJANGO_SECRET_KEY="k" * 50)
    assert _settings_of(given) == ("None", "")
    assert not (tmp_path / "given").exists()


def test_without_a_usable_data_folder_the_key_is_per_process_and_the_check_says_why(tmp_path):
    (tmp_path / "a-file").write_text("")
    env = base_environment(
        DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3", REALTIME_DATA_DIR=str(tmp_path / "a-file"), **NO_KEY
    )
    file, problem = _settings_of(env)
    assert file == "None" and problem.startswith(f"the key file could not be kept in {tmp_path / 'a-file'}")
    checked = manage("check", "--deploy", env=env, check=False)
    assert "realtime.W002" in checked.stderr and "a random key is used for this process only" in checked.stderr


def test_production_mode_still_needs_the_key_from_the_environment_and_writes_none(tmp_path):
    env = base_environment(
        DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3",
        CONFIG_FOLDER_PATH=str(ROOT / "configs/memory.config.yaml"),
        DJANGO_SECURE="1",
        **NO_KEY,
    )
    refused = manage("check", env=env, check=False)
    assert refused.returncode == 2 and "DJANGO_SECURE=1 needs DJANGO_SECRET_KEY" in refused.stderr
    assert not (tmp_path / KEY_FILE_NAME).exists()


def _log_in(client: httpx.Client) -> None:
    login = client.get("/admin/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)
    client.post(
        "/admin/login/?next=/admin/",
        data={"username": "staff", "password": ADMIN_PASSWORD, "csrfmiddlewaretoken": token},
        headers={"Referer": f"{client.base_url}/admin/login/"},
    )


def test_an_admin_stays_logged_in_across_a_restart(start_server):
    """Two starts of a real server on one data folder: the session cookie of the first is still valid."""
    server = start_server(env=NO_KEY)
    create_user = (
        f"from django.contrib.auth.models import User; User.objects.create_superuser('staff', '', '{ADMIN_PASSWORD}')"
    )
    manage("shell", "-c", create_user, env=server.env)
    key_file = server.database_path.parent / KEY_FILE_NAME
    with httpx.Client(base_url=server.http, timeout=5) as client:
        _log_in(client)
        assert client.get("/admin/").status_code == 200
        server.stop()
        server.run()
        after_restart = client.get("/admin/")
    assert after_restart.status_code == 200, "logged out by the restart"
    assert "Channels and users" in after_restart.text
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert f"using the key kept in {key_file}" in server.log()
    assert "readable by this user only" in server.log()
