"""WebSockets (and event streams) on raw sockets, for what the clients will not do: invalid frames, never reading."""

from __future__ import annotations

import base64
import os
import socket
import struct


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One masked client frame."""
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    return head + mask + bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))


def open_raw(server, request: str, *, status: bytes, rcvbuf: int | None = None) -> socket.socket:
    """A raw socket that sent ``request`` and read the response head, which must start with ``status``; nothing
    read after it (``rcvbuf`` shrinks the kernel's receive buffer, so that a client that does not read is noticed
    soon)."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, f"closed before answering {request.split()[1]}"
        head += chunk
    assert head.startswith(status), head
    return sock


def handshake(server, path: str, *, rcvbuf: int | None = None) -> socket.socket:
    """A WebSocket opened on a raw socket: the handshake done, nothing read after it (``rcvbuf``: see ``open_raw``)."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    return open_raw(server, request, status=b"HTTP/1.1 101", rcvbuf=rcvbuf)


def read_until_close(sock: socket.socket, within: float = 10) -> int | None:
    """Read server frames until its close frame; return the close code (None if the TCP connection was
    dropped without one, -1 if it stayed open)."""
    sock.settimeout(within)
    buffer = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            buffer += chunk
            while len(buffer) >= 2:
                length = buffer[1] & 0x7F
                offset = 2
                if length == 126:
                    length, offset = struct.unpack("!H", buffer[2:4])[0], 4
                elif length == 127:
                    length, offset = struct.unpack("!Q", buffer[2:10])[0], 10
                if len(buffer) < offset + length:
                    break
                opcode, payload = buffer[0] & 0x0F, buffer[offset : offset + length]
                buffer = buffer[offset + length :]
                if opcode == 0x8:
                    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
    except TimeoutError:
        return -1
    except ConnectionResetError:
        return None
