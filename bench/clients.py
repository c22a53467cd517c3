"""Load-client processes: subscribers spread over several processes, and one publisher.

Each client process runs one asyncio loop and obeys commands sent over a pipe by the
orchestrator (``ClientPool``); every command gets exactly one reply, ``("ok", result)`` or
``("error", traceback)``. Subscriber processes hold many WebSocket connections and count what
arrives; the publisher process holds one connection and sends.

Two subscriber implementations, chosen with ``impl``:

- ``websockets``: the ``websockets`` library's asyncio client (``compression=None``,
  ``recv(decode=False)`` in a tight loop per connection).
- ``raw``: a minimal RFC 6455 client on a bare ``asyncio.Protocol`` that parses frames in bulk
  and answers pings and closes. It costs about 40% less client CPU per delivery (13 vs 22 us at
  1000 subscribers on the 2-core dev machine), so the load generator stays further from being
  the limit.

Messages are identified by a marker in their payload (``~bench~<phase>~<seq>~<time.time()>~``
padded with ``x``), which survives the service's JSON envelope unescaped, so subscribers never
parse JSON: they find the marker, check the phase and read the sequence number and timestamp.
Frames without the marker (the service's control frames: errors, gaps, close reasons) are
counted and sampled, never silently dropped.
"""

from __future__ import annotations

import array
import asyncio
import base64
import contextlib
import hashlib
import importlib
import multiprocessing
import os
import resource
import sys
import time
import traceback
from urllib.parse import urlsplit

MARK = b"~bench~"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_OTHER_SAMPLES = 5


def make_payload(phase: str, seq: int, size: int) -> str:
    """A message of about ``size`` bytes carrying its phase, sequence number and send time."""
    head = f"~bench~{phase}~{seq}~{time.time():.6f}~"
    return head + "x" * max(0, size - len(head))


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


class Tally:
    """What the subscriber connections of one process received in the current phase."""

    def __init__(self):
        self.size = 0
        self.open: list[bool] = []
        self.close_codes: dict[int, int] = {}
        self.arm("", 0, False)

    def add_connection(self) -> int:
        self.size += 1
        self.open.append(False)
        self.counts.append(0)
        self.last_seq.append(-1)
        return self.size - 1

    def arm(self, phase: str, expected: int, latencies: bool) -> None:
        """Start counting messages of ``phase``; done when each open connection got ``expected``."""
        self.phase = phase.encode()
        self.expected = expected
        self.counts = [0] * self.size
        self.last_seq = [-1] * self.size
        self.received = 0
        self.stale = 0
        self.disorder = 0
        self.complete = 0
        self.first_recv = 0.0
        self.last_recv = 0.0
        self.latencies: array.array | None = array.array("d") if latencies else None
        self.others = 0
        self.other_samples: list[str] = []
        self.target = sum(self.open)
        self.done = asyncio.Event()
        if self.target == 0 or expected == 0:
            self.done.set()

    def on_open(self, idx: int) -> None:
        self.open[idx] = True

    def on_frame(self, idx: int, data: bytes) -> None:
        """One text frame arrived on connection ``idx``."""
        now = time.time()
        start = data.find(MARK)
        if start < 0:
            self.others += 1
            if len(self.other_samples) < MAX_OTHER_SAMPLES:
                self.other_samples.append(data[:300].decode("utf-8", "replace"))
            return
        start += len(MARK)
        parts = data[start : start + 48].split(b"~", 3)
        if parts[0] != self.phase:
            self.stale += 1
            return
        seq = int(parts[1])
        if seq <= self.last_seq[idx]:
            self.disorder += 1
        self.last_seq[idx] = seq
        count = self.counts[idx] = self.counts[idx] + 1
        self.received += 1
        if not self.first_recv:
            self.first_recv = now
        self.last_recv = now
        if self.latencies is not None:
            self.latencies.append(now - float(parts[2]))
        if count == self.expected:
            self.complete += 1
            if self.complete >= self.target:
                self.done.set()

    def on_close(self, idx: int, code: int) -> None:
        """Connection ``idx`` ended (``code`` is the close code received, 1006 if none)."""
        if not self.open[idx]:
            return
        self.open[idx] = False
        self.close_codes[code] = self.close_codes.get(code, 0) + 1
        if self.counts[idx] < self.expected:
            # It will never complete: stop waiting for it.
            self.target -= 1
            if self.complete >= self.target:
                self.done.set()


