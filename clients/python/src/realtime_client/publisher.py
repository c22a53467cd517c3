"""Publishing over the HTTP API: ``Publisher`` (blocking) and ``AsyncPublisher`` (asyncio).

Both send the same calls (calls.py) under the same retry policy; only the waiting differs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from ._version import __version__
from .calls import Attempts, Call, batch_call, history_call, publish_call, token_call
from .models import BatchResult, History, Receipt, Token
from .retry import RetryPolicy

logger = logging.getLogger(__name__)


def _client_options(base_url: str, api_key: str | None) -> dict[str, Any]:
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must be the service's http:// or https:// root, not {base_url!r}")
    headers = {"User-Agent": f"realtime-client-python/{__version__}"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return {"base_url": base_url.rstrip("/"), "headers": headers}


def _log_retry(call: Call, attempts: Attempts, delay: float) -> None:
    logger.warning(
        "%s %s: %s; retrying in %.2fs (attempt %d of at most %d)",
        call.method,
        call.path,
        attempts.last_failure,
        delay,
        attempts.count + 1,
        attempts.policy.max_attempts,
    )


class Publisher:
    """Publishes to channels, mints tokens and reads history over the HTTP API, blocking.

    ``timeout`` bounds each request, ``retry`` the retries (see ``RetryPolicy``). Use it as a context
    manager, or call ``close()``; one instance is safe to share between threads.
    """

    def __init__(
        self, base_url: str, api_key: str | None = None, *, timeout: float = 10.0, retry: RetryPolicy | None = None
    ):
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._client = httpx.Client(**_client_options(base_url, api_key))

    def publish(self, channel: str, payload: Any, *, idempotency_key: str | None = None) -> Receipt:
        """Publish ``payload`` (a string, or any JSON value: subscribers in the json payload format receive it as
        that value, the others as its JSON text) to a channel (id or name).

        The call's ``Idempotency-Key`` (``idempotency_key``, or a fresh one) is reused on every retry,
        so the message is published once however many attempts it takes.
        """
        return self._run(publish_call(channel, payload, idempotency_key))

    def publish_batch(
        self, messages: Iterable[tuple[str, Any] | Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> BatchResult:
        """Publish up to 100 ``(channel, payload)`` pairs in one request; items refused with a 5xx are sent again
        (under the same key, so published items are not repeated). Other refusals are in ``result.failed``."""
        return self._run(batch_call(messages, idempotency_key))

    def create_token(
        self, channel: str, *, client_id: str | None = None, ttl: int = 3600, publish: bool = False
    ) -> Token:
        """Ask the server for a subscriber token for a private channel (id or name)."""
        return self._run(token_call(channel, client_id, ttl, publish))

    def history(
        self, channel: str, *, since: str | None = None, limit: int | None = None, payload: str | None = None
    ) -> History:
        """The channel's messages after position ``since`` (all it holds without), at most ``limit``; with
        ``payload="json"`` payloads published as JSON values are those values (None: the channel's format)."""
        return self._run(history_call(channel, since, limit, payload))

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _run(self, call: Call) -> Any:
        attempts = Attempts(call, self.retry, self.timeout)
        while True:
            request = call.request(self._client, attempts.next_timeout())
            try:
                step = attempts.answered(self._client.send(request))
            except httpx.TransportError as exc:
                step = attempts.failed(exc)
            if step.delay is None:
                return step.outcome()
            _log_retry(call, attempts, step.delay)
            time.sleep(step.delay)


class AsyncPublisher:
    """``Publisher`` for asyncio code: the same methods, awaited. Use it as an async context manager, or
    ``await close()``."""

    def __init__(
        self, base_url: str, api_key: str | None = None, *, timeout: float = 10.0, retry: RetryPolicy | None = None
    ):
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._client = httpx.AsyncClient(**_client_options(base_url, api_key))

    async def publish(self, channel: str, payload: Any, *, idempotency_key: str | None = None) -> Receipt:
        """Publish ``payload`` to a channel; see ``Publisher.publish``."""
        return await self._run(publish_call(channel, payload, idempotency_key))

    async def publish_batch(
        self, messages: Iterable[tuple[str, Any] | Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> BatchResult:
        """Publish many messages in one request; see ``Publisher.publish_batch``."""
        return await self._run(batch_call(messages, idempotency_key))

    async def create_token(
        self, channel: str, *, client_id: str | None = None, ttl: int = 3600, publish: bool = False
    ) -> Token:
        """Ask the server for a subscriber token for a private channel (id or name)."""
        return await self._run(token_call(channel, client_id, ttl, publish))

    async def history(
        self, channel: str, *, since: str | None = None, limit: int | None = None, payload: str | None = None
    ) -> History:
        """The channel's messages after position ``since``; see ``Publisher.history``."""
        return await self._run(history_call(channel, since, limit, payload))

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def _run(self, call: Call) -> Any:
        attempts = Attempts(call, self.retry, self.timeout)
        while True:
            request = call.request(self._client, attempts.next_timeout())
            try:
                step = attempts.answered(await self._client.send(request))
            except httpx.TransportError as exc:
                step = attempts.failed(exc)
            if step.delay is None:
                return step.outcome()
            _log_retry(call, attempts, step.delay)
            await asyncio.sleep(step.delay)
