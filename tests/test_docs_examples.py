"""Every Python example in the README and docs/ runs as written against the example configuration.

Each ```python block is run in a process of its own, as `python manage.py shell` would run it,
against a server serving configs/redis.config.yaml; the message it publishes must reach a
WebSocket subscriber of the example chat channel.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from tests.support.documents import code_blocks
from tests.support.processes import ROOT, run_python

EXAMPLE_CONFIG = ROOT / "configs" / "redis.config.yaml"
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# What `python manage.py shell` sets up before it runs what you type.
SHELL_PREAMBLE = "import django\ndjango.setup()\n"


def examples() -> list[tuple[str, str]]:
    return code_blocks(DOCUMENTS, "python")


def test_the_examples_are_found():
    names = [name for name, _ in examples()]
    assert len(names) >= 4, names
    assert any(name.startswith("README.md") for name in names)


@pytest.fixture(scope="module")
def example_server(start_module_server, tmp_path_factory):
    from tests.support.redisserver import RedisServer

    redis = RedisServer.start(tmp_path_factory.mktemp("redis"))
    env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis.port)}
    yield start_module_server(EXAMPLE_CONFIG.read_text(), env=env)
    redis.stop()


@pytest.mark.redis  # example_server starts its own redis-server
@pytest.mark.parametrize(("name", "code"), examples(), ids=[name for name, _ in examples()])
def test_an_example_runs_as_written_and_its_message_arrives(example_server, name, code):
    async def scenario():
        url = example_server.channel_url("my-chat-example", clientId="reader")
        async with websockets.connect(url) as ws:
            run = await asyncio.to_thread(run_python, SHELL_PREAMBLE + code, env=example_server.env, timeout=60)
            assert run.returncode == 0, f"{name} failed:\n{run.stderr[-3000:]}"
            return json.loads(await asyncio.wait_for(ws.recv(), 5))

    message = asyncio.run(scenario())
    assert message["channelId"] == "742fc7fe-1527-4184-8945-10b30bf01347"
    assert message["clientId"] == "server-message"
