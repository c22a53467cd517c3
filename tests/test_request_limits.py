"""What one HTTP request may cost (channels_app/http/limits.py), under daphne and uvicorn.

Raw-socket clients, so that what the server answers *before* a body is sent can be seen: a
declared body over the limit, a chunked body passing it, an unauthenticated write, a trickled
head, a stalled body. The server's memory (VmRSS) and its temporary files (open files under the
TMPDIR it is given) are read from /proc. The deadlines are lowered to 1.5 s here.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import websockets

from realtime_project.settings import request_body_limit
from tests.conftest import TEST_CONFIG, memory_runtime
from tests.support.auth import API_KEY
from tests.support.clients import open_stream, opened
from tests.support.processes import base_environment, manage, resident_kib

AUTH = f"Authorization: Bearer {API_KEY}"
DEADLINE = 1.5
LIMIT = 2_621_440  # REALTIME_MAX_REQUEST_BODY_BYTES with the default max_message_size (64 KiB)
HUGE = 700 << 20
PUSH_PATH = "/api/v1/channels/chat-1/messages"

LARGE_CONFIG = TEST_CONFIG.replace("server:\n", "server:\n  max_message_size: 1048576\n", 1)


@pytest.fixture(scope="module")
def temp_dir(tmp_path_factory, asgi_server) -> Path:
    return tmp_path_factory.mktemp(f"{asgi_server}-tmp")


@pytest.fixture(scope="module")
def server(start_module_server, asgi_server, temp_dir):
    env = {
        "REALTIME_API_KEYS": API_KEY,
        "TMPDIR": str(temp_dir),
        "REALTIME_REQUEST_HEAD_TIMEOUT_SECONDS": str(DEADLINE),
        "REALTIME_REQUEST_BODY_TIMEOUT_SECONDS": str(DEADLINE),
    }
    return start_module_server(env=env, server=asgi_server)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def temp_bytes(pid: int, temp_dir: Path) -> int:
    """Bytes in the files the server holds open under ``temp_dir`` (temporary files are unlinked at once)."""
    total = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith(str(temp_dir)):
                total += os.stat(fd).st_size
        except OSError:
            continue
    return total + sum(path.stat().st_size for path in temp_dir.rglob("*") if path.is_file())


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def head(method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket, within: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One whole response: status, headers (lower-case names), body."""
    sock.settimeout(within)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed without a response: {data!r}"
        data += chunk
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        assert chunk, "closed in the middle of the body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes the connection within ``within`` seconds (whatever it sent before)."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def send_until_answered(sock: socket.socket, body_bytes, limit_bytes: int) -> int:
    """Send ``body_bytes`` chunks until the server answers, closes, or ``limit_bytes`` are sent; bytes sent."""
    sock.setblocking(False)
    sent = 0
    try:
        for chunk in body_bytes:
            view = memoryview(chunk)
            while view:
                readable, writable, _ = select.select([sock], [sock], [], 5)
                if readable:
                    return sent
                assert writable, "the server neither reads nor answers"
                written = sock.send(view)
                view, sent = view[written:], sent + written
            if sent >= limit_bytes:
                return sent
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        sock.setblocking(True)
    return sent


def refusal(status: int, headers: dict, body: bytes) -> dict:
    """The JSON body of a refusal, after the checks every refusal passes."""
    assert headers["content-type"] == "application/json", headers
    assert headers["connection"].lower() == "close", headers
    assert headers["x-content-type-options"] == "nosniff"
    return json.loads(body)


# --------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------


def _huge_declared_post(server, path: str, outcome: list) -> None:
    with connect(server) as sock:
        sock.sendall(head("POST", path, AUTH, "Content-Type: application/json", f"Content-Length: {HUGE}"))
        # What a client that does not wait for an answer would send: up to 64 MiB of it.
        send_until_answered(sock, iter([b"x" * (1 << 20)] * 64), 64 << 20)
        status, headers, body = read_response(sock)
        outcome.append((status, refusal(status, headers, body)))


