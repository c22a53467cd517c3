"""Stand-ins for what surrounds the fan-out core in-process: a connection that collects its frames, a history
that holds its writes until released."""

from __future__ import annotations

import asyncio

from channels_app.core.outbox import Outbox
from channels_app.core.subscription import Subscription
from channels_app.messages import Message


def encode_payload_only(message: Message):
    """A frame of ``("message", payload)``, counted as one byte."""
    return ("message", message.payload), 1


class FakeConnection:
    """A subscription wired to an outbox whose frames are collected in ``written``, as a socket would take them.

    ``closed`` holds the (code, body) of every close the subscription asks for, ``overflows`` counts the
    times its outbox overflowed.
    """

    def __init__(
        self,
        *,
        encode=encode_payload_only,
        channel_id: str = "room-1",
        client_id: str = "reader",
        echo: bool = False,
        max_messages: int = 100,
        max_bytes: int = 1_000_000,
        wait_drained=None,
    ):
        self.written: list = []
        self.closed: list = []
        self.overflows = 0
        self._changed = asyncio.Event()
        drained = {"wait_drained": wait_drained} if wait_drained else {}
        self.outbox = Outbox(
            write=self._write,
            max_messages=max_messages,
            max_bytes=max_bytes,
            on_overflow=self._overflow,
            buffered_bytes=lambda: 0,
            **drained,
        )
        self.subscription = Subscription(
            channel_id=channel_id,
            client_id=client_id,
            echo=echo,
            encode=encode,
            encode_control=lambda body: (("control", body), 1),
            outbox=self.outbox,
            on_close=lambda code, body: self.closed.append((code, body)),
        )

    def start(self) -> FakeConnection:
        """Live from now on (nothing to replay), its outbox writing: a subscriber as the hub sees it."""
        self.subscription.replay(None)
        self.outbox.start()
        return self

    async def _write(self, frame) -> None:
        self.written.append(frame)
        self._changed.set()

    def _overflow(self) -> None:
        self.overflows += 1
        self._changed.set()

    @property
    def close_codes(self) -> list[int]:
        """The code of every close the subscription asked for."""
        return [code for code, _ in self.closed]

    def offer(self, *messages: Message) -> None:
        """Hand live messages to the subscription, each encoded as ``("message", payload)``."""
        for item in messages:
            self.subscription.offer(item, ("message", item.payload), 1)

    async def frames(self) -> list:
        """Everything written once the outbox has written all it holds."""
        await self.outbox.flush()
        return self.written

    async def until_written(self, count: int, within: float = 5) -> list:
        """Wait until ``count`` frames were written (or the outbox overflowed); return what was written."""
        async with asyncio.timeout(within):
            while len(self.written) < count and not self.overflows:
                self._changed.clear()
                await self._changed.wait()
        return self.written


class HeldHistory:
    """A history whose writes (``append_many``) wait until ``release`` is set, as a busy Redis would; each
    run's size is recorded in ``runs``, ``holding`` is set once a run waits, and ``error`` (if given) is
    raised once released."""

    def __init__(self, history, *, error: Exception | None = None):
        self.history, self.error = history, error
        self.release = asyncio.Event()
        self.holding = asyncio.Event()
        self.runs: list[int] = []

    async def append_many(self, channel, drafts):
        self.runs.append(len(drafts))
        self.holding.set()
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return await self.history.append_many(channel, drafts)

    def __getattr__(self, name):
        return getattr(self.history, name)
