"""A bad configuration file stops every entry point before anything is served (realtime_project/settings.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.processes import ROOT, base_environment, free_port, manage

BAD_CONFIG = """
server:
  alow_all_origins: true
channels:
  chat:
    id: "chat-1"
    type: "WS"
    max_of_channel_connections: 0
"""


@pytest.fixture
def bad_config(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(BAD_CONFIG)
    return path


def assert_reports_bad_config(output: str, path) -> None:
    """The output names the file, each key and what to write."""
    assert f"realtime: {path}: 2 configuration problems:" in output
    assert "server.alow_all_origins: unknown key: did you mean 'allow_all_origins'?" in output
    assert "channels.chat.max_of_channel_connections: must be a positive integer (at least 1), not 0" in output


def test_manage_check_passes_with_a_good_file(tmp_path):
    env = base_environment(
        CONFIG_FOLDER_PATH=str(ROOT / "configs/memory.config.yaml"), DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3"
    )
    result = manage("check", env=env, check=False)
    assert result.returncode == 0, result.stderr


def test_manage_check_stops_on_a_bad_file(bad_config, tmp_path):
    env = base_environment(CONFIG_FOLDER_PATH=str(bad_config), DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3")
    result = manage("check", env=env, check=False)
    assert result.returncode == 2
    assert_reports_bad_config(result.stderr, bad_config)


def test_folder_path_is_read_and_checked(tmp_path):
    (tmp_path / "config.yaml").write_text(BAD_CONFIG)
    env = base_environment(CONFIG_FOLDER_PATH=str(tmp_path), DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3")
    result = manage("check", env=env, check=False)
    assert result.returncode == 2
    assert_reports_bad_config(result.stderr, tmp_path / "config.yaml")


def test_missing_file_stops_startup(tmp_path):
    env = base_environment(CONFIG_FOLDER_PATH=str(tmp_path / "nope.yaml"))
    result = manage("check", env=env, check=False)
    assert result.returncode == 2
    assert f"realtime: {tmp_path / 'nope.yaml'}: 1 configuration problem:" in result.stderr
    assert "point CONFIG_FOLDER_PATH at a YAML file or a folder holding config.yaml" in result.stderr


def test_unset_environment_variable_stops_startup(tmp_path):
    config = tmp_path / "redis.yaml"
    config.write_text('pubsub:\n  driver: "REDIS"\n  redis:\n    url: "redis://:${RT_TEST_UNSET_PW}@localhost/0"\n')
    env = base_environment(CONFIG_FOLDER_PATH=str(config))
    env.pop("RT_TEST_UNSET_PW", None)
    result = manage("check", env=env, check=False)
    assert result.returncode == 2
    assert "pubsub.redis.url: environment variable RT_TEST_UNSET_PW is not set" in result.stderr


@pytest.mark.e2e
def test_daphne_stops_on_a_bad_file(bad_config, tmp_path):
    env = base_environment(CONFIG_FOLDER_PATH=str(bad_config), DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3")
    command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(free_port())]
    process = subprocess.Popen(
        [*command, "realtime_project.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"daphne kept running with a bad configuration file:\n{output}")
    assert process.returncode == 2
    assert_reports_bad_config(output, bad_config)