@pytest.mark.parametrize("path", [PUSH_PATH, "/healthz"])
def test_a_declared_body_over_the_limit_is_refused_from_its_headers(server, temp_dir, path):
    pid = server.process.pid
    before = resident_kib(pid)
    outcomes: list = []
    clients = [threading.Thread(target=_huge_declared_post, args=(server, path, outcomes)) for _ in range(3)]
    sampled_temp = 0
    for client in clients:
        client.start()
    while any(client.is_alive() for client in clients):
        sampled_temp = max(sampled_temp, temp_bytes(pid, temp_dir))
        time.sleep(0.02)
    grown = resident_kib(pid) - before
    print(f"\n{server.server} {path}: 3 x {HUGE >> 20} MiB declared: RSS +{grown} KiB, temp files {sampled_temp} B")
    assert len(outcomes) == 3
    for status, body in outcomes:
        assert status == 413
        assert body["error"] == "payload_too_large" and body["limit"] == LIMIT
    assert grown < 8 * 1024, f"the server grew by {grown} KiB for bodies it refuses"
    assert sampled_temp == 0


def test_a_declared_body_over_the_limit_is_answered_before_any_of_it_is_sent(server):
    with connect(server) as sock:
        sock.sendall(head("POST", "/healthz", f"Content-Length: {HUGE}"))
        status, headers, body = read_response(sock, within=5)
        assert status == 413 and refusal(status, headers, body)["error"] == "payload_too_large"
        assert closed_by_server(sock, 5)


@pytest.mark.parametrize("path", [PUSH_PATH, "/healthz"])
def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(server, temp_dir, path):
    pid = server.process.pid
    before = resident_kib(pid)
    chunk = b"x" * (1 << 20)
    with connect(server) as sock:
        sock.sendall(head("POST", path, AUTH, "Content-Type: application/json", "Transfer-Encoding: chunked"))
        sent = send_until_answered(sock, iter([b"100000\r\n" + chunk + b"\r\n"] * 700), HUGE)
        status, headers, body = read_response(sock)
    grown = resident_kib(pid) - before
    print(f"\n{server.server} {path}: chunked body cut off after {sent / (1 << 20):.1f} MiB sent; RSS +{grown} KiB")
    assert status == 413 and refusal(status, headers, body)["error"] == "payload_too_large"
    # What the client wrote before it saw the answer: the limit, plus what the kernels' socket buffers held.
    assert LIMIT < sent < LIMIT + (16 << 20)
    assert grown < 16 * 1024
    assert temp_bytes(pid, temp_dir) == 0


def test_a_chunked_body_within_the_limit_is_accepted(server):
    body = json.dumps({"payload": "chunked"}).encode()
    with connect(server) as sock:
        sock.sendall(head("POST", PUSH_PATH, AUTH, "Content-Type: application/json", "Transfer-Encoding: chunked"))
        sock.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        status, _, answer = read_response(sock)
    assert status == 201, answer


def held_in_temporary_files(server, temp_dir: Path, path: str, length: int) -> int:
    """Bytes of a ``length``-byte body the server holds in temporary files once all but its last byte are in."""
    with connect(server) as sock:
        sock.sendall(head("POST", path, AUTH, "Content-Type: application/json", f"Content-Length: {length}"))
        sock.sendall(b" " * (length - 1))
        time.sleep(0.3)
        held = temp_bytes(server.process.pid, temp_dir)
        sock.sendall(b" ")
        status, _, _ = read_response(sock)
    # Not JSON / no CSRF token: refused after reading it, as before.
    assert status in (400, 403), path
    return held


@pytest.mark.parametrize("path", [PUSH_PATH, "/healthz"])
def test_a_body_just_under_the_limit_is_held_in_memory_not_in_a_temporary_file(server, temp_dir, path):
    assert held_in_temporary_files(server, temp_dir, path, LIMIT) == 0


# --------------------------------------------------------------------------------------------
# Unauthenticated writes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "credentials", "code"),
    [
        ("POST", PUSH_PATH, (), "api_key_required"),
        ("POST", "/api/v1/messages", ("Authorization: Bearer wrong",), "api_key_invalid"),
        ("POST", "/api/v1/channels", ("Authorization: Basic eDp5",), "api_key_required"),
        ("DELETE", "/api/v1/channels/chat-1", (), "api_key_required"),
        ("POST", "/api/v1/tokens", (), "api_key_required"),
    ],
)
def test_an_unauthenticated_write_is_refused_before_its_body_is_sent(server, method, path, credentials, code):
    with connect(server) as sock:
        # Expect: 100-continue: the client waits for a go-ahead before sending its body; it gets the refusal.
        sock.sendall(head(method, path, *credentials, "Content-Length: 10485760", "Expect: 100-continue"))
        status, headers, body = read_response(sock, within=5)
        assert status == 401, (status, body)
        assert refusal(status, headers, body)["error"] == code
        assert headers["www-authenticate"] == 'Bearer realm="realtime"'
        assert closed_by_server(sock, 5)