class _StreamClient(asyncio.Protocol):
    """A client on a bare ``asyncio.Protocol``: one HTTP request, a response head, then a stream.

    Subclasses say what request to send, which response head opens the stream (``accepts``)
    and what to do with the bytes that follow (``consume``).
    """

    close_code = 1006

    def __init__(self, tally: Tally, idx: int, url: str, local_host: str | None = None):
        parts = urlsplit(url)
        self.local_host = local_host  # the source address (127.0.0.2, ...): each has its own ephemeral ports
        self.tally = tally
        self.idx = idx
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.buffer = bytearray()
        self.is_open = False
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened = loop.create_future()
        self.lost = loop.create_future()
        self.request = self.build_request()

    def build_request(self) -> bytes:
        raise NotImplementedError

    def accepts(self, head: bytes) -> bool:
        raise NotImplementedError

    def consume(self) -> None:
        raise NotImplementedError

    async def start(self, within: float) -> None:
        loop = asyncio.get_running_loop()
        local_addr = (self.local_host, 0) if self.local_host else None
        await asyncio.wait_for(
            loop.create_connection(lambda: self, self.host, self.port, local_addr=local_addr), within
        )
        await asyncio.wait_for(self.opened, within)

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.is_open:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end])
            del buffer[: end + 4]
            if not self.accepts(head):
                if not self.opened.done():
                    self.opened.set_exception(ConnectionError(head.split(b"\r\n", 1)[0].decode("latin-1")))
                self.transport.close()
                return
            self.is_open = True
            self.tally.on_open(self.idx)
            if not self.opened.done():
                self.opened.set_result(None)
        self.consume()

    def connection_lost(self, exc) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed before the response"))
        if self.is_open:
            self.tally.on_close(self.idx, self.close_code)
        if not self.lost.done():
            self.lost.set_result(None)


class RawSubscriber(_StreamClient):
    """A receive-only WebSocket client: handshake, bulk frame parsing, pong and close replies."""

    def build_request(self) -> bytes:
        self.fragments: bytearray | None = None
        key = base64.b64encode(os.urandom(16))
        self.accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())  # noqa: S324 - RFC 6455
        return (
            (
                f"GET {self.target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
            ).encode()
            + key
            + b"\r\n\r\n"
        )

    def accepts(self, head: bytes) -> bool:
        return head.startswith(b"HTTP/1.1 101") and self.accept in head

    def consume(self) -> None:
        buffer = self.buffer
        size = len(buffer)
        pos = 0
        on_frame = self.tally.on_frame
        idx = self.idx
        while size - pos >= 2:
            first, second = buffer[pos], buffer[pos + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (buffer[pos + 2] << 8) | buffer[pos + 3]
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
                head = 10
            mask = None
            if second & 0x80:  # servers must not mask, but be lenient
                if size - pos < head + 4:
                    break
                mask = bytes(buffer[pos + head : pos + head + 4])
                head += 4
            end = pos + head + length
            if end > size:
                break
            payload = bytes(buffer[pos + head : end])
            pos = end
            if mask is not None:
                payload = _apply_mask(payload, mask)
            opcode = first & 0x0F
            fin = first & 0x80
            if opcode in (1, 2) and fin:
                on_frame(idx, payload)
            elif opcode in (0, 1, 2):
                self.fragments = (self.fragments or bytearray()) + payload
                if fin:
                    on_frame(idx, bytes(self.fragments))
                    self.fragments = None
            elif opcode == 9:
                self._send(0xA, payload)
            elif opcode == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self._send(0x8, payload[:2])
                self.transport.close()
                break
        if pos:
            del buffer[:pos]

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        mask = os.urandom(4)
        header = bytes((0x80 | opcode, 0x80 | len(payload)))
        self.transport.write(header + mask + _apply_mask(payload, mask))

    async def close(self, within: float) -> None:
        if self.transport is None or self.lost.done():
            return
        self._send(0x8, (1000).to_bytes(2, "big"))
        try:
            await asyncio.wait_for(asyncio.shield(self.lost), within)
        except TimeoutError:
            self.transport.abort()


def _apply_mask(payload: bytes, mask: bytes) -> bytes:
    if not payload:
        return payload
    repeated = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(payload), "big")


