"""Requests written byte for byte on raw sockets, so nothing is normalised on the way (``..`` segments, ``%00``,
invalid UTF-8), and what a server must still do after them."""

from __future__ import annotations

import socket

import httpx


def raw_request(
    server, method: bytes, path: bytes, headers: list[bytes] = (), body: bytes = b"", *, timeout: float = 10
) -> tuple[int, bytes]:
    """Send one HTTP/1.1 request as written; return the status (0: no answer) and the start of the response."""
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: 127.0.0.1:%d" % server.port, b"Connection: close"]
    lines += list(headers)
    if body:
        lines.append(b"Content-Length: %d" % len(body))
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        received = b""
        try:
            while b"\r\n\r\n" not in received or len(received) < 64 * 1024:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
                if b"text/event-stream" in received:
                    break
        except TimeoutError:
            pass
    if not received:
        return 0, b""  # the server dropped the connection without an answer
    status = int(received.split(b" ", 2)[1])
    return status, received


def assert_no_server_error(status: int, response: bytes, what) -> None:
    """A refusal or an answer, never a 5xx (0: the server dropped the connection without one)."""
    assert status == 0 or 400 <= status < 500 or status in (200, 301, 302, 304), (what, response[:300])
    assert status < 500, (what, response[:300])


def assert_still_serving(server) -> None:
    """The server answers its health check and has logged no traceback."""
    assert httpx.get(f"{server.http}/healthz", timeout=5).status_code == 200
    log = server.log()
    assert "Traceback" not in log, log[log.find("Traceback") - 500 : log.find("Traceback") + 2000]
