"""Hooks over HTTP (``server.hooks`` in the YAML), for backends that are not Django.

``connect_url`` and ``publish_url`` become hooks like the in-process ones (``channels_app/hooks.py``),
run last, by ``core/hook_calls.py``: same codes, same failure policy, same counters (labelled
``connect_url`` / ``publish_url``), each with ``server.hooks.timeout``. At most
``server.hooks.max_concurrency`` of their requests are in flight per instance; one more is refused at
once (``hook_failed``, reason ``busy``) rather than queued.

``events_url`` is sent ``channel_occupied``, ``member_added``, ``member_removed`` and
``channel_vacated`` in batches by a background task (``HookEvents``): a bounded queue (overflow is
dropped and counted), retries with exponential backoff, and nothing on the connection or fan-out
path waits for the backend.

Every request is signed: ``X-Realtime-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">``
with ``REALTIME_HOOKS_SECRET``, the timestamp (Unix seconds) in ``X-Realtime-Timestamp``
(docs/hooks.md#hooks-over-http, docs/security.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections import deque

import httpx

from .. import counters
from ..channel import ChannelInfo
from ..config import HooksConfig
from ..errors import ApplicationError
from ..hooks import ON_CONNECT, ON_PUBLISH, ConnectEvent, Hook, HookFailure, PublishEvent, Reject
from ..jsoncodec import json_parse
from ..stats import Stats

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Realtime-Signature"
TIMESTAMP_HEADER = "X-Realtime-Timestamp"
CONNECT_LABEL = "connect_url"
PUBLISH_LABEL = "publish_url"
EVENTS_LABEL = "events_url"

EVENTS_BATCH_SIZE = 100
EVENTS_BATCH_SECONDS = 1.0
EVENTS_QUEUE_SIZE = 10_000
EVENTS_ATTEMPTS = 5
EVENTS_BACKOFF_SECONDS = 0.5


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Realtime-Signature`` of a request: ``sha256=`` and the hex HMAC-SHA256, keyed with the
    secret, of the timestamp, a dot and the raw body."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def signed_headers(secret: str, body: bytes, *, now: float | None = None) -> dict[str, str]:
    """The headers of a hook request whose body is ``body``."""
    timestamp = str(int(time.time() if now is None else now))
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(secret, timestamp, body),
    }


def _channel(channel: ChannelInfo) -> dict[str, str]:
    return {"id": channel.id, "name": channel.name}


def _claims(event) -> dict | None:
    claims = event.token_claims
    if claims is None:
        return None
    return {"clientId": claims.client_id, "canPublish": claims.can_publish, "expiresAt": claims.expires_at}


class HttpHooks:
    """The hooks over HTTP of one runtime, and the one ``httpx.AsyncClient`` they share (closed by
    ``aclose`` when the runtime stops)."""

    def __init__(self, config: HooksConfig, secret: str, *, stats: Stats, max_message_size: int = 65536):
        if not secret:
            raise ValueError("server.hooks has a URL but REALTIME_HOOKS_SECRET is empty: set the secret")
        self.config = config
        self.secret = secret
        self.stats = stats
        self.in_flight = 0
        # Room for a replacement payload of max_message_size bytes, JSON escaping included (six-fold).
        self.max_answer_bytes = 6 * max_message_size + 65_536
        self._client: httpx.AsyncClient | None = None
        self.events = HookEvents(self) if config.events_url else None

    @property
    def client(self) -> httpx.AsyncClient:
        """The HTTP client, built on first use (inside the event loop that serves)."""
        if self._client is None:
            # The hook's deadline (hook_calls._call) is what times a decision out; httpx's own
            # timeout is only a backstop for event deliveries.
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.config.timeout + 1.0),
                limits=httpx.Limits(max_connections=self.config.max_concurrency),
                follow_redirects=False,
            )
        return self._client

    def hooks(self) -> tuple[Hook, ...]:
        """The ``on_connect`` / ``on_publish`` hooks its URLs make, for every channel."""
        made = []
        if self.config.connect_url:
            made.append(Hook(ON_CONNECT, self.connect, label=CONNECT_LABEL, timeout=self.config.timeout))
        if self.config.publish_url:
            made.append(Hook(ON_PUBLISH, self.publish, label=PUBLISH_LABEL, timeout=self.config.timeout))
        return tuple(made)

    async def post(self, url: str, document: dict) -> tuple[int, bytes]:
        """POST ``document`` as signed JSON; the answer's status and body. ``HookFailure`` when the body
        is larger than ``max_answer_bytes``: it is not read further."""
        body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        request = self.client.build_request("POST", url, content=body, headers=signed_headers(self.secret, body))
        response = await self.client.send(request, stream=True)
        try:
            answer = bytearray()
            async for chunk in response.aiter_raw():
                answer += chunk
                if len(answer) > self.max_answer_bytes:
                    raise HookFailure("error", f"{url} answered more than {self.max_answer_bytes} bytes")
            return response.status_code, bytes(answer)
        finally:
            await response.aclose()

    async def _decide(self, url: str, document: dict) -> dict:
        """The backend's answer, a JSON object with a boolean ``allow``; a ``Reject`` for a refusal;
        ``HookFailure`` when there is no usable answer (or too many requests are in flight)."""
        if self.in_flight >= self.config.max_concurrency:
            raise HookFailure("busy", f"{self.in_flight} requests in flight (server.hooks.max_concurrency)")
        self.in_flight += 1
        try:
            status, content = await self.post(url, document)
        except httpx.HTTPError as error:
            raise HookFailure("error", f"{url}: {type(error).__name__}: {error}") from None
        finally:
            self.in_flight -= 1
        if not 200 <= status < 300:
            raise HookFailure("error", f"{url} answered HTTP {status}")
        try:
            answer = json_parse(content)
        except ApplicationError:
            raise HookFailure("error", f"{url} answered a body that is not JSON") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("allow"), bool):
            shown = content[:200].decode("utf-8", "replace")
            raise HookFailure("error", f'{url} answered without a boolean "allow": {shown!r}')
        if not answer["allow"]:
            code, reason = answer.get("code", 4403), answer.get("reason", "Refused by the server.")
            if not isinstance(code, int) or isinstance(code, bool) or not 4000 <= code <= 4999:
                raise HookFailure("error", f'{url} refused with "code": {code!r}; use 4000 to 4999')
            if not isinstance(reason, str):
                raise HookFailure("error", f'{url} refused with a "reason" that is not a string')
            raise Reject(code, reason)
        return answer

    async def connect(self, event: ConnectEvent) -> None:
        """``connect_url``: admit, refuse, or admit with ``info``."""
        answer = await self._decide(
            self.config.connect_url,
            {
                "event": "connect",
                "channel": _channel(event.channel),
                "clientId": event.client_id,
                "transport": event.transport,
                "tokenClaims": _claims(event),
                "headers": event.headers,
            },
        )
        if answer.get("info") is not None:
            event.info = answer["info"]  # checked by hook_calls like a hook's own

    async def publish(self, event: PublishEvent) -> str | None:
        """``publish_url``: publish unchanged (None), refuse, or publish ``payload`` instead."""
        answer = await self._decide(
            self.config.publish_url,
            {
                "event": "publish",
                "channel": _channel(event.channel),
                "clientId": event.client_id,
                "transport": event.transport,
                "tokenClaims": _claims(event),
                "info": event.info,
                "payloadFormat": event.payload_format,
                "payload": event.payload,
            },
        )
        payload = answer.get("payload")
        if payload is not None and not isinstance(payload, str):
            raise HookFailure("error", f'{self.config.publish_url} answered a "payload" that is not a string')
        return payload

    async def member_joined(self, presence, channel: ChannelInfo, client_id: str) -> None:
        """After a subscriber took its slot: ``channel_occupied`` if it is the channel's only one
        (cluster-wide, by the presence store's count), then ``member_added``."""
        if self.events is None:
            return
        if await self._count(presence, channel) == 1:
            self.events.add("channel_occupied", channel)
        self.events.add("member_added", channel, client_id)

    async def member_left(self, presence, channel: ChannelInfo, client_id: str) -> None:
        """After a subscriber gave its slot back: ``member_removed``, then ``channel_vacated`` if no
        subscriber is left on any instance."""
        if self.events is None:
            return
        self.events.add("member_removed", channel, client_id)
        if await self._count(presence, channel) == 0:
            self.events.add("channel_vacated", channel)

    @staticmethod
    async def _count(presence, channel: ChannelInfo) -> int | None:
        try:
            return await presence.count(channel.id)
        except Exception:
            logger.warning("cannot count channel %s's subscribers: no occupied/vacated", channel.id, exc_info=True)
            return None

    async def aclose(self, *, within: float = 2.0) -> None:
        """Send what the events queue holds (for at most ``within`` seconds), then close the client."""
        if self.events is not None:
            await self.events.stop(within=within)
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class HookEvents:
    """The events for ``events_url``: queued (bounded), sent in batches by one background task,
    retried with exponential backoff; the task logs its errors and keeps running."""

    def __init__(
        self,
        hooks: HttpHooks,
        *,
        batch_size: int = EVENTS_BATCH_SIZE,
        batch_seconds: float = EVENTS_BATCH_SECONDS,
        capacity: int = EVENTS_QUEUE_SIZE,
        attempts: int = EVENTS_ATTEMPTS,
        backoff: float = EVENTS_BACKOFF_SECONDS,
    ):
        self.hooks = hooks
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.capacity = capacity
        self.attempts = attempts
        self.backoff = backoff
        self.queue: deque[dict] = deque()
        self.overflowed = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False

    def add(self, name: str, channel: ChannelInfo, client_id: str | None = None) -> None:
        """Queue one event (dropped, counted and logged when the queue is full); never waits."""
        if len(self.queue) >= self.capacity:
            self._dropped("overflow", 1)
            self.overflowed += 1
            if self.overflowed == 1 or self.overflowed % 1000 == 0:
                logger.warning("events_url queue full (%d): %d events dropped so far", self.capacity, self.overflowed)
            return
        event = {"name": name, "channel": _channel(channel), "time": int(time.time() * 1000)}
        if client_id is not None:
            event["clientId"] = client_id
        self.queue.append(event)
        if self._task is None and not self._stopping:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="realtime-hook-events")
        self._wakeup.set()

    async def _run(self) -> None:
        # Ends once stopping with nothing left to send.
        while self.queue or not self._stopping:
            try:
                batch = await self._next_batch()
                if batch:
                    await self._deliver(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("events_url sender failed; it goes on")
                await asyncio.sleep(1.0)

    async def _next_batch(self) -> list[dict]:
        """Up to ``batch_size`` events, once that many are queued or the first has waited ``batch_seconds``."""
        while not self.queue:
            if self._stopping:
                return []
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = asyncio.get_running_loop().time() + self.batch_seconds
        while len(self.queue) < self.batch_size and not self._stopping:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                break
        return [self.queue.popleft() for _ in range(min(self.batch_size, len(self.queue)))]

    async def _deliver(self, batch: list[dict]) -> None:
        url = self.hooks.config.events_url
        stats = self.hooks.stats
        for attempt in range(self.attempts):
            try:
                status, _ = await self.hooks.post(url, {"events": batch})
                if 200 <= status < 300:
                    stats.incr(counters.HOOK_EVENTS_SENT, len(batch))
                    return
                problem, reason = f"HTTP {status}", "error"
            except HookFailure as failure:
                problem, reason = str(failure), failure.reason
            except httpx.TimeoutException as error:
                problem, reason = repr(error), "timeout"
            except httpx.HTTPError as error:
                problem, reason = repr(error), "error"
            stats.incr(f"hook_failures_{EVENTS_LABEL}:{reason}")
            if attempt + 1 < self.attempts:
                delay = self.backoff * 2**attempt
                logger.warning("events_url: %s; %d events retried in %gs", problem, len(batch), delay)
                await asyncio.sleep(delay)
            else:
                logger.error("events_url: %s; %d events dropped after %d attempts", problem, len(batch), self.attempts)
        self._dropped("undelivered", len(batch))

    def _dropped(self, reason: str, count: int) -> None:
        self.hooks.stats.incr(f"hook_events_dropped_{reason}", count)

    async def stop(self, *, within: float) -> None:
        """Send what is queued within ``within`` seconds, then stop the task."""
        self._stopping = True
        self._wakeup.set()
        if self._task is None:
            return
        done, _ = await asyncio.wait({self._task}, timeout=within)
        if not done:
            logger.warning("events_url: %d or more events not sent before shutdown", len(self.queue))
            self._task.cancel()
            await asyncio.wait({self._task})
        self._task = None