class LibrarySubscriber:
    """A receive-only subscriber on the ``websockets`` library's asyncio client."""

    def __init__(self, tally: Tally, idx: int, url: str, local_host: str | None = None):
        self.tally = tally
        self.idx = idx
        self.url = url
        self.local_host = local_host
        self.connection = None
        self.task: asyncio.Task | None = None

    async def start(self, within: float) -> None:
        from websockets.asyncio.client import connect

        local = {"local_addr": (self.local_host, 0)} if self.local_host else {}
        self.connection = await connect(
            self.url, compression=None, ping_interval=None, open_timeout=within, close_timeout=2, max_size=None, **local
        )
        self.tally.on_open(self.idx)
        self.task = asyncio.create_task(self._receive())

    async def _receive(self) -> None:
        from websockets.exceptions import ConnectionClosed

        recv = self.connection.recv
        on_frame = self.tally.on_frame
        idx = self.idx
        code = 1006
        try:
            while True:
                on_frame(idx, await recv(decode=False))
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else 1006
        finally:
            self.tally.on_close(self.idx, code)

    async def close(self, within: float) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.connection.close(), within)
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


class SSESubscriber(_StreamClient):
    """A Server-Sent Events client: one GET, then every marker found in the stream counts as one
    message (the service's ``message`` events and the SSE baseline's events each carry one;
    chunked-encoding lines and keep-alive comments carry none)."""

    close_code = 1000

    def build_request(self) -> bytes:
        return (
            f"GET {self.target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()

    def accepts(self, head: bytes) -> bool:
        return head.startswith(b"HTTP/1.1 200")

    def consume(self) -> None:
        # Hand over every complete event (blank-line separated); keep the unfinished tail.
        buffer = self.buffer
        end = buffer.rfind(b"\n\n")
        if end < 0:
            return
        chunk = bytes(buffer[: end + 2])
        del buffer[: end + 2]
        start = chunk.find(MARK)
        on_frame = self.tally.on_frame
        while start >= 0:
            on_frame(self.idx, chunk[start : start + 64])
            start = chunk.find(MARK, start + 1)

    async def close(self, within: float) -> None:
        if self.transport is not None and not self.lost.done():
            self.transport.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.lost), within)


SUBSCRIBER_IMPLS = {"raw": RawSubscriber, "websockets": LibrarySubscriber, "sse": SSESubscriber}


def subscriber_impl(name: str):
    """A subscriber class by name, or by ``module:Class`` for one defined in another bench module
    (imported here: client processes are spawned and import only this module)."""
    if name in SUBSCRIBER_IMPLS:
        return SUBSCRIBER_IMPLS[name]
    module, _, attribute = name.partition(":")
    return getattr(importlib.import_module(module), attribute)


