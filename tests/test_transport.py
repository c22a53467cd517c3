"""The server probes see through middleware that wraps ``send``."""

import functools
from types import SimpleNamespace

from channels_app.security import SecurityHeadersMiddleware
from channels_app.transport import connection_aborter, write_buffer_probe


def _daphne_like_send():
    transport = SimpleNamespace(dataBuffer=b"x" * 100, offset=40, _tempDataLen=7, abortConnection=lambda: None)

    async def handle_reply(protocol, message):
        return None

    return functools.partial(handle_reply, SimpleNamespace(transport=transport)), transport


async def test_probes_reach_the_server_through_the_security_headers_middleware():
    send, transport = _daphne_like_send()
    seen = {}

    async def application(scope, receive, wrapped_send):
        seen["probe"] = write_buffer_probe(wrapped_send)
        seen["abort"] = connection_aborter(wrapped_send)

    await SecurityHeadersMiddleware(application)({"type": "http"}, None, send)
    assert seen["probe"]() == 100 - 40 + 7
    assert seen["abort"] is transport.abortConnection


def test_unknown_servers_report_nothing_buffered():
    async def plain_send(message):
        return None

    assert write_buffer_probe(plain_send)() == 0
    assert connection_aborter(plain_send) is None
