"""daphne's two periodic checks, doing only the work that is due instead of walking every connection.

daphne's ``Server.application_checker`` (every second) and ``Server.timeout_checker`` (every 2 s,
which also sends the keep-alive pings) each walk every connection; with 19,000 idle WebSockets
walking was about 40% of an idle server's profile samples (docs/performance-scale.md, "Idle CPU"). These
replacements keep daphne's rules and periods and only change which connections are looked at:

- ``application_checker`` looks at the connections that have disconnected or whose application has
  finished: the only ones daphne's loop acts on. They are known when it happens: ``protocol_disconnected``
  and a done-callback on the application's future add them.
- ``timeout_checker`` keeps every connection in a slot of ``TICK_SECONDS`` for the time its next
  check falls due: a WebSocket's next ping (``last_ping + ping_interval``), its handshake deadline
  while connecting, its ``websocket_timeout``. At each tick it runs daphne's own ``check_timeouts``
  on the due slots' connections, then files each again by the same attributes; a message from the
  client moves ``last_ping`` on, so an active connection is looked at, not pinged. HTTP requests are
  checked every tick when ``--http-timeout`` is set, and never otherwise (their check does nothing then).

``create_application`` is daphne's own, with the lean input queue of adapters/application_queue.py
(about 3 KB less per connection) and a done-callback on the application for the first check.

A connection's slot (its set) is kept in daphne's per-connection dict, so that reaping it removes it
from its slot at once. ``install_into`` puts these methods on daphne's ``Server``; the private names relied
on are checked by tests/test_private_apis.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import logging
import time

from twisted.internet import reactor

from .application_queue import ApplicationQueue

logger = logging.getLogger(__name__)

# daphne's own periods.
APPLICATION_CHECK_SECONDS = 1.0
TICK_SECONDS = 2.0

# The key of a connection's slot (the set it is in) in daphne's per-connection dict.
SLOT = "realtime_check_slot"


class DueChecks:
    """The connections each of daphne's checks must look at next; one per daphne server."""

    def __init__(self, server):
        self.server = server
        # Disconnected connections, and those whose application finished.
        self.to_reap: set = set()
        # Slot number (time // TICK_SECONDS) -> the connections whose next check falls in it.
        self.slots: dict[int, set] = {}
        self.checked_slot = int(time.time() // TICK_SECONDS)
        # The done-callbacks need no context variables: one empty context spares a copy per connection.
        self.callback_context = contextvars.Context()

    def file(self, protocol, details: dict, slot: int | None) -> None:
        """Move ``protocol`` to ``slot`` (None: to no slot)."""
        members = None if slot is None else self.slots.get(slot)
        current = details.get(SLOT)
        if current is not None:
            if current is members:
                return
            current.discard(protocol)
        if slot is None:
            details.pop(SLOT, None)
            return
        if members is None:
            members = self.slots[slot] = set()
        members.add(protocol)
        # The slot's set itself rather than its number: no int object per connection, and no lookup to leave it.
        details[SLOT] = members

    def unfile(self, protocol, details: dict) -> None:
        """Take ``protocol`` out of its slot (an emptied set goes when its slot comes)."""
        members = details.pop(SLOT, None)
        if members is not None:
            members.discard(protocol)

    def next_slot(self, protocol, now_slot: int) -> int | None:
        """The slot of ``protocol``'s next check, from what daphne's ``check_timeouts`` reads."""
        server = self.server
        last_ping = getattr(protocol, "last_ping", None)
        if last_ping is None:
            # An HTTP request: daphne's check of it does nothing without an --http-timeout.
            return now_slot + 1 if server.http_timeout else None
        due = last_ping + server.ping_interval
        if server.websocket_timeout >= 0:
            due = min(due, protocol.socket_opened + server.websocket_timeout)
        if protocol.state == protocol.STATE_CONNECTING:
            due = min(due, protocol.socket_opened + server.websocket_connect_timeout)
        # Never the slot being checked: a connection due later within it is looked at again next tick.
        return max(int(due // TICK_SECONDS), now_slot + 1)


def _checks(server) -> DueChecks:
    checks = getattr(server, "realtime_checks", None)
    if checks is None:
        checks = server.realtime_checks = DueChecks(server)
    return checks


class _ApplicationDone:
    """The done-callback of a connection's application; a slotted object is 90 bytes smaller than a partial."""

    __slots__ = ("checks", "protocol")

    def __init__(self, checks: DueChecks, protocol):
        self.checks = checks
        self.protocol = protocol

    def __call__(self, _future) -> None:
        self.checks.to_reap.add(self.protocol)


def protocol_connected(self, protocol):
    """daphne's, then the new connection is checked at the next tick (its attributes are set after this)."""
    _original["protocol_connected"](self, protocol)
    checks = _checks(self)
    checks.file(protocol, self.connections[protocol], checks.checked_slot + 1)


def protocol_disconnected(self, protocol):
    """daphne's, then the connection is looked at by the next application check."""
    _original["protocol_disconnected"](self, protocol)
    _checks(self).to_reap.add(protocol)


def create_application(self, protocol, scope):
    """daphne's, with a lean input queue (adapters/application_queue.py); the application's end puts
    the connection in front of the next application check."""
    # daphne 4's body, but for the queue.
    if "application_instance" in self.connections[protocol]:
        raise RuntimeError(f"daphne asked for a second application for connection {protocol!r}")
    input_queue = ApplicationQueue()
    scope.setdefault("asgi", {"version": "3.0"})
    application_instance = self.application(
        scope=scope, receive=input_queue.get, send=functools.partial(self.handle_reply, protocol)
    )
    details = self.connections.get(protocol)
    if details is None:
        return None
    instance = details["application_instance"] = asyncio.ensure_future(
        application_instance, loop=asyncio.get_event_loop()
    )
    checks = _checks(self)
    instance.add_done_callback(_ApplicationDone(checks, protocol), context=checks.callback_context)
    return input_queue


def application_checker(self):
    """daphne's ``application_checker`` over the connections that disconnected or whose application ended."""
    checks = _checks(self)
    to_reap, checks.to_reap = checks.to_reap, set()
    for protocol in to_reap:
        details = self.connections.get(protocol)
        if details is None:
            continue
        try:
            _check_application(self, protocol, details)
        except Exception:
            logger.exception("checking the application of connection %r failed", protocol)
        details = self.connections.get(protocol)
        if details is None:
            continue
        instance = details.get("application_instance")
        if "disconnected" in details and instance is not None:
            # Gone, with its application still running: looked at every second until it ends or is killed.
            checks.to_reap.add(protocol)
    reactor.callLater(APPLICATION_CHECK_SECONDS, self.application_checker)


def _check_application(server, protocol, details: dict) -> None:
    # The body of daphne 4.2's loop, for one connection.
    disconnected = details.get("disconnected", None)
    application_instance = details.get("application_instance", None)
    if disconnected and time.time() - disconnected > server.application_close_timeout:
        if application_instance and not application_instance.done():
            logger.warning(
                "Application instance %r for connection %s took too long to shut down and was killed.",
                application_instance,
                repr(protocol),
            )
            application_instance.cancel()
    if application_instance and application_instance.done():
        try:
            exception = application_instance.exception()
        except (asyncio.CancelledError, concurrent.futures.CancelledError):
            pass
        else:
            if exception:
                if isinstance(exception, KeyboardInterrupt):
                    server.stop()
                else:
                    logger.error("Exception inside application: %s", exception, exc_info=exception)
                    if not disconnected:
                        protocol.handle_exception(exception)
        del details["application_instance"]
        application_instance = None
    if not application_instance and disconnected:
        _checks(server).unfile(protocol, details)
        del server.connections[protocol]


def timeout_checker(self):
    """daphne's ``timeout_checker`` over the connections whose next check is due."""
    checks = _checks(self)
    now_slot = int(time.time() // TICK_SECONDS)
    for slot in range(checks.checked_slot + 1, now_slot + 1):
        members = checks.slots.pop(slot, None)
        if not members:
            continue
        for protocol in members:
            details = self.connections.get(protocol)
            if details is None:
                continue
            # Out of the popped slot: file() must not look for it there.
            details.pop(SLOT, None)
            try:
                protocol.check_timeouts()
                checks.file(protocol, details, checks.next_slot(protocol, now_slot))
            except Exception:
                logger.exception("checking the timeouts of connection %r failed", protocol)
                checks.file(protocol, details, now_slot + 1)
    checks.checked_slot = max(checks.checked_slot, now_slot)
    reactor.callLater(TICK_SECONDS, self.timeout_checker)


_original: dict = {}
_REPLACEMENTS = {
    "protocol_connected": protocol_connected,
    "protocol_disconnected": protocol_disconnected,
    "create_application": create_application,
    "application_checker": application_checker,
    "timeout_checker": timeout_checker,
}


def install_into(daphne_server) -> None:
    """Put these checks on daphne's ``Server`` (module ``daphne_server``); before its ``run``."""
    server_class = daphne_server.Server
    for name, replacement in _REPLACEMENTS.items():
        current = getattr(server_class, name)
        if current is replacement:
            continue
        _original.setdefault(name, current)
        setattr(server_class, name, replacement)
