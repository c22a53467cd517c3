"""Idempotent pushes: a retried request with the same ``Idempotency-Key`` publishes once.

The key is recorded in the same atomic step as the message it publishes (``append_many`` of the
history stores), so a retry gets the original receipt whatever became of the first attempt's
answer: refused before anything was sent, lost in a timeout after the message was recorded, or
still on its way. No claim is taken beforehand, so none can be left behind by a failed or crashed
attempt. A key belongs to one incarnation of one channel and is remembered for
``IDEMPOTENCY_WINDOW_SECONDS``; reusing it there for another payload is refused (422).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass

from ..channel import ChannelInfo
from ..errors import ApplicationError
from ..messages import TEXT, Message

IDEMPOTENCY_WINDOW_SECONDS = 24 * 3600
MAX_REMEMBERED_KEYS = 100_000
MAX_KEY_LENGTH = 200


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A client's ``Idempotency-Key`` and the fingerprint of the payload it was first used for."""

    key: str
    fingerprint: str


def idempotency_key_parse(raw: str | None, *, payload: str, payload_kind: str = TEXT) -> IdempotencyKey | None:
    """The key of a push (None without the header); 400 for an empty or over-long key.

    The fingerprint covers the payload's kind: a key used for the string ``"{}"`` is not the key of
    the object ``{}``. A text payload's fingerprint is its text's alone, as before kinds existed.
    """
    if raw is None:
        return None
    if not raw or len(raw) > MAX_KEY_LENGTH:
        raise ApplicationError("bad_request", f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters.", status=400)
    text = payload.encode("utf-8", "surrogatepass")
    fingerprinted = text if payload_kind == TEXT else f"{payload_kind}:".encode() + text
    return IdempotencyKey(raw, hashlib.sha256(fingerprinted).hexdigest())


def idempotency_key_reused() -> ApplicationError:
    """The key was already used on this channel for a different payload (422)."""
    return ApplicationError(
        "idempotency_key_reused",
        "This Idempotency-Key was already used for a different message on this channel: use a new key.",
        status=422,
    )


class MemoryReceipts:
    """The messages keyed publishes recorded in this process, oldest first, forgotten after the window."""

    def __init__(self, *, window: float = IDEMPOTENCY_WINDOW_SECONDS, clock=time.monotonic):
        self._window = window
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str, str], tuple[float, str, Message]] = OrderedDict()

    def lookup(self, channel: ChannelInfo, epoch: str, key: IdempotencyKey | None) -> Message | ApplicationError | None:
        """The message recorded under ``key`` in this incarnation of the channel, a refusal when the
        key was used for another payload, or None when the key is new (or absent)."""
        if key is None:
            return None
        self._expire()
        entry = self._entries.get((channel.id, epoch, key.key))
        if entry is None:
            return None
        _, fingerprint, message = entry
        return message if fingerprint == key.fingerprint else idempotency_key_reused()

    def remember(self, channel: ChannelInfo, epoch: str, key: IdempotencyKey | None, message: Message) -> None:
        """Record that ``key`` published ``message``."""
        if key is not None:
            self._entries[(channel.id, epoch, key.key)] = (self._clock(), key.fingerprint, message)

    def _expire(self) -> None:
        oldest_allowed = self._clock() - self._window
        entries = self._entries
        while entries:
            created, _, _ = next(iter(entries.values()))
            if created >= oldest_allowed and len(entries) <= MAX_REMEMBERED_KEYS:
                break
            entries.popitem(last=False)
