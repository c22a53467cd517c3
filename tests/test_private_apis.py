"""The private parts of daphne, Twisted, autobahn, uvicorn, channels, asgiref and redis-py the service
relies on, each for a measured reason, checked in one place so that an upgrade that moves one fails
here in seconds rather than in an end-to-end test.

Where each is used: adapters/servers.py (write buffers, close frames, aborts, holding the close
reply), adapters/daphne_limits.py and adapters/uvicorn_http.py (request limits and deadlines),
adapters/daphne_checks.py (daphne's periodic checks), adapters/twisted_writes.py (Twisted's write
buffer), adapters/uvicorn_ws.py, ops/shutdown.py (SIGTERM under each server), ops/logredact.py
(daphne's access log), state/layers.py (channels' in-memory layer, channels-redis's shards),
state/redis.py (un-retried, pipelined script calls for history appends), publishing.py (asgiref's
record of the server's event loop).
"""

from __future__ import annotations

import inspect

from daphne.access import AccessLogGenerator


def _names(function) -> set[str]:
    return set(function.__code__.co_names)


def test_the_server_internals_we_rely_on_are_still_there():
    import daphne.http_protocol
    import daphne.server
    import h11
    from twisted.web import http
    from uvicorn import config as uvicorn_config
    from uvicorn.protocols.http import h11_impl

    # daphne: Server.run builds its factory from the module's global HTTPFactory, whose
    # buildProtocol builds Twisted's protocol and sets the request class.
    assert "HTTPFactory" in _names(daphne.server.Server.run)
    assert daphne.server.HTTPFactory in (daphne.http_protocol.HTTPFactory, _limited_factory())
    assert {"buildProtocol", "requestFactory"} <= _names(daphne.http_protocol.HTTPFactory.buildProtocol)
    assert "protocol" in _names(http.protocol.ServerFactory.buildProtocol)
    assert http.HTTPFactory.protocol is http._genericHTTPChannelProtocolFactory
    assert "_GenericHTTPChannelProtocol" in _names(http._genericHTTPChannelProtocolFactory)
    # Twisted's parser: the request line is kept in _command and _path; after the headers,
    # allHeadersReceived calls gotLength and then sends any 100 Continue; bodies go through the
    # transfer decoder (rawDataReceived) to handleContentChunk, and end in allContentReceived.
    assert {"_command", "_path", "allHeadersReceived", "allContentReceived", "setRawMode"} <= _names(
        http.HTTPChannel.lineReceived
    )
    assert {"gotLength", "_send100Continue"} <= _names(http.HTTPChannel.allHeadersReceived)
    assert "handleContentChunk" in _names(http.HTTPChannel._maybeChooseTransferDecoder)
    assert "_transferDecoder" in _names(http.HTTPChannel.rawDataReceived)
    assert "allContentReceived" in _names(http.HTTPChannel._finishRequestBody)
    assert {"requestDone", "connectionMade", "connectionLost", "callLater"} <= set(dir(http.HTTPChannel))
    # uvicorn: --http takes any importable class; the protocol keeps its h11 connection in
    # ``conn``, its request cycle in ``cycle``, its event loop in ``loop``.
    assert "import_from_string" in _names(uvicorn_config.Config.load)
    assert {"conn", "cycle", "loop"} <= _names(h11_impl.H11Protocol.__init__)
    assert "response_started" in _names(h11_impl.RequestResponseCycle.__init__)
    assert {"IDLE", "SEND_BODY"} <= set(dir(h11))


def _limited_factory():
    from channels_app.adapters.daphne_limits import LimitedHTTPFactory

    return LimitedHTTPFactory


