"""An async subscriber over WebSocket (WS channels) or Server-Sent Events (SSE channels).

It mirrors the browser client (channels_app/static/realtime/realtime.js): it reconnects after any
disconnect with exponential backoff and equal jitter, resumes after the last message it received
(``?since=`` on WebSockets, ``Last-Event-ID`` on event streams), drops repeats by message id, and
yields a ``Gap`` when the server's history could not cover what was missed. Refusals a retry cannot
fix end the iteration with their typed error.

    async with subscribe("http://127.0.0.1:8080", "my-chat-example", client_id="worker-1") as sub:
        async for event in sub:
            if isinstance(event, Gap): ...
            else: print(event.payload, sub.position)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ._version import __version__
from .calls import channel_path
from .errors import RealtimeError, error_from
from .models import FrameError, Gap, Message
from .retry import backoff_delay
from .sse import EventParser

logger = logging.getLogger(__name__)

# Refusals a retry cannot fix (realtime.js's PERMANENT): bad request, token, origin, unknown or deleted channel.
PERMANENT = frozenset({1003, 4400, 4401, 4403, 4404, 4410})
# Permanent only before the first connection that lasted: after a restart the old connection's slot
# may linger for a moment (REALTIME_PRESENCE_LEASE_SECONDS under Redis), so a reconnect keeps trying.
PERMANENT_UNTIL_CONNECTED = frozenset({4409, 4422})
# An event stream is refused with an HTTP status; it is reported with the matching close code.
STATUS_TO_CODE = {400: 4400, 401: 4401, 403: 4403, 404: 4404, 409: 4409, 410: 4410, 413: 1009, 422: 4422, 503: 4503}
ABNORMAL_CLOSURE = 1006
MAX_SEEN_IDS = 2000
TRANSPORTS = ("ws", "sse")
PAYLOAD_FORMATS = ("text", "json")
USER_AGENT = f"realtime-client-python/{__version__}"

Event = Message | Gap | FrameError
TokenSource = str | Callable[[], str | Awaitable[str]]


@dataclass
class _Ended:
    """How one connection ended (or failed to start): a close code and the server's words, if any."""

    code: int
    error: str | None = None
    message: str | None = None
    status: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


_END = object()


