"""Every Python client example in README.md, docs/python-client.md and clients/python/README.md runs as written.

They are fenced ```py, not ```python: tests/test_docs_examples.py runs ```python blocks as Django
code against a server whose address they cannot know. Here each runs in a process of its own
against configs/memory.config.yaml served with ``REALTIME_API_KEYS=key1``, its
``http://127.0.0.1:8080`` pointed at that server. A subscriber example (``async for``) runs until
stopped: it must print a message published while it runs.
"""

from __future__ import annotations

import re
import select
import subprocess
import sys
import time

import httpx
import pytest
from client_helpers import TOKEN_SECRET
from realtime_client import Publisher

from tests.support.documents import code_blocks
from tests.support.liveserver import ROOT, base_environment

DOCUMENTS = [ROOT / "README.md", ROOT / "docs" / "python-client.md", ROOT / "clients" / "python" / "README.md"]
EXAMPLE_URL = "http://127.0.0.1:8080"
EXAMPLE_KEY = "key1"


def examples() -> list[tuple[str, str]]:
    return code_blocks(DOCUMENTS, "py")


def test_every_document_has_examples():
    names = [name for name, _ in examples()]
    for document in DOCUMENTS:
        assert any(name.startswith(str(document.relative_to(ROOT)) + "#") for name in names), document
    assert all(EXAMPLE_URL in code for _, code in examples())


@pytest.fixture(scope="module")
def example_server(start_module_server):
    config = (ROOT / "configs" / "memory.config.yaml").read_text()
    return start_module_server(config, env={"REALTIME_API_KEYS": EXAMPLE_KEY})


def wait_until_gone(server, channel: str, client_id: str) -> None:
    """Wait until the stopped example's connection has let its clientId go."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        query = {"upgrade": "0", "clientId": client_id}
        if httpx.get(f"{server.http}/api/v1/channels/{channel}", params=query, timeout=5).status_code == 200:
            return
        time.sleep(0.1)
    raise AssertionError(f"{client_id} is still connected to {channel}")


def run_subscriber(server, name: str, command: list[str], env: dict[str, str]) -> str:
    """Run a subscriber example, publishing until it prints a line; that line."""
    with (
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as run,
        Publisher(server.http, EXAMPLE_KEY) as publisher,
    ):
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and run.poll() is None:
                for channel in ("my-chat-example", "my-notification-example"):
                    publisher.publish(channel, f"hello from {name}")
                if select.select([run.stdout], [], [], 0.3)[0]:
                    return run.stdout.readline()
            raise AssertionError(f"{name} printed nothing: {run.stderr.read() if run.poll() is not None else ''}")
        finally:
            run.terminate()
            run.wait(10)


@pytest.mark.parametrize(("name", "code"), examples(), ids=[name for name, _ in examples()])
def test_an_example_runs_as_written(example_server, name, code):
    command = [sys.executable, "-c", code.replace(EXAMPLE_URL, example_server.http)]
    env = base_environment(PYTHONPATH=str(ROOT / "clients" / "python" / "src"), REALTIME_TOKEN_SECRET=TOKEN_SECRET)
    if "async for" in code:
        line = run_subscriber(example_server, name, command, env)
        assert f"hello from {name}" in line, line
        client_id = re.search(r'client_id="([^"]+)"', code).group(1)
        for channel in ("my-chat-example", "my-notification-example"):
            wait_until_gone(example_server, channel, client_id)
        return
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"{name} failed:\n{run.stderr[-3000:]}"