def test_the_server_internals_hold_close_reply_relies_on_still_exist():
    """Fails in seconds when an upgrade of autobahn, daphne or uvicorn moves what the hold replaces."""
    from autobahn.websocket.protocol import WebSocketProtocol as AutobahnProtocol
    from daphne.ws_protocol import WebSocketProtocol as DaphneProtocol
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    # autobahn calls the close-frame callback through the instance, so an instance attribute replaces it,
    # and a None return lets it go on reading.
    assert "self.onCloseFrame(code, reasonRaw)" in inspect.getsource(AutobahnProtocol.processControlFrame)
    assert list(inspect.signature(AutobahnProtocol.onCloseFrame).parameters) == ["self", "code", "reasonRaw"]
    assert issubclass(DaphneProtocol, AutobahnProtocol) and DaphneProtocol.STATE_OPEN == AutobahnProtocol.STATE_OPEN
    assert "self.sendCloseFrame(" in inspect.getsource(AutobahnProtocol.onCloseFrame)
    # While a reply is held, frames after the close are dropped by replacing processData, which
    # consumeData calls (through the instance) until it answers False.
    assert "self.processData()" in inspect.getsource(AutobahnProtocol.consumeData)
    # uvicorn dispatches close frames to handle_close, which writes websockets' queued reply.
    assert "self.handle_close(event)" in inspect.getsource(WebSocketsSansIOProtocol.handle_events)
    handle_close = inspect.getsource(WebSocketsSansIOProtocol.handle_close)
    assert "self.conn.data_to_send()" in handle_close and '"websocket.disconnect"' in handle_close
    for name in ("shutdown", "stop_keepalive"):
        assert callable(getattr(WebSocketsSansIOProtocol, name))
    init = inspect.getsource(WebSocketsSansIOProtocol.__init__)
    assert all(f"self.{name}" in init for name in ("close_sent", "transport", "conn"))


def test_the_daphne_internals_the_connection_checks_replace_are_still_there():
    """adapters/daphne_checks.py replaces five methods of daphne's Server and reads what its checks read."""
    import daphne.server
    from daphne.ws_protocol import WebSocketProtocol as DaphneProtocol

    from channels_app.adapters import daphne_checks

    server = daphne.server.Server
    # The loops it narrows, and the hooks that tell it which connections to look at.
    for name in ("application_checker", "timeout_checker", "protocol_connected", "protocol_disconnected"):
        assert callable(getattr(server, name))
    assert {"application_checker", "timeout_checker"} <= _names(server.run)
    original_create = daphne_checks._original.get("create_application", server.create_application)
    # The body daphne_checks.create_application repeats with its own queue.
    assert {"Queue", "ensure_future", "handle_reply", "setdefault"} <= _names(original_create)
    body = inspect.getsource(original_create)
    assert "receive=input_queue.get" in body and 'self.connections[protocol]["application_instance"]' in body
    assert "return input_queue" in body
    # What daphne's check_timeouts reads, so the next check can be computed from it.
    check = inspect.getsource(DaphneProtocol.check_timeouts)
    for name in ("websocket_timeout", "websocket_connect_timeout", "ping_interval", "last_ping", "_sendAutoPing"):
        assert name in check
    assert "self.last_ping = time.time()" in inspect.getsource(DaphneProtocol.onMessage)
    # The body daphne_checks._check_application repeats for one connection.
    loop = inspect.getsource(daphne_checks._original.get("application_checker", server.application_checker))
    assert "application_close_timeout" in loop and 'del self.connections[protocol]["application_instance"]' in loop


def test_daphne_still_has_the_access_log_writer_we_wrap():
    """An upgrade of daphne that renames or reshapes it fails here first."""
    parameters = list(inspect.signature(AccessLogGenerator.write_entry).parameters)
    assert parameters == ["self", "host", "date", "request", "status", "length", "ident", "user"]


def test_the_write_buffer_probe_and_aborts_still_find_what_they_read():
    """adapters/servers.py: daphne's send is a partial of Server.handle_reply over the protocol; the
    Twisted transport's buffer is dataBuffer, offset and _tempDataLen; its producer pauses at a mark;
    autobahn closes with sendCloseFrame; Twisted and asyncio transports abort."""
    import daphne.server
    from autobahn.websocket.protocol import WebSocketProtocol as AutobahnProtocol
    from twisted.internet import abstract, tcp

    assert "handle_reply" in _names(daphne.server.Server.create_application)
    init = inspect.getsource(abstract.FileDescriptor.__init__) + inspect.getsource(abstract.FileDescriptor)
    assert all(name in init for name in ("dataBuffer", "offset", "_tempDataLen", "producerPaused"))
    assert callable(abstract.FileDescriptor.registerProducer)
    assert callable(tcp.Connection.abortConnection)
    assert list(inspect.signature(AutobahnProtocol.sendCloseFrame).parameters)[:3] == ["self", "code", "reasonUtf8"]