class SubscriberRole:
    """Commands of a subscriber process; connections are kept in named groups (one per server)."""

    def __init__(self):
        self.tallies: dict[str, Tally] = {}
        self.connections: dict[str, list] = {}
        self.cpu_mark = time.process_time()

    def tally(self, group: str) -> Tally:
        if group not in self.tallies:
            self.tallies[group] = Tally()
            self.connections[group] = []
        return self.tallies[group]

    async def cmd_connect(
        self,
        group: str,
        urls: list[str],
        impl: str,
        concurrency: int,
        open_timeout: float,
        local_host: str | None = None,
    ) -> dict:
        """Open one connection per URL, at most ``concurrency`` handshakes at a time (from ``local_host``)."""
        tally = self.tally(group)
        limit = asyncio.Semaphore(concurrency)
        errors: dict[str, int] = {}
        kind = subscriber_impl(impl)

        async def one(url: str) -> None:
            async with limit:
                subscriber = kind(tally, tally.add_connection(), url, local_host)
                try:
                    await subscriber.start(open_timeout)
                    self.connections[group].append(subscriber)
                except Exception as error:  # noqa: BLE001 - counted and reported
                    said = str(error) or (
                        "no answer within the open timeout" if isinstance(error, TimeoutError) else ""
                    )
                    name = f"{type(error).__name__}: {said}"[:200]
                    errors[name] = errors.get(name, 0) + 1
                    await subscriber.close(1.0)

        started = time.monotonic()
        open_before = sum(tally.open)
        await asyncio.gather(*(one(url) for url in urls))
        return {
            "connected": sum(tally.open) - open_before,
            "failed": sum(errors.values()),
            "errors": errors,
            "seconds": time.monotonic() - started,
        }

    async def cmd_arm(self, group: str, phase: str, expected: int, latencies: bool) -> dict:
        tally = self.tally(group)
        tally.arm(phase, expected, latencies)
        self.cpu_mark = time.process_time()
        return {"target": tally.target}

    async def cmd_wait(self, group: str, deadline: float, idle: float) -> dict:
        """Wait until every connection got the armed count, nothing arrived for ``idle`` s, or ``deadline``."""
        tally = self.tally(group)
        started = last_change = time.monotonic()
        seen = tally.received
        ended = "complete"
        while not tally.done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tally.done.wait(), 0.2)
            now = time.monotonic()
            if tally.received != seen:
                seen, last_change = tally.received, now
            if now - started > deadline:
                ended = "deadline"
                break
            if now - last_change > idle:
                ended = "idle"
                break
        counts = [c for c, is_open in zip(tally.counts, tally.open, strict=True) if is_open] or [0]
        return {
            "ended": ended,
            "cpu_s": time.process_time() - self.cpu_mark,
            "connections_open": sum(tally.open),
            "target": tally.target,
            "complete": tally.complete,
            "received": tally.received,
            "expected_per_connection": tally.expected,
            "min_per_connection": min(counts),
            "first_recv": tally.first_recv,
            "last_recv": tally.last_recv,
            "stale": tally.stale,
            "disorder": tally.disorder,
            "others": tally.others,
            "other_samples": list(tally.other_samples),
            "close_codes": dict(tally.close_codes),
            "latencies": tally.latencies.tobytes() if tally.latencies is not None else b"",
        }

    async def cmd_close(self, group: str, close_timeout: float) -> dict:
        """Close the group's connections; report what the server had closed before."""
        tally = self.tally(group)
        summary = {"open_before_close": sum(tally.open), "closed_by_server": dict(tally.close_codes)}
        connections = self.connections.pop(group, [])
        self.tallies.pop(group, None)
        await asyncio.gather(*(c.close(close_timeout) for c in connections), return_exceptions=True)
        return summary

    async def shutdown(self) -> None:
        for group in list(self.connections):
            await self.cmd_close(group, 1.0)


class PublisherLink:
    """One publishing connection (``websockets`` client)."""

    def __init__(self, connection):
        self.connection = connection
        self.ticker: asyncio.Task | None = None
        self.ticks = 0
        self.frames_received = 0
        self.samples: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        # The publisher should receive nothing (no echo); anything it gets, such as a
        # rate-limit error, is kept for the report.
        with contextlib.suppress(Exception):
            async for frame in self.connection:
                self.frames_received += 1
                if len(self.samples) < MAX_OTHER_SAMPLES:
                    self.samples.append(str(frame)[:300])

    async def stop_ticker(self) -> int:
        if self.ticker is not None:
            self.ticker.cancel()
            await asyncio.gather(self.ticker, return_exceptions=True)
            self.ticker = None
        return self.ticks

    async def close(self, within: float) -> dict:
        await self.stop_ticker()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.connection.close(), within)
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)
        return {"frames_received": self.frames_received, "samples": self.samples}


