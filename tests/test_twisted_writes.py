"""adapters/twisted_writes.py: Twisted's TCP connection sends a write at once when nothing is
buffered, keeps the order otherwise, and leaves what the socket refuses to Twisted's buffer.

Real sockets (a connected pair) and Twisted's own ``tcp.Server``; only the reactor is a recorder,
so that what the transport asked it to watch can be read back."""

from __future__ import annotations

import socket

import pytest
from twisted.internet import main, tcp
from twisted.internet.protocol import Protocol

from channels_app.adapters import twisted_writes


class RecordingReactor:
    def __init__(self):
        self.writers = set()
        self.later = []

    def addReader(self, reader):
        pass

    def removeReader(self, reader):
        pass

    def addWriter(self, writer):
        self.writers.add(writer)

    def removeWriter(self, writer):
        self.writers.discard(writer)

    def callLater(self, delay, call, *args):
        self.later.append((call, args))


class EagerServer(tcp.Server):
    write = twisted_writes.eager(tcp.Server.write)


@pytest.fixture
def pair():
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    reactor = RecordingReactor()
    transport = EagerServer(ours, Protocol(), ("127.0.0.1", 1), None, 1, reactor)
    yield transport, peer, reactor
    ours.close()
    peer.close()


def received(peer) -> bytes:
    chunks = []
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def test_a_write_with_nothing_buffered_reaches_the_peer_without_a_loop_turn(pair):
    transport, peer, reactor = pair
    transport.write(b"ping")
    assert received(peer) == b"ping"
    assert transport not in reactor.writers
    assert transport.dataBuffer == b""
    assert transport._tempDataBuffer == []


def test_a_write_behind_buffered_data_waits_its_turn(pair):
    transport, peer, reactor = pair
    tcp.Server.write(transport, b"first ")
    transport.write(b"second")
    assert received(peer) == b""
    assert transport in reactor.writers
    transport.doWrite()
    assert received(peer) == b"first second"
    assert transport not in reactor.writers


def test_what_the_socket_does_not_take_is_left_to_twisteds_buffer(pair):
    transport, peer, reactor = pair
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = bytes(range(256)) * 4096
    transport.write(data)
    transport.write(b"-end")
    assert transport in reactor.writers
    got = received(peer)
    assert 0 < len(got) < len(data)
    while transport in reactor.writers:
        assert transport.doWrite() is None
        got += received(peer)
    assert got == data + b"-end"


def test_a_write_to_a_peer_that_is_gone_is_found_lost_by_twisted(pair):
    transport, peer, reactor = pair
    peer.close()
    transport.write(b"x" * 100_000)
    assert transport in reactor.writers
    assert transport.doWrite() is main.CONNECTION_LOST


def test_closed_connections_keep_twisteds_write(pair):
    transport, peer, reactor = pair
    transport.connected = 0
    transport.write(b"dropped")
    assert received(peer) == b""
    transport.connected = 1
    transport._writeDisconnected = True
    transport.write(b"dropped")
    assert received(peer) == b""
    assert transport not in reactor.writers


def test_an_aborted_connection_sends_nothing_more(pair):
    transport, peer, reactor = pair
    transport.abortConnection()
    transport.write(b"after the abort")
    assert received(peer) == b""


def test_install_wraps_twisteds_write_once(monkeypatch):
    original = tcp.Server.write
    monkeypatch.setattr(tcp.Server, "write", original)
    twisted_writes.install()
    twisted_writes.install()
    assert tcp.Server.write.realtime_eager
    assert tcp.Server.write.__wrapped__ is original