def test_the_twisted_write_the_eager_write_wraps_still_buffers_as_it_reads():
    """adapters/twisted_writes.py: tcp.Server's write is the TLS mixin's, which hands plain writes to
    FileDescriptor.write; that one appends to _tempDataBuffer and watches for writability, and
    doWrite sends dataBuffer from offset before _tempDataBuffer."""
    from twisted.internet import abstract, tcp

    write = getattr(tcp.Server.write, "__wrapped__", tcp.Server.write)
    assert "TLS" in _names(write) and "FileDescriptor" in inspect.getsource(write)
    buffered = inspect.getsource(abstract.FileDescriptor.write)
    assert all(name in buffered for name in ("_writeDisconnected", "_tempDataBuffer", "startWriting"))
    send = inspect.getsource(abstract.FileDescriptor.doWrite)
    assert all(name in send for name in ("self.offset", "self.dataBuffer", "self._tempDataBuffer"))
    assert "self.socket" in inspect.getsource(tcp.Connection.__init__)
    assert "self.connected" in inspect.getsource(tcp.Server.__init__)
    assert tcp.Server.TLS is False


def test_the_graceful_shutdown_still_finds_the_servers_signal_handling():
    """ops/shutdown.py: Twisted's asyncio reactor keeps its loop in _asyncioEventloop; uvicorn's Server
    handles SIGTERM in handle_exit and waits config.timeout_graceful_shutdown."""
    from twisted.internet import asyncioreactor
    from uvicorn.config import Config
    from uvicorn.server import Server

    assert "_asyncioEventloop" in inspect.getsource(asyncioreactor.AsyncioSelectorReactor.__init__)
    assert list(inspect.signature(Server.handle_exit).parameters) == ["self", "sig", "frame"]
    assert "timeout_graceful_shutdown" in inspect.signature(Config.__init__).parameters


def test_the_in_memory_layer_still_has_the_parts_it_overrides():
    """state/layers.py: channels' InMemoryChannelLayer keeps its groups and channel queues in dicts and
    sweeps expiry in _clean_expired."""
    from channels.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    assert isinstance(layer.groups, dict) and isinstance(layer.channels, dict)
    assert callable(layer._clean_expired)
    assert "_clean_expired" in _names(InMemoryChannelLayer.receive)


def test_the_python_api_still_finds_the_servers_event_loop():
    """publishing.py: asgiref records the loop a sync_to_async thread serves, as async_to_sync reads it."""
    from asgiref.sync import AsyncToSync, SyncToAsync

    assert hasattr(SyncToAsync, "threadlocal")
    source = inspect.getsource(AsyncToSync.__call__)
    assert "SyncToAsync.threadlocal" in source and '"main_event_loop_pid"' in source and '"main_event_loop"' in source


def test_a_history_append_still_runs_once_on_one_pooled_connection():
    """state/redis.py: the pool hands out a connection; the connection checks its health, sends a
    pipeline of packed commands and reads each reply without retrying; NOSCRIPT is its own error."""
    from redis.asyncio.connection import AbstractConnection, ConnectionPool
    from redis.exceptions import NoScriptError, ResponseError

    for name in ("get_connection", "release"):
        assert callable(getattr(ConnectionPool, name))
    for name in ("check_health", "pack_commands", "send_packed_command", "read_response", "disconnect"):
        assert callable(getattr(AbstractConnection, name))
    assert "check_health" in inspect.signature(AbstractConnection.send_packed_command).parameters
    assert issubclass(NoScriptError, ResponseError)


def test_channels_redis_pubsub_still_publishes_through_one_locked_client_per_shard():
    """state/layers.py: the layer of each event loop maps a group to its Pub/Sub channel and shard; the
    shard publishes on its own Redis client, made on first use, under its own lock."""
    from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer, RedisSingleShardConnection

    assert callable(RedisPubSubChannelLayer._get_layer)
    assert callable(RedisPubSubChannelLayer.serialize)
    assert {"_get_group_channel_name", "_get_shard"} <= set(dir(RedisPubSubLoopLayer))
    assert {"_get_group_channel_name", "_get_shard", "publish"} <= _names(RedisPubSubLoopLayer.group_send)
    assert {"_lock", "_ensure_redis", "_redis", "publish"} <= _names(RedisSingleShardConnection.publish)
    assert "_redis" in _names(RedisSingleShardConnection._ensure_redis)
