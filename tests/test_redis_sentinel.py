"""Through Sentinel, a Redis master failover is survived by every instance."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import httpx
import pytest
import redis
import websockets

from tests.conftest import TEST_CONFIG
from tests.support.auth import API_KEY, AUTH
from tests.support.liveserver import start_pair
from tests.support.processes import free_port
from tests.support.redisserver import RedisServer

pytestmark = pytest.mark.redis  # a master, a replica and a sentinel of its own


class Sentinel:
    """A redis-server running in sentinel mode, watching one master."""

    def __init__(self, work_dir, master_port: int):
        self.port = free_port()
        self.config = work_dir / f"sentinel-{self.port}.conf"
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndaemonize yes\npidfile {work_dir}/sentinel-{self.port}.pid\n"
            f"logfile {work_dir}/sentinel-{self.port}.log\ndir {work_dir}\n"
            f"sentinel monitor mymaster 127.0.0.1 {master_port} 1\n"
            "sentinel down-after-milliseconds mymaster 1000\n"
            "sentinel failover-timeout mymaster 5000\n"
            "sentinel parallel-syncs mymaster 1\n"
        )
        subprocess.run(["redis-server", str(self.config), "--sentinel"], check=True)
        self.pid_file = work_dir / f"sentinel-{self.port}.pid"

    def master_port(self) -> int:
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        return int(client.sentinel_get_master_addr_by_name("mymaster")[1])

    def stop(self) -> None:
        if self.pid_file.exists():
            subprocess.run(["kill", "-9", self.pid_file.read_text().strip()], check=False)


@pytest.fixture
def sentinel_setup(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("sentinel")
    master = RedisServer.start(work_dir)
    replica = RedisServer.start(work_dir, "--replicaof", "127.0.0.1", str(master.port))
    deadline = time.monotonic() + 10
    while replica.client().info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "replica never synced"
        time.sleep(0.1)
    sentinel = Sentinel(work_dir, master.port)
    yield master, replica, sentinel
    sentinel.stop()
    replica.stop()
    master.stop()


def test_master_failover_is_survived(start_server, sentinel_setup):
    master, replica, sentinel = sentinel_setup
    config = TEST_CONFIG.replace(
        'driver: "MEMORY"',
        f'driver: "REDIS"\n  redis:\n    sentinels: ["127.0.0.1:{sentinel.port}"]\n    master_name: "mymaster"',
    )
    env = {"REALTIME_API_KEYS": API_KEY}
    first, second = start_pair(start_server, config, env=env)

    async def scenario():
        async with (
            websockets.connect(second.channel_url("chat-1", clientId="listener")) as listener,
            httpx.AsyncClient(headers=AUTH, timeout=10) as client,
        ):
            before = await client.post(f"{first.http}/api/v1/channels/chat-1/messages", json={"payload": "before"})
            received_before = json.loads(await asyncio.wait_for(listener.recv(), 5))
            master.stop()
            failed_over_after = None
            started = time.monotonic()
            while time.monotonic() - started < 30:
                if sentinel.master_port() == replica.port:
                    failed_over_after = time.monotonic() - started
                    break
                await asyncio.sleep(0.2)
            delivered = None
            deadline = time.monotonic() + 30
            while delivered is None and time.monotonic() < deadline:
                response = await client.post(f"{first.http}/api/v1/channels/chat-1/messages", json={"payload": "after"})
                if response.status_code != 201:
                    await asyncio.sleep(0.5)
                    continue
                try:
                    delivered = json.loads(await asyncio.wait_for(listener.recv(), 3))
                except TimeoutError:
                    continue
            return before, received_before, failed_over_after, delivered

    before, received_before, failed_over_after, delivered = asyncio.run(scenario())
    assert before.status_code == 201
    assert received_before["payload"] == "before"
    assert failed_over_after is not None, "sentinel never promoted the replica"
    assert delivered is not None and delivered["payload"] == "after"
    # History was replicated: the offset continues on the promoted replica.
    assert delivered["offset"] > received_before["offset"]
