"""The HTTP API calls without I/O: what each sends, what its answer means, and when to send it again.

``Publisher`` and ``AsyncPublisher`` drive the same ``Attempts`` with a blocking or an async
``httpx`` client, so both follow one retry policy:

- 2xx is the answer (202, ``"fanout": "pending"``, is a success: the message is published);
- 4xx is final and raised as its typed error;
- 5xx, a refused or timed-out connection and a dropped answer are retried with backoff, within
  ``RetryPolicy.max_attempts`` and ``RetryPolicy.deadline``. Every request is safe to send again:
  a publish carries the same ``Idempotency-Key`` on every attempt (the server then answers with
  the original receipt, or publishes once), tokens and history pages have no side effect. That
  is what makes retrying a 504 or a timeout, where the request may have reached the server, safe.

When a publish gives up after an attempt that may have reached the server (504, or no answer),
the error is ``OutcomeUnknown`` carrying the key: retry later with ``idempotency_key=`` it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from .errors import ConnectionFailed, OutcomeUnknown, RealtimeError, error_from_body
from .models import BatchItem, BatchResult, History, Receipt, Token
from .retry import RetryPolicy

# Errors raised before a request left this process: retrying them can never repeat anything.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def channel_path(channel: str, suffix: str = "") -> str:
    """``/api/v1/channels/<channel><suffix>`` with the id or name quoted."""
    if not isinstance(channel, str) or not channel:
        raise ValueError("channel must be a channel's id or name (a non-empty string)")
    return f"/api/v1/channels/{quote(channel, safe='')}{suffix}"


def new_idempotency_key() -> str:
    """A fresh key for one publish call (reused by its retries)."""
    return str(uuid.uuid4())


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


@dataclass
class Call:
    """One API call: its request, and what its answer means."""

    method: str
    path: str
    body: Any = None
    params: dict[str, str] | None = None
    idempotency_key: str | None = None
    # What a 2xx answer's JSON is read into (``Token.from_wire``, say); without it, the JSON as it is.
    reads: Callable[[Any], Any] | None = None

    # A call that publishes: giving up after an attempt that may have reached the server is OutcomeUnknown.
    publishes = False

    def request(self, client: httpx.Client | httpx.AsyncClient, timeout: float) -> httpx.Request:
        """The HTTP request of one attempt (every attempt sends the same one)."""
        headers = {"Idempotency-Key": self.idempotency_key} if self.idempotency_key else {}
        return client.build_request(
            self.method, self.path, json=self.body, params=self.params, headers=headers, timeout=timeout
        )

    def parse(self, response: httpx.Response) -> Any:
        """The result of a 2xx answer."""
        return self.reads(response.json()) if self.reads else _json(response)

    def incomplete(self, result: Any) -> bool:
        """Whether a 2xx answer still holds parts worth sending again (a batch's 5xx items)."""
        return False

    def settle(self, result: Any, attempts: Attempts) -> Any:
        """The result handed to the caller once no more attempts will be made."""
        return result


@dataclass
class PublishCall(Call):
    """``POST /api/v1/channels/<channel>/messages``."""

    publishes = True

    def parse(self, response: httpx.Response) -> Receipt:
        """The receipt; ``replayed`` when the server answered an earlier attempt's publish."""
        replayed = response.headers.get("Idempotent-Replayed", "").lower() == "true"
        return Receipt.from_wire(response.json(), replayed=replayed)


@dataclass
class BatchCall(Call):
    """``POST /api/v1/messages``: item ``i`` is published under ``<key>#<i>``, so sending the whole batch again
    publishes only the items not yet published and answers the others with their receipts."""

    publishes = True
    # Items whose publish may have reached Redis unanswered in some attempt (504).
    uncertain: set[int] = field(default_factory=set)

    def parse(self, response: httpx.Response) -> BatchResult:
        """Each item's receipt or typed error."""
        items = []
        for index, result in enumerate(response.json()["results"]):
            status = result["status"]
            if status in (200, 201, 202):
                items.append(BatchItem(result.get("channel"), status, receipt=Receipt.from_wire(result)))
                continue
            if result.get("error") == "publish_outcome_unknown":
                self.uncertain.add(index)
            items.append(BatchItem(result.get("channel"), status, error=error_from_body(status, result)))
        return BatchResult(items)

    def incomplete(self, result: BatchResult) -> bool:
        """Items refused with a 5xx (Redis unreachable or unanswered, instance draining) are worth another try."""
        return any(item.status >= 500 for item in result.items)

    def settle(self, result: BatchResult, attempts: Attempts) -> BatchResult:
        """Items still failing with a 5xx after an attempt that may have published them become OutcomeUnknown."""
        items = []
        for index, item in enumerate(result.items):
            if item.error is not None and item.status >= 500 and (attempts.maybe_sent or index in self.uncertain):
                if not isinstance(item.error, OutcomeUnknown):
                    item = BatchItem(item.channel, item.status, error=attempts.outcome_unknown(item.error))
                item.error.idempotency_key = f"{self.idempotency_key}#{index}"
            items.append(item)
        return BatchResult(items)


def publish_call(channel: str, payload: Any, idempotency_key: str | None) -> PublishCall:
    """Publish ``payload`` (a string, or any JSON value sent as its JSON text) to one channel."""
    return PublishCall(
        "POST", channel_path(channel, "/messages"), {"payload": payload}, None, idempotency_key or new_idempotency_key()
    )


def batch_call(messages: Iterable[tuple[str, Any] | Mapping[str, Any]], idempotency_key: str | None) -> BatchCall:
    """Publish many messages in one request: ``(channel, payload)`` pairs or ``{"channel", "payload"}`` dicts."""
    items = []
    for message in messages:
        if isinstance(message, Mapping):
            items.append({"channel": message["channel"], "payload": message["payload"]})
        else:
            channel, payload = message
            items.append({"channel": channel, "payload": payload})
    if not items:
        raise ValueError("a batch needs at least one message")
    return BatchCall("POST", "/api/v1/messages", {"messages": items}, None, idempotency_key or new_idempotency_key())


def token_call(channel: str, client_id: str | None, ttl: int, publish: bool) -> Call:
    """Ask the server for a subscriber token (it resolves the channel's name to its id)."""
    body: dict[str, Any] = {"channel": channel, "ttl": ttl, "publish": publish}
    if client_id is not None:
        body["clientId"] = client_id
    return Call("POST", "/api/v1/tokens", body, reads=Token.from_wire)


def history_call(channel: str, since: str | None, limit: int | None, payload: str | None = None) -> Call:
    """Read a channel's history after ``since`` (all of it without), in the ``payload`` format (None: the
    channel's)."""
    pairs = (("since", since), ("limit", limit), ("payload", payload))
    params = {key: str(value) for key, value in pairs if value is not None}
    return Call("GET", channel_path(channel, "/messages"), None, params or None, reads=History.from_wire)


@dataclass
class Step:
    """What to do after one attempt: wait ``delay`` seconds and try again, or return ``result``, or raise ``error``."""

    delay: float | None = None
    result: Any = None
    error: RealtimeError | None = None

    def outcome(self) -> Any:
        """The result, or raise the error."""
        if self.error is not None:
            raise self.error
        return self.result


class Attempts:
    """The attempts of one call under one policy; told each answer or failure, it says what to do next."""

    def __init__(self, call: Call, policy: RetryPolicy, timeout: float):
        self.call = call
        self.policy = policy
        self.timeout = timeout
        self.started = time.monotonic()
        self.count = 0
        # Some attempt may have reached the server without an answer saying what it did.
        self.maybe_sent = False
        self.last_failure = ""

    def next_timeout(self) -> float:
        """Count one more attempt; its timeout, cut so that it ends by the deadline."""
        self.count += 1
        return max(0.05, min(self.timeout, self.policy.deadline - (time.monotonic() - self.started)))

    def answered(self, response: httpx.Response) -> Step:
        """Decide after an HTTP answer."""
        if response.status_code < 400:
            result = self.call.parse(response)
            if self.call.incomplete(result):
                self.last_failure = "some batch items failed with 5xx"
                step = self._again()
                if step is not None:
                    return step
            return Step(result=self.call.settle(result, self))
        error = error_from_body(response.status_code, _json(response), response.text)
        if response.status_code < 500:
            return Step(error=self._final(error))
        if isinstance(error, OutcomeUnknown):
            self.maybe_sent = True
        self.last_failure = f"HTTP {response.status_code} {error.code}"
        return self._again() or Step(error=self._final(error))

    def failed(self, exc: httpx.TransportError) -> Step:
        """Decide after the request failed without an answer."""
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self.last_failure = reason
        if isinstance(exc, NOT_SENT):
            error: RealtimeError = ConnectionFailed(
                "connection_failed", f"Could not connect to the server ({reason}); nothing was sent."
            )
        else:
            self.maybe_sent = True
            error = ConnectionFailed(
                "no_answer", f"The server did not answer ({reason}); the request may have reached it."
            )
        return self._again() or Step(error=self._final(error))

    def outcome_unknown(self, cause: RealtimeError) -> OutcomeUnknown:
        """``cause`` as OutcomeUnknown: an earlier attempt may have published what the last one failed to."""
        error = OutcomeUnknown(
            "publish_outcome_unknown",
            f"After {self.count} attempt(s) it is unknown whether this was published: an attempt may have reached "
            f"the server unanswered. Retry with the same idempotency key. Last failure: {cause.message}",
            status=cause.status,
            details={"last_error": cause.code},
        )
        error.__cause__ = cause
        return error

    def _again(self) -> Step | None:
        if self.count >= self.policy.max_attempts:
            return None
        delay = self.policy.delay(self.count)
        if time.monotonic() - self.started + delay >= self.policy.deadline:
            return None
        return Step(delay=delay)

    def _final(self, error: RealtimeError) -> RealtimeError:
        # A 4xx is the server's word on this request: an earlier attempt's fate does not change it.
        failed = error.status is None or error.status >= 500
        if self.call.publishes and self.maybe_sent and failed and not isinstance(error, OutcomeUnknown):
            error = self.outcome_unknown(error)
        error.attempts = self.count
        error.idempotency_key = self.call.idempotency_key
        return error
