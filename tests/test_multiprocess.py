"""Several server processes behind one port (channels_app/ops/supervisor.py, ``REALTIME_PROCESSES``).

The real entry point is started with two processes on the REDIS driver (a private redis-server),
under daphne and under uvicorn: connections land on both processes (``ss -tnp`` names the process
holding each accepted socket), a message published on one reaches subscribers on the other, a killed
process is replaced, SIGTERM drains both (clients get 1001), and the open-file limit is raised. A scrape
of /metrics, whichever process answers it, sums the figures of both, and drops a process that died.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import websockets

from channels_app.ops import supervisor
from tests.support.clients import closed_with, recv_json
from tests.support.liveserver import SERVERS
from tests.support.processes import (
    ENTRYPOINT,
    LOW_SOFT_FILE_LIMIT,
    ROOT,
    base_environment,
    entrypoint_started,
    free_port,
)
from tests.support.redisserver import RedisServer
from tests.support.waiting import wait_until, wait_until_sync
from tests.test_observability import scraped, the_value

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

VENV_BIN = Path(sys.executable).parent
CHANNEL_CONFIG = """
server:
  allow_push_server_messages: true
pubsub:
  {pubsub}
channels:
  chat:
    id: "chat-1"
    type: "WS"
    max_of_channel_connections: 1000
"""
MEMORY = 'driver: "MEMORY"'


def redis_pubsub(url: str) -> str:
    return f'driver: "REDIS"\n  redis:\n    url: "{url}"'


def entrypoint_env(tmp_path: Path, config_text: str, **overrides: str) -> dict[str, str]:
    config = tmp_path / "realtime.yaml"
    config.write_text(config_text)
    env = base_environment(
        CONFIG_FOLDER_PATH=str(config),
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        HOST="127.0.0.1",
        REALTIME_SHUTDOWN_GRACE_SECONDS="5",
        **overrides,
    )
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    for key in (
        "REALTIME_SUPERVISED", "REALTIME_LISTEN_FD", "REALTIME_PROCESSES", "REALTIME_LISTEN_BACKLOG",
        "REALTIME_METRICS_DIR",
    ):  # fmt: skip
        if key not in overrides:
            env.pop(key, None)
    return env


def children(pid: int) -> list[int]:
    """The child processes of ``pid``."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return sorted(int(word) for word in text.split())