@pytest.mark.parametrize(("method", "path"), [("PUT", "/api/v1/channels/chat-1"), ("POST", "/api/v1/channels/chat-1")])
def test_a_method_the_api_does_not_serve_is_answered_405_not_401(server, method, path):
    """Only the writes the API serves need a key before the body: any other method reaches the view."""
    response = httpx.request(method, f"{server.http}{path}", content=b"{}")
    assert response.status_code == 405, response.text
    assert response.json()["error"] == "method_not_allowed"
    assert "DELETE" in response.headers["allow"]


def test_reads_and_authenticated_writes_still_work(server):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    assert httpx.post(f"{server.http}{PUSH_PATH}", json={"payload": "x"}, headers=auth).status_code == 201
    assert httpx.get(f"{server.http}{PUSH_PATH}", headers=auth).status_code == 200
    assert httpx.get(f"{server.http}/healthz").status_code == 200
    # Keep-alive: several requests on one connection, each within its deadlines.
    with httpx.Client(headers=auth) as client:
        for index in range(3):
            assert client.post(f"{server.http}{PUSH_PATH}", json={"payload": str(index)}).status_code == 201


# --------------------------------------------------------------------------------------------
# Deadlines
# --------------------------------------------------------------------------------------------


def _trickle(sock: socket.socket, data: bytes, every: float, until: float) -> bool:
    """Send ``data`` a byte at a time; False once the server has closed the connection."""
    for byte in data:
        if time.monotonic() > until:
            return True
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return False
        readable, _, _ = select.select([sock], [], [], every)
        if readable:
            return False
    return True


def test_a_trickled_head_is_answered_408_and_closed(server):
    with connect(server) as sock:
        started = time.monotonic()
        _trickle(sock, head("POST", PUSH_PATH, AUTH, "Content-Length: 2"), every=0.2, until=started + 10)
        status, headers, body = read_response(sock)
        elapsed = time.monotonic() - started
        assert status == 408 and refusal(status, headers, body)["error"] == "request_timeout"
        assert DEADLINE - 0.1 < elapsed < DEADLINE + 2
        assert closed_by_server(sock, 5)


def test_a_silent_connection_is_closed_without_an_answer(server):
    with connect(server) as sock:
        started = time.monotonic()
        sock.settimeout(10)
        assert sock.recv(1024) == b""
        assert DEADLINE - 0.1 < time.monotonic() - started < DEADLINE + 2


@pytest.mark.parametrize("trickled", [False, True], ids=["stalled", "trickled"])
def test_a_slow_body_is_answered_408_and_closed(server, trickled):
    body = json.dumps({"payload": "slow"}).encode()
    with connect(server) as sock:
        sock.sendall(head("POST", PUSH_PATH, AUTH, "Content-Type: application/json", f"Content-Length: {len(body)}"))
        started = time.monotonic()
        sock.sendall(body[:3])
        if trickled:
            _trickle(sock, body[3:], every=0.3, until=started + 10)
        status, headers, answer = read_response(sock)
        elapsed = time.monotonic() - started
        assert status == 408 and refusal(status, headers, answer)["error"] == "request_timeout", answer
        assert DEADLINE - 0.1 < elapsed < DEADLINE + 2
        assert closed_by_server(sock, 5)


def test_the_next_request_on_a_kept_alive_connection_has_its_own_head_deadline(server):
    with connect(server) as sock:
        sock.sendall(head("GET", "/healthz"))
        assert read_response(sock)[0] == 200
        # Idle between requests for longer than the deadline (and less than uvicorn's 5 s keep-alive):
        # not counted against the next request.
        time.sleep(DEADLINE + 0.5)
        started = time.monotonic()
        _trickle(sock, head("GET", "/healthz"), every=0.2, until=started + 10)
        status, headers, body = read_response(sock)
        assert status == 408 and refusal(status, headers, body)["error"] == "request_timeout"
        assert DEADLINE - 0.1 < time.monotonic() - started < DEADLINE + 2