class PublisherRole:
    """Commands of the publisher process: per group (server), one or more connections that send.

    With several connections (one per channel of the many-channels scenario) message ``seq``
    goes out on connection ``seq % len(links)``: publishes are dealt round-robin over channels.
    """

    def __init__(self):
        self.links: dict[str, list[PublisherLink]] = {}

    async def cmd_connect(self, group: str, urls: list[str], open_timeout: float, concurrency: int = 16) -> dict:
        from websockets.asyncio.client import connect

        options = {"compression": None, "ping_interval": None, "close_timeout": 2}
        limit = asyncio.Semaphore(concurrency)

        async def one(url: str) -> PublisherLink:
            async with limit:
                return PublisherLink(await connect(url, open_timeout=open_timeout, **options))

        self.links[group] = list(await asyncio.gather(*(one(url) for url in urls)))
        return {"connected": len(self.links[group])}

    def _senders(self, group: str) -> list:
        return [link.connection.send for link in self.links[group]]

    async def cmd_ticker_start(self, group: str, phase: str, interval: float, size: int) -> dict:
        """Every ``interval`` seconds publish one message of ``phase`` on each connection, until ``ticker_stop``."""
        links = self.links[group]
        senders = self._senders(group)

        async def tick() -> None:
            seq = 0
            while True:
                for send in senders:
                    await send(make_payload(phase, seq, size))
                    seq += 1
                links[0].ticks = seq
                await asyncio.sleep(interval)

        links[0].ticks = 0
        links[0].ticker = asyncio.create_task(tick())
        return {}

    async def cmd_ticker_stop(self, group: str) -> dict:
        return {"sent": await self.links[group][0].stop_ticker()}

    async def cmd_burst(self, group: str, phase: str, count: int, size: int) -> dict:
        """Send ``count`` messages back to back (``send`` waits only when the socket buffer is full)."""
        senders = self._senders(group)
        links = len(senders)
        cpu = time.process_time()
        first = time.time()
        for seq in range(count):
            await senders[seq % links](make_payload(phase, seq, size))
        last = time.time()
        return {"t_first": first, "t_last": last, "sent": count, "cpu_s": time.process_time() - cpu}

    async def cmd_rate(self, group: str, phase: str, rate: float, total: int, size: int) -> dict:
        """Send ``total`` messages at ``rate`` messages per second on a fixed schedule."""
        senders = self._senders(group)
        links = len(senders)
        loop = asyncio.get_running_loop()
        start = loop.time()
        first = time.time()
        worst_lag = 0.0
        for seq in range(total):
            delay = start + seq / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                worst_lag = max(worst_lag, -delay)
            await senders[seq % links](make_payload(phase, seq, size))
        return {"t_first": first, "t_last": time.time(), "sent": total, "worst_schedule_lag_s": worst_lag}

    async def cmd_close(self, group: str, close_timeout: float) -> dict:
        links = self.links.pop(group, [])
        closed = await asyncio.gather(*(link.close(close_timeout) for link in links))
        return {
            "frames_received": sum(c["frames_received"] for c in closed),
            "samples": [sample for c in closed for sample in c["samples"]][:MAX_OTHER_SAMPLES],
        }

    async def shutdown(self) -> None:
        for group in list(self.links):
            await self.cmd_close(group, 1.0)


class DjangoPublisherRole:
    """A separate Django process publishing with the Python API (``channels_app.publish`` / ``apublish``).

    ``setup`` points it at the service's settings (the same config file and database), so in
    Redis mode its messages reach the service's subscribers through Redis, as a backend's would.
    """

    async def cmd_setup(self, env: dict[str, str], source: str) -> dict:
        os.environ.update(env)
        os.chdir(source)
        sys.path.insert(0, source)
        import django

        django.setup()
        return {"django": django.get_version()}

    async def cmd_publish(self, channel: str, phase: str, count: int, size: int, mode: str, concurrency: int) -> dict:
        """Publish ``count`` messages: ``sync`` calls ``publish()`` in a thread, ``async`` awaits
        ``apublish()`` from ``concurrency`` tasks."""
        import channels_app

        errors: dict[str, int] = {}

        def failed(error: Exception) -> None:
            name = f"{type(error).__name__}: {error}"[:200]
            errors[name] = errors.get(name, 0) + 1

        def publish_all() -> None:
            for seq in range(count):
                try:
                    channels_app.publish(channel, make_payload(phase, seq, size))
                except Exception as error:  # noqa: BLE001 - counted and reported
                    failed(error)

        next_seq = iter(range(count))

        async def worker() -> None:
            for seq in next_seq:
                try:
                    await channels_app.apublish(channel, make_payload(phase, seq, size))
                except Exception as error:  # noqa: BLE001 - counted and reported
                    failed(error)

        cpu = time.process_time()
        first = time.time()
        if mode == "sync":
            # publish() is for synchronous code: it may not run on this process's event loop.
            await asyncio.to_thread(publish_all)
        else:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        last = time.time()
        return {
            "t_first": first,
            "t_last": last,
            "sent": count - sum(errors.values()),
            "errors": errors,
            "cpu_s": time.process_time() - cpu,
        }

    async def shutdown(self) -> None:
        pass


ROLES = {"subscriber": SubscriberRole, "publisher": PublisherRole, "django-publisher": DjangoPublisherRole}