class Subscription:
    """One channel subscription; iterate it (``async for``) for ``Message``, ``Gap`` and ``FrameError`` events.

    Attributes: ``position`` (the resume position of the last message handed to you), ``state``
    (``idle``, ``connecting``, ``open``, ``reconnecting``, ``closed``), ``transport`` (``ws`` or
    ``sse``, found by the channel's preflight unless given) and ``reconnects``.
    """

    def __init__(
        self,
        base_url: str,
        channel: str,
        *,
        client_id: str | None = None,
        token: TokenSource | None = None,
        since: str | None = None,
        history: bool = False,
        transport: str | None = None,
        echo: bool = False,
        payload: str | None = None,
        min_delay: float = 0.5,
        max_delay: float = 15.0,
        stable_after: float = 2.0,
        open_timeout: float = 10.0,
        read_timeout: float = 45.0,
        max_queue: int = 1000,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be the service's http:// or https:// root, not {base_url!r}")
        if transport is not None and transport.lower() not in TRANSPORTS:
            raise ValueError('transport must be "ws", "sse" or None (ask the channel)')
        if payload is not None and payload not in PAYLOAD_FORMATS:
            raise ValueError('payload must be "text", "json" or None (the channel\'s payloadFormat)')
        self.base_url = base_url.rstrip("/")
        self.channel = channel
        self.path = channel_path(channel)
        self.client_id = client_id
        self.transport = transport.lower() if transport else None
        self.echo = echo
        self.payload_format = payload
        self.min_delay, self.max_delay, self.stable_after = min_delay, max_delay, stable_after
        self.open_timeout, self.read_timeout = open_timeout, read_timeout
        self.position: str | None = since
        self.state = "idle"
        self.reconnects = 0
        self._token = token
        self._history = history
        # Where the next connection resumes: after the last message received (maybe not yet handed out).
        self._resume_at = since if since is not None else ("0" if history else None)
        self._queue: asyncio.Queue = asyncio.Queue(max_queue)
        self._seen: dict[str, None] = {}
        self._task: asyncio.Task | None = None
        self._ws = None
        self._http: httpx.AsyncClient | None = None
        self._opened_at: float | None = None
        self._delivered = False
        self._ever_connected = False
        self._closed = False

    # --- the caller's side ----------------------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        self._start()
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._queue.put_nowait(item)  # the subscription has stopped: every later call says why
            raise item
        if isinstance(item, Message) and item.position:
            self.position = item.position
        return item

    async def __aenter__(self) -> Subscription:
        self._start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def send(self, text: Any) -> bool:
        """Publish ``text`` on a WS channel (with ``payload="json"``, any JSON value, sent as its JSON text);
        False when not connected (nothing is queued). The server's answers about it, if any, arrive as
        ``FrameError`` events."""
        if self.transport == "sse":
            raise TypeError("send() works on WS channels; publish to SSE channels with Publisher.publish")
        ws = self._ws
        if ws is None:
            return False
        if self.payload_format == "json":
            text = json.dumps(text, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        try:
            await ws.send(text)
        except ConnectionClosed:
            return False
        return True

    async def close(self) -> None:
        """Stop for good: close the connection, cancel any reconnect and end the iteration."""
        if self._closed:
            return
        self._closed = True
        self.state = "closed"
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_END)

    # --- the connection loop --------------------------------------------------------------------

    def _start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"realtime-subscribe-{self.channel}")

    async def _run(self) -> None:
        try:
            timeout = httpx.Timeout(self.open_timeout, read=self.read_timeout)
            headers = {"User-Agent": USER_AGENT}
            async with httpx.AsyncClient(base_url=self.base_url, timeout=timeout, headers=headers) as http:
                self._http = http
                await self._connect_forever()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.state = "closed"
            if not isinstance(exc, RealtimeError):
                logger.exception("subscription to %r stopped by an unexpected error", self.channel)
            await self._queue.put(exc)

    async def _connect_forever(self) -> None:
        attempt = 0
        while True:
            self.state = "reconnecting" if self.reconnects else "connecting"
            self._opened_at, self._delivered = None, False
            if self.transport is None:
                self.transport = await self._describe()
            if self.transport is None:
                ended = _Ended(ABNORMAL_CLOSURE, message="the channel's preflight failed")
            elif self.transport == "ws":
                ended = await self._run_websocket()
            else:
                ended = await self._run_event_stream()
            self._ws = None
            lasted = self._opened_at is not None and time.monotonic() - self._opened_at >= self.stable_after
            if self._delivered or lasted:
                attempt, self._ever_connected = 0, True
            if self._permanent(ended.code):
                raise self._refusal(ended)
            if ended.code == 1009:
                await self._queue.put(FrameError(self._refusal(ended)))
            delay = backoff_delay(attempt, base=self.min_delay, cap=self.max_delay)
            attempt += 1
            self.reconnects += 1
            self.state = "reconnecting"
            logger.info(
                "subscription to %r ended (%s %s); reconnecting in %.2fs", self.channel, ended.code, ended.error, delay
            )
            await asyncio.sleep(delay)

    def _permanent(self, code: int) -> bool:
        if code in PERMANENT:
            return True
        if code in PERMANENT_UNTIL_CONNECTED:
            return not self._ever_connected
        # An HTTP refusal with no close code of its own (a proxy's 405, say) will not change either.
        return 400 <= code < 500 and code not in (408, 429)

    def _refusal(self, ended: _Ended) -> RealtimeError:
        close_code = ended.code if ended.code >= 1000 else None
        return error_from(ended.error, ended.message, status=ended.status, close_code=close_code, details=ended.details)

    async def _describe(self) -> str | None:
        """The channel's transport from its preflight (``?upgrade=0``); None when the server is unreachable."""
        try:
            response = await self._http.get(self.path, params={"upgrade": "0"})
        except httpx.TransportError as exc:
            logger.info("preflight of %r failed: %s", self.channel, type(exc).__name__)
            return None
        if response.status_code >= 500:
            return None
        body = _json_or_none(response)
        if response.status_code != 200 or not isinstance(body, dict):
            raise self._refusal(_http_refusal(response.status_code, body))
        transport = str(body.get("type", "")).lower()
        return transport if transport in TRANSPORTS else None

    async def _query(self, *, resume: bool) -> str:
        params: dict[str, str] = {}
        if self.client_id:
            params["clientId"] = self.client_id
        if self.echo:
            params["echo"] = "1"
        if self.payload_format:
            params["payload"] = self.payload_format
        if self._token is not None:
            params["token"] = await self._current_token()
        if resume and self._resume_at is not None:
            params["since"] = self._resume_at
        return urlencode(params)

    async def _current_token(self) -> str:
        if isinstance(self._token, str):
            return self._token
        value = self._token()
        return await value if inspect.isawaitable(value) else value

    def _opened(self) -> None:
        self._opened_at = time.monotonic()
        self.state = "open"

    async def _deliver(self, body: Any, event_id: str | None = None) -> None:
        if not isinstance(body, dict):
            return
        message = Message.from_wire(body)
        if message.position or event_id:
            self._resume_at = message.position or event_id
        if message.id in self._seen:
            return
        self._seen[message.id] = None
        if len(self._seen) > MAX_SEEN_IDS:
            del self._seen[next(iter(self._seen))]
        self._delivered = self._ever_connected = True
        await self._queue.put(message)

    async def _gap(self, body: dict[str, Any]) -> None:
        # Asking for the whole history on the first connection promises nothing: trimmed history is no loss.
        if not self._ever_connected and self._history and body.get("requested") == "0":
            return
        await self._queue.put(Gap.from_wire(body))

    async def _run_websocket(self) -> _Ended:
        url = f"{self.base_url.replace('http', 'ws', 1)}{self.path}?{await self._query(resume=True)}"
        try:
            # max_size=None: the server bounds what it publishes (server.max_message_size); its envelope
            # around a payload of that size may be several times larger once JSON-escaped.
            opening = ws_connect(url, open_timeout=self.open_timeout, max_size=None, user_agent_header=USER_AGENT)
            async with opening as ws:
                self._ws = ws
                self._opened()
                closing = await self._read_websocket(ws)
                code = closing.get("code") if closing else ws.close_code
        except InvalidStatus as exc:
            return _http_refusal(exc.response.status_code, _json_bytes(exc.response.body))
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            return _Ended(ABNORMAL_CLOSURE, message=f"could not connect ({type(exc).__name__})")
        if not isinstance(code, int):
            code = ABNORMAL_CLOSURE
        closing = closing or {}
        return _Ended(
            code,
            closing.get("error"),
            closing.get("message"),
            details={k: v for k, v in closing.items() if k not in ("control", "code", "error", "message")},
        )

    async def _read_websocket(self, ws) -> dict[str, Any] | None:
        """Read frames until the connection closes; the server's close frame, if it sent one."""
        closing = None
        try:
            async for text in ws:
                try:
                    data = json.loads(text)
                except (TypeError, ValueError):
                    logger.warning("subscription to %r: skipped a frame that is not JSON", self.channel)
                    continue
                control = data.get("control") if isinstance(data, dict) else None
                if control == "gap":
                    await self._gap(data)
                elif control == "close":
                    closing = data
                elif control == "error":
                    error = error_from(data.get("error"), data.get("message"), close_code=data.get("code"))
                    await self._queue.put(FrameError(error))
                elif control is None:
                    await self._deliver(data)
        except ConnectionClosed:
            pass
        return closing

    async def _run_event_stream(self) -> _Ended:
        headers = {"Accept": "text/event-stream"}
        if self._resume_at is not None:
            headers["Last-Event-ID"] = self._resume_at
        url = f"{self.path}?{await self._query(resume=False)}"
        try:
            async with self._http.stream("GET", url, headers=headers) as response:
                if response.status_code != 200:
                    await response.aread()
                    return _http_refusal(response.status_code, _json_or_none(response))
                parser = EventParser()
                async for line in response.aiter_lines():
                    event = parser.feed(line)
                    if event is None:
                        continue
                    if event.type == "stream-open":
                        self._opened()  # subscribed: every message published from now on follows
                        continue
                    body = _json_text(event.data)
                    if event.type == "message":
                        await self._deliver(body, event.id)
                    elif event.type == "gap" and isinstance(body, dict):
                        await self._gap(body)
                    elif event.type == "stream-error" and isinstance(body, dict) and body.get("control") == "close":
                        return _Ended(int(body.get("code") or ABNORMAL_CLOSURE), body.get("error"), body.get("message"))
        except httpx.TransportError as exc:
            return _Ended(ABNORMAL_CLOSURE, message=f"the event stream failed ({type(exc).__name__})")
        return _Ended(ABNORMAL_CLOSURE, message="the event stream ended")


def _json_text(text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def _json_bytes(body: bytes | None) -> Any:
    return _json_text(body) if body else None


def _json_or_none(response: httpx.Response) -> Any:
    return _json_text(response.content)


def _http_refusal(status: int, body: Any) -> _Ended:
    body = body if isinstance(body, dict) else {}
    details = {key: value for key, value in body.items() if key not in ("error", "message")}
    return _Ended(STATUS_TO_CODE.get(status, status), body.get("error"), body.get("message"), status, details)


subscribe = Subscription