def accepting_pids(port: int) -> dict[int, int]:
    """For each established connection accepted on ``port``: the client's port -> the PID holding the socket."""
    result = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True, check=True
    )
    owners = {}
    for line in result.stdout.splitlines():
        peer = line.split()[3]
        match = re.search(r"pid=(\d+)", line)
        if match:
            owners[int(peer.rsplit(":", 1)[1])] = int(match.group(1))
    return owners


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def open_file_limits(pid: int) -> tuple[int, int]:
    """The soft and hard open-file limits of ``pid``, from /proc/<pid>/limits."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open-file limit for {pid}")


class Instance:
    """The entry point with ``REALTIME_PROCESSES`` server processes, in a session of its own."""

    def __init__(self, tmp_path: Path, env: dict[str, str]):
        self.port = int(env["PORT"])
        self.log_path = tmp_path / "entrypoint.log"
        self.process = entrypoint_started(tmp_path, env, self.log_path)
        self.seen: set[int] = set()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_replaced(self, kept: int, killed: int) -> int:
        """Wait until the supervisor has replaced ``killed`` beside ``kept`` and the replacement listens; its PID."""

        def replaced() -> bool:
            current = self.servers()
            return len(current) == 2 and kept in current and killed not in current

        wait_until_sync(replaced, 30, message=self.log())
        (replacement,) = set(self.servers()) - {kept}
        wait_until_sync(lambda: replacement in self.listeners(), 30, message=self.log())
        return replacement

    def servers(self) -> list[int]:
        """The PIDs of the server processes now running under the supervisor."""
        found = children(self.process.pid)
        self.seen.update(found)
        return found

    def wait_serving(self, processes: int) -> list[int]:
        """Wait until ``processes`` server processes run and the port answers; return their PIDs."""

        def serving() -> bool:
            assert self.process.poll() is None, f"exited with {self.process.returncode}:\n{self.log()}"
            if len(self.servers()) != processes:
                return False
            try:
                return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until_sync(serving, within=60, interval=0.2, message=f"not serving within 60 s:\n{self.log()}")
        # Both processes listen once each has opened its socket (the supervisor holds them from the start).
        wait_until_sync(lambda: self.listeners() >= set(self.servers()), within=30, message=self.log())
        return self.servers()

    def listeners(self) -> set[int]:
        result = subprocess.run(["ss", "-Hltnp", f"sport = :{self.port}"], capture_output=True, text=True, check=True)
        return {int(pid) for pid in re.findall(r"pid=(\d+)", result.stdout)}

    def stop(self) -> None:
        """SIGKILL whatever is left: the supervisor's session, and the server processes' own groups."""
        if self.process.poll() is None:
            for pid in self.servers():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        for pid in self.seen:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def redis_server(tmp_path_factory):
    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


async def connect_spread(port: int, count: int) -> list:
    """``count`` WebSockets on the chat channel, each waited for until the server took it."""
    sockets = []
    for index in range(count):
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/api/v1/channels/chat?clientId=c{index}")
        sockets.append(ws)
    return sockets


def two_processes(tmp_path, server: str, redis_url: str) -> tuple[Instance, int]:
    """The entry point started with two ``server`` processes on Redis, and its port."""
    port = free_port()
    env = entrypoint_env(
        tmp_path, CHANNEL_CONFIG.format(pubsub=redis_pubsub(redis_url)),
        PORT=str(port), REALTIME_SERVER=server, REALTIME_PROCESSES="2",
    )  # fmt: skip
    return Instance(tmp_path, env), port


@pytest.mark.parametrize("server", SERVERS)
async def test_two_processes_share_the_port_and_the_channel(tmp_path, server, redis_server):
    instance, port = two_processes(tmp_path, server, redis_server.url)
    sockets: list = []
    try:
        first, second = await asyncio.to_thread(instance.wait_serving, 2)
        log = instance.log()
        assert "2 server processes on 127.0.0.1:" in log and "SO_REUSEPORT" in log

        # The open-file limit: the soft limit was raised to the hard one, in every server process.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        for pid in (first, second):
            assert open_file_limits(pid) == (hard, hard)
        assert f"open files: soft limit {hard} (was {LOW_SOFT_FILE_LIMIT}), hard limit {hard}" in log

        # Connections land on both processes (the kernel hashes them over the two sockets).
        sockets = await connect_spread(port, 16)
        owner = {}
        for ws in sockets:
            owner[ws] = None

        async def all_owned() -> bool:
            pids = await asyncio.to_thread(accepting_pids, port)
            for ws in sockets:
                owner[ws] = pids.get(ws.local_address[1])
            return all(owner.values())

        await wait_until(all_owned, within=10)
        assert set(owner.values()) == {first, second}, owner

        # A message published through a connection of one process reaches subscribers of the other.
        sender = next(ws for ws in sockets if owner[ws] == first)
        receivers = [ws for ws in sockets if owner[ws] == second]
        await sender.send("across processes")
        for ws in receivers:
            while True:
                frame = await recv_json(ws, within=10)
                if "payload" in frame:
                    break
            assert frame["payload"] == "across processes", frame

        # A killed server process is replaced, and the replacement serves its socket's connections.
        for ws in receivers:
            await ws.close()
        os.kill(second, signal.SIGKILL)
        third = await asyncio.to_thread(instance.wait_replaced, first, second)
        assert "exited with status" in instance.log() and "restarting it" in instance.log()
        more = await connect_spread(port, 16)
        sockets += more

        async def reaches_the_replacement() -> bool:
            pids = await asyncio.to_thread(accepting_pids, port)
            return third in {pids.get(ws.local_address[1]) for ws in more}

        await wait_until(reaches_the_replacement, within=10)

        # SIGTERM: every process drains; clients get the going-away close; the supervisor exits 0.
        open_now = [ws for ws in sockets if ws.state is websockets.State.OPEN]
        instance.process.send_signal(signal.SIGTERM)
        closes = await asyncio.gather(*(closed_with(ws) for ws in open_now))
        assert {code for _, code in closes} == {1001}
        assert {body["control"] for body, _ in closes if body} == {"close"}
        status = await asyncio.to_thread(instance.process.wait, 20)
        assert status == 0, instance.log()
        assert not any(map(running, (first, third)))
        assert instance.log().count("SIGTERM: draining") >= 2
    finally:
        for ws in sockets:
            await ws.close()
        instance.stop()


def metrics_folder(pid: int) -> Path:
    """The folder of the metrics snapshots that server process ``pid`` was given (its environment in /proc)."""
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    folder = Path(dict(entry.decode().split("=", 1) for entry in entries if b"=" in entry)["REALTIME_METRICS_DIR"])
    assert folder.stat().st_mode & 0o777 == 0o700, "the folder is private"
    return folder


def snapshot_files(folder: Path) -> list[str] | None:
    """The names of the snapshots in ``folder``, sorted; None once the folder is gone."""
    return sorted(path.name for path in folder.glob("*.json")) if folder.exists() else None


def scrape_metrics(port: int) -> tuple[int | None, dict[str, list[tuple[dict, float]]]]:
    """``GET /metrics`` on a connection of its own (so the kernel picks the process): the PID that answered,
    from ``ss`` while the connection is still open, and the samples."""
    with httpx.Client(timeout=10) as client:
        response = client.get(f"http://127.0.0.1:{port}/metrics")
        client_port = response.extensions["network_stream"].get_extra_info("client_addr")[1]
        owner = accepting_pids(port).get(client_port)
    assert response.status_code == 200, response.text
    return owner, scraped(response.text)


def chat_connections(samples: dict) -> float:
    """The WebSocket subscriptions to the chat channel that a scrape reports."""
    (value,) = [value for labels, value in samples["realtime_connections"] if labels["channel"] == "chat-1"]
    return value


async def frames_with_payload(ws, count: int) -> list[str]:
    """The payloads of the next ``count`` messages ``ws`` receives (control frames skipped)."""
    payloads = []
    while len(payloads) < count:
        frame = await recv_json(ws, within=10)
        if "payload" in frame:
            payloads.append(frame["payload"])
    return payloads


@pytest.mark.timeout(180)
@pytest.mark.parametrize("server", SERVERS)
async def test_every_scrape_describes_every_process(tmp_path, server, redis_server):
    instance, port = two_processes(tmp_path, server, redis_server.url)
    sockets: list = []
    try:
        first, second = await asyncio.to_thread(instance.wait_serving, 2)
        metrics_dir = metrics_folder(first)
        assert metrics_folder(second) == metrics_dir

        # Subscribers on both processes; one message published through each.
        sockets = await connect_spread(port, 16)
        owner: dict = {}

        async def all_owned() -> bool:
            pids = await asyncio.to_thread(accepting_pids, port)
            owner.update({ws: pids.get(ws.local_address[1]) for ws in sockets})
            return all(owner.values())

        await wait_until(all_owned, within=10)
        assert set(owner.values()) == {first, second}, owner
        senders = [next(ws for ws in sockets if owner[ws] == pid) for pid in (first, second)]
        for sender, pid in zip(senders, (first, second), strict=True):
            await sender.send(f"from {pid}")
        received = await asyncio.gather(*(frames_with_payload(ws, 1 if ws in senders else 2) for ws in sockets))
        delivered = sum(map(len, received))
        assert delivered == 2 * (len(sockets) - 1)

        # Every scrape, whichever process answers it, reports both processes' figures summed.
        async def settled() -> bool:
            _, samples = await asyncio.to_thread(scrape_metrics, port)
            return the_value(samples, "realtime_deliveries_total") == delivered

        await wait_until(settled, within=10)
        answered = set()
        for _ in range(24):
            pid, samples = await asyncio.to_thread(scrape_metrics, port)
            answered.add(pid)
            assert the_value(samples, "realtime_server_processes") == 2, pid
            assert the_value(samples, "realtime_server_processes_stale") == 0, pid
            assert chat_connections(samples) == len(sockets), pid
            assert samples["realtime_connections_opened_total"] == [({"transport": "ws"}, len(sockets))], pid
            assert the_value(samples, "realtime_messages_published_total") == 2, pid
            assert the_value(samples, "realtime_deliveries_total") == delivered, pid
            # Each process handed each message to its subscribers once: one observation each, summed.
            assert the_value(samples, "realtime_publish_to_deliver_seconds_count") == 4, pid
            assert the_value(samples, "realtime_redis_up") == 1, pid
        assert answered == {first, second}
        assert snapshot_files(metrics_dir) == sorted([f"{first}.json", f"{second}.json"])

        # A killed process leaves the sums at once: the supervisor removes its snapshot, long before
        # it would be stale; the connections it held and the message it published are gone with it.
        os.kill(second, signal.SIGKILL)
        await asyncio.to_thread(
            wait_until_sync, lambda: f"{second}.json" not in snapshot_files(metrics_dir), 3, message=instance.log()
        )
        third = await asyncio.to_thread(instance.wait_replaced, first, second)
        survivors = [ws for ws in sockets if owner[ws] == first]
        for _ in range(12):
            pid, samples = await asyncio.to_thread(scrape_metrics, port)
            assert pid in (first, third)
            assert the_value(samples, "realtime_server_processes") in (1, 2), pid  # 2 once the replacement wrote
            assert the_value(samples, "realtime_server_processes_stale") == 0, pid
            assert chat_connections(samples) == len(survivors), pid
            assert the_value(samples, "realtime_messages_published_total") == 1, pid
        assert f"{second}.json" not in snapshot_files(metrics_dir)

        # SIGTERM: the supervisor removes the folder when it stops.
        instance.process.send_signal(signal.SIGTERM)
        status = await asyncio.to_thread(instance.process.wait, 20)
        assert status == 0, instance.log()
        assert snapshot_files(metrics_dir) is None
    finally:
        for ws in sockets:
            await ws.close()
        instance.stop()


def test_a_supervisor_of_several_processes_shares_a_metrics_folder(tmp_path):
    folder = supervisor.metrics_dir_create()
    try:
        assert folder.is_dir() and folder.stat().st_mode & 0o777 == 0o700
        for name in ("41.json", ".41.x1y2.tmp", "42.json", ".42.z3.tmp"):
            (folder / name).write_text("{}")
        supervisor.metrics_snapshot_remove(folder, 41)
        supervisor.metrics_snapshot_remove(folder, 43)  # nothing written yet: nothing to remove
        assert sorted(path.name for path in folder.iterdir()) == [".42.z3.tmp", "42.json"]
    finally:
        shutil.rmtree(folder)
    with socket.socket() as sock:
        run = supervisor.Supervisor(["true"], [sock], grace=1, env={"A": "1"}, metrics_dir=tmp_path)
        assert run.env == {"A": "1", supervisor.METRICS_DIR_VAR: str(tmp_path)}
        assert supervisor.Supervisor(["true"], [sock], grace=1, env={"A": "1"}).env == {"A": "1"}


def test_memory_driver_with_several_processes_is_refused(tmp_path):
    env = entrypoint_env(tmp_path, CHANNEL_CONFIG.format(pubsub=MEMORY), PORT=str(free_port()), REALTIME_PROCESSES="2")
    result = subprocess.run([str(ENTRYPOINT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "REALTIME_PROCESSES=2 needs pubsub.driver REDIS" in result.stderr
    assert 'Write REALTIME_PROCESSES=1, or set pubsub.driver: "REDIS"' in result.stderr
    assert not (tmp_path / "db.sqlite3").exists(), "refused before migrating"


def test_several_processes_need_one_signing_key():
    postgres = {"DATABASE_URL": "postgres://realtime@db/realtime"}
    with pytest.raises(supervisor.SupervisorError, match="set DJANGO_SECRET_KEY"):
        supervisor.check_shared_key(postgres, 2)
    supervisor.check_shared_key(postgres, 1)
    supervisor.check_shared_key({**postgres, "DJANGO_SECRET_KEY": "k"}, 2)
    supervisor.check_shared_key({**postgres, "REALTIME_DATA_DIR": "/data"}, 2)
    supervisor.check_shared_key({"DATABASE_URL": "sqlite:////data/db.sqlite3"}, 2)  # the key file in /data


def test_bad_settings_are_refused_with_the_fix(tmp_path):
    config = CHANNEL_CONFIG.format(pubsub=MEMORY)
    for variable, value in (
        ("REALTIME_PROCESSES", "two"),
        ("REALTIME_PROCESSES", "0"),
        ("REALTIME_LISTEN_BACKLOG", "x"),
    ):
        env = entrypoint_env(tmp_path, config, PORT=str(free_port()), **{variable: value})
        result = subprocess.run([str(ENTRYPOINT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (variable, value, result.stderr)
        assert f"{variable}={value} is not" in result.stderr


def test_children_that_keep_dying_stop_the_supervisor(tmp_path, redis_server):
    env = entrypoint_env(
        tmp_path, CHANNEL_CONFIG.format(pubsub=redis_pubsub(redis_server.url)),
        PORT=str(free_port()), REALTIME_PROCESSES="2",
    )  # fmt: skip
    command = [sys.executable, "-m", "channels_app.ops.supervisor", "--", "sh", "-c", "exit 3"]
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "exited with status 3: restarting it" in result.stderr
    assert f"{supervisor.MAX_RESTARTS + 1} exits within" in result.stderr
    # Restarts wait a little each: a crash loop does not spin (two children, six exits: each restarted twice).
    assert time.monotonic() - started >= 2 * supervisor.RESTART_DELAY_SECONDS


def test_process_count():
    assert supervisor.process_count(None) == 1
    assert supervisor.process_count(" 3 ") == 3
    assert supervisor.process_count("auto", cores=6) == 6
    assert supervisor.process_count("AUTO") == supervisor.available_cores() >= 1
    for bad in ("0", "-1", "1.5", "many"):
        with pytest.raises(supervisor.SupervisorError, match=f"REALTIME_PROCESSES={bad} is not"):
            supervisor.process_count(bad)


def test_available_cores_follows_the_cgroup_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert supervisor.available_cores(tmp_path) == min(affinity, 2)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert supervisor.available_cores(tmp_path) == affinity
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert supervisor.available_cores(tmp_path) == 1


@pytest.mark.parametrize("nodelay", [True, False])
def test_listening_sockets_share_the_port(nodelay):
    port = free_port()
    sockets = supervisor.listening_sockets("127.0.0.1", port, 2, 100, nodelay=nodelay)
    try:
        for sock in sockets:
            assert sock.getsockname() == ("127.0.0.1", port) and sock.get_inheritable()
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        # What a server accepts carries the listener's TCP_NODELAY (uvicorn's, without --fd).
        client = socket.create_connection(("127.0.0.1", port))
        ready, _, _ = select.select(sockets, [], [], 5)
        accepted, _ = ready[0].accept()
        assert bool(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)) is nodelay
        accepted.close()
        client.close()
    finally:
        for sock in sockets:
            sock.close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(supervisor.SupervisorError, match="cannot listen on 127.0.0.1"):
            supervisor.listening_sockets("127.0.0.1", taken.getsockname()[1], 2, 100, nodelay=False)


def test_file_limit_warning_names_the_need():
    limit = supervisor.FileLimit(soft_before=1024, soft=20_000, hard=20_000)
    assert supervisor.check_file_limit(limit, connections=19_000) is None
    warning = supervisor.check_file_limit(limit, connections=25_000)
    assert warning and f"{25_000 + supervisor.RESERVED_FILES} files" in warning and "--ulimit nofile=" in warning