def worker_main(conn, role: str, max_seconds: float) -> None:
    """Entry point of a client process: obey commands from ``conn`` until ``exit`` or EOF."""
    from .servers import die_with_parent

    die_with_parent()
    raise_fd_limit()
    asyncio.run(_serve(conn, ROLES[role](), max_seconds))


async def _serve(conn, handler, max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue = asyncio.Queue()

    def readable() -> None:
        try:
            commands.put_nowait(conn.recv())
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())
            commands.put_nowait(None)

    loop.add_reader(conn.fileno(), readable)
    # However the orchestrator fares, this process ends by itself.
    loop.call_later(max_seconds, commands.put_nowait, None)
    try:
        while True:
            command = await commands.get()
            if command is None:
                return
            name, kwargs = command
            if name == "exit":
                await handler.shutdown()
                conn.send(("ok", {}))
                return
            try:
                result = await getattr(handler, f"cmd_{name}")(**kwargs)
                conn.send(("ok", result))
            except Exception:  # noqa: BLE001 - reported to the orchestrator
                conn.send(("error", traceback.format_exc()))
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(handler.shutdown(), 5)


class WorkerError(RuntimeError):
    """A client process failed a command, died or did not answer in time."""


class Worker:
    """The orchestrator's handle on one client process."""

    def __init__(self, context, role: str, index: int, max_seconds: float):
        self.role = role
        self.name = f"{role}-{index}"
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=worker_main, args=(child, role, max_seconds), name=f"bench-{self.name}", daemon=True
        )
        self.process.start()
        child.close()

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, name: str, **kwargs) -> None:
        self.conn.send((name, kwargs))

    def recv(self, timeout: float):
        deadline = time.monotonic() + timeout
        while not self.conn.poll(0.25):
            if not self.process.is_alive():
                raise WorkerError(f"client process {self.name} died (exit code {self.process.exitcode})")
            if time.monotonic() > deadline:
                raise WorkerError(f"client process {self.name} did not answer within {timeout:.0f} s")
        status, result = self.conn.recv()
        if status != "ok":
            raise WorkerError(f"client process {self.name} failed:\n{result}")
        return result

    def call(self, name: str, timeout: float, **kwargs):
        self.send(name, **kwargs)
        return self.recv(timeout)

    def stop(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(Exception):
                self.call("exit", timeout=10)
            self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


class ClientPool:
    """``subscriber_processes`` subscriber processes and one publisher process."""

    def __init__(self, subscriber_processes: int, max_seconds: float = 3600.0):
        context = self.context = multiprocessing.get_context("spawn")
        self.max_seconds = max_seconds
        self.subscribers: list[Worker] = []
        self.extras: list[Worker] = []
        self.publisher: Worker | None = None
        try:
            for index in range(subscriber_processes):
                self.subscribers.append(Worker(context, "subscriber", index, max_seconds))
            self.publisher = Worker(context, "publisher", 0, max_seconds)
        except BaseException:
            self.stop()
            raise

    def extra(self, role: str) -> Worker:
        """One more client process of ``role`` (stopped with the pool, or by the caller)."""
        worker = Worker(self.context, role, len(self.extras), self.max_seconds)
        self.extras.append(worker)
        return worker

    def pids(self) -> dict[str, int]:
        """Process ids by name, for CPU accounting."""
        pids = {w.name: w.pid for w in self.subscribers}
        if self.publisher is not None:
            pids[self.publisher.name] = self.publisher.pid
        return pids

    def split(self, items: list) -> list[list]:
        """``items`` dealt round-robin over the subscriber processes."""
        count = len(self.subscribers)
        return [items[i::count] for i in range(count)]

    def send_all(self, name: str, per_worker: list[dict] | None = None, **kwargs) -> None:
        for index, worker in enumerate(self.subscribers):
            worker.send(name, **{**kwargs, **(per_worker[index] if per_worker else {})})

    def recv_all(self, timeout: float) -> list:
        deadline = time.monotonic() + timeout
        return [w.recv(max(deadline - time.monotonic(), 1.0)) for w in self.subscribers]

    def call_all(self, name: str, timeout: float, per_worker: list[dict] | None = None, **kwargs) -> list:
        self.send_all(name, per_worker, **kwargs)
        return self.recv_all(timeout)

    def stop(self) -> None:
        workers = [*self.subscribers, *([self.publisher] if self.publisher else []), *self.extras]
        for worker in workers:
            worker.stop()