async def test_websockets_and_event_streams_outlive_the_deadlines(server):
    async with (
        websockets.connect(server.channel_url("chat-1", clientId="idle-ws")) as ws,
        open_stream(server.channel_url("feed-1", scheme="http", clientId="idle-sse")) as (response, events),
    ):
        assert response.status_code == 200
        await opened(events)
        await asyncio.sleep(3 * DEADLINE)
        auth = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(headers=auth) as client:
            for channel in ("chat-1", "feed-1"):
                url = f"{server.http}/api/v1/channels/{channel}/messages"
                assert (await client.post(url, json={"payload": "late"})).status_code == 201
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if frame.get("payload") == "late":
                break
        _, message = await events.message()
        assert message["payload"] == "late"


# --------------------------------------------------------------------------------------------
# The limit follows max_message_size
# --------------------------------------------------------------------------------------------


def test_the_limit_follows_max_message_size(start_server, asgi_server, tmp_path):
    """A payload of max_message_size control characters is six times larger once JSON-escaped: it is
    accepted, held in memory, and one byte more than the limit is not."""
    env = {"REALTIME_API_KEYS": API_KEY, "TMPDIR": str(tmp_path)}
    server = start_server(LARGE_CONFIG, env=env, server=asgi_server)
    limit = 6 * 1048576 + 65536
    body = json.dumps({"payload": "\x01" * 1048576}).encode()
    assert 6 << 20 < len(body) < limit
    auth = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    response = httpx.post(f"{server.http}{PUSH_PATH}", content=body, headers=auth, timeout=30)
    assert response.status_code == 201, response.text
    over = httpx.post(f"{server.http}{PUSH_PATH}", content=b" " * (limit + 1), headers=auth, timeout=30)
    assert over.status_code == 413 and over.json()["limit"] == limit
    assert held_in_temporary_files(server, tmp_path, "/healthz", limit) == 0


async def test_the_api_view_checks_the_key_and_the_length_before_reading_the_body(settings):
    """DirectApiView on its own (without the middleware and the server hooks in front of it)."""
    from channels_app.http import api
    from channels_app.http.direct_api import DirectApiView

    settings.REALTIME_API_KEYS = (API_KEY,)
    view = DirectApiView(api.channel_messages, memory_runtime())

    async def receive():
        raise AssertionError("the body was read")

    async def answer(*headers: tuple[bytes, bytes]) -> tuple[int, dict]:
        sent = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": PUSH_PATH, "query_string": b"", "headers": list(headers)}
        await view({**scope, "url_route": {"kwargs": {"channel": "chat-1"}}}, receive, send)
        return sent[0]["status"], json.loads(sent[1]["body"])

    status, body = await answer((b"content-length", b"10"))
    assert (status, body["error"]) == (401, "api_key_required")
    status, body = await answer((b"authorization", AUTH.split(": ")[1].encode()), (b"content-length", b"%d" % HUGE))
    assert (status, body["error"]) == (413, "payload_too_large")


def test_every_reader_of_a_body_uses_the_one_limit(settings):
    assert settings.REALTIME_MAX_REQUEST_BODY_BYTES == LIMIT
    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE == LIMIT
    # Django spools a body above FILE_UPLOAD_MAX_MEMORY_SIZE to a temporary file: none is larger.
    assert settings.FILE_UPLOAD_MAX_MEMORY_SIZE == LIMIT
    assert request_body_limit(1 << 20) == (6 << 20) + 65536


def test_a_deadline_that_is_not_a_positive_number_stops_the_start():
    for value in ("abc", "0", "-1", "inf"):
        result = manage("check", env=base_environment(REALTIME_REQUEST_BODY_TIMEOUT_SECONDS=value), check=False)
        assert result.returncode == 2, value
        assert f"REALTIME_REQUEST_BODY_TIMEOUT_SECONDS={value} is not a number of seconds" in result.stderr


# --------------------------------------------------------------------------------------------
# The server internals the limits rely on (fast: fails in seconds after an upgrade)
# --------------------------------------------------------------------------------------------
