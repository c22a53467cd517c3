"""Per-instance fan-out: the layer carries each message once per instance, and the hub encodes it once
per transport for every local subscription (docs/architecture.md, "Why the code is shaped this way").

Messages carry per-channel offsets, so a message the layer dropped is noticed as a hole and re-read
from history; only what history no longer holds is lost, and subscribers are told with a ``gap``.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable

from .. import counters
from ..config import events_per_turn
from ..errors import ApplicationError, client_id_replaced
from ..messages import Message, utc_timestamp
from ..naming import HUB_CHANNEL_PREFIX, REGISTRY_GROUP, SERVER_CLIENT_ID, channel_group
from ..state.history import Gap
from .subscription import Subscription

logger = logging.getLogger(__name__)

# Channel layers forget group members after group_expiry (a day by default); re-joining every
# hour keeps long-lived subscriptions alive.
GROUP_REFRESH_SECONDS = 3600


class Hub:
    """Joins channel groups for this instance and fans messages out to local subscriptions."""

    def __init__(
        self,
        runtime,
        *,
        on_subscribe: Callable[[], None] | None = None,
        on_unsubscribe: Callable[[], None] | None = None,
    ):
        """``runtime`` supplies the layer, history, registry and counters, read when used (so the hub
        always works with the runtime's own); ``on_subscribe`` and ``on_unsubscribe`` run for every
        subscription that starts and ends."""
        self.runtime = runtime
        self.layer = runtime.layer
        self.stats = runtime.stats
        self.events_per_turn = events_per_turn(runtime.server)
        self._on_subscribe = on_subscribe
        self._on_unsubscribe = on_unsubscribe
        self.channel_name: str | None = None
        self._local: dict[str, set[Subscription]] = {}
        # Local subscriptions per transport, kept as they come and go: metrics must not count them
        # all at every scrape (at 100,000 channels that held the event loop for 250 ms).
        self._per_transport: Counter[str] = Counter()
        # The close of each local multiplexed socket: one that follows no channel has no subscription to close.
        self._sockets: set[Callable[[int, dict], None]] = set()
        self._next_offset: dict[str, tuple[str, int]] = {}
        self._tasks: list[asyncio.Task] = []
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        """Create the hub's layer channel and start its receive loop (once per process)."""
        if self.channel_name is not None:
            return
        async with self._start_lock:
            if self.channel_name is not None:
                return
            self.channel_name = await self.layer.new_channel(HUB_CHANNEL_PREFIX)
            await self.layer.group_add(REGISTRY_GROUP, self.channel_name)
            # A fresh context: the hub serves every connection, so it must not carry the
            # request id of the connection that happened to start it.
            self._tasks = [
                asyncio.create_task(self._receive_loop(), name="realtime-hub-receive", context=contextvars.Context()),
                asyncio.create_task(self._refresh_loop(), name="realtime-hub-refresh", context=contextvars.Context()),
            ]
            if self.runtime.metrics_snapshots is not None:
                self.runtime.metrics_snapshots.start()
            logger.info("hub listening on %s", self.channel_name)

    async def stop(self) -> None:
        """Stop the receive loop (tests and shutdown)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.runtime.metrics_snapshots is not None:
            await self.runtime.metrics_snapshots.stop()

    async def subscribe(self, subscription: Subscription) -> None:
        """Start fanning the channel's messages out to ``subscription``."""
        await self.start()
        if self._on_subscribe is not None:
            self._on_subscribe()
        channel_id = subscription.channel_id
        local = self._local.get(channel_id)
        if local is None:
            local = self._local[channel_id] = set()
            self._add_local(local, subscription)
            await self.layer.group_add(channel_group(channel_id), self.channel_name)
            await self._start_sequence(channel_id)
        else:
            self._add_local(local, subscription)

    def _add_local(self, local: set[Subscription], subscription: Subscription) -> None:
        if subscription not in local:
            local.add(subscription)
            self._per_transport[subscription.transport] += 1

    async def _start_sequence(self, channel_id: str) -> None:
        """Expect the offset after the channel's newest, read once the group is joined.

        Without it the first message heard would set the sequence, and an earlier one published
        through another instance and heard after it would be dropped as a repeat."""
        try:
            channel = await self.runtime.registry.resolve(channel_id)
            current = await self.runtime.history.current(channel)
        except Exception:
            logger.exception("could not read where channel %s stands; its first message sets it", channel_id)
            return
        self._next_offset.setdefault(channel_id, (current.epoch, (current.offset or 0) + 1))

    async def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to ``subscription``; leave the group when it was the last one here."""
        channel_id = subscription.channel_id
        local = self._local.get(channel_id)
        if local is None or subscription not in local:
            return
        local.discard(subscription)
        self._per_transport[subscription.transport] -= 1
        if self._on_unsubscribe is not None:
            self._on_unsubscribe()
        if not local:
            del self._local[channel_id]
            self._next_offset.pop(channel_id, None)
            await self.layer.group_discard(channel_group(channel_id), self.channel_name)

    def busiest_local(self, limit: int | None = None) -> tuple[list[tuple[str, dict[str, int]]], dict[str, int]]:
        """The ``limit`` channels with the most local subscriptions (all without a limit), the busiest
        first, each with its subscriptions per transport; and the others' subscriptions summed per
        transport. Only the chosen channels' subscriptions are counted, whatever the number of channels."""
        chosen = (
            sorted(self._local.items(), key=_busiest_first)
            if limit is None
            else heapq.nsmallest(limit, self._local.items(), key=_busiest_first)
        )
        busiest = [(channel_id, _per_transport(subscriptions)) for channel_id, subscriptions in chosen]
        others = Counter(self._per_transport)
        for _, counts in busiest:
            others.subtract(counts)
        return busiest, {transport: count for transport, count in others.items() if count > 0}

    def local_count(self, channel_id: str) -> int:
        """Subscriptions to ``channel_id`` held by this instance."""
        return len(self._local.get(channel_id, ()))

    def close_local(self, channel_id: str, error: ApplicationError) -> int:
        """Close every local subscription of a channel with the error's code; return how many."""
        body = {"control": "close", "code": error.close_code, **error.as_dict()}
        return self._close(list(self._local.get(channel_id, ())), error.close_code, body)

    def close_replaced(self, channel_id: str, client_id: str, holder: str) -> int:
        """Close the local subscription whose slot a newer connection took (4001); return how many."""
        error = client_id_replaced(channel_id, client_id)
        body = {"control": "close", "code": error.close_code, **error.as_dict()}
        replaced = [
            subscription
            for subscription in self._local.get(channel_id, ())
            if subscription.client_id == client_id and subscription.holder == holder
        ]
        return self._close(replaced, error.close_code, body)

    def close_all(self, code: int, body: dict) -> int:
        """Close every local subscription of every channel, and every multiplexed socket (graceful
        shutdown); return how many subscriptions."""
        for close in list(self._sockets):
            close(code, body)
        return self._close([s for local in self._local.values() for s in local], code, body)

    def socket_opened(self, close: Callable[[int, dict], None]) -> None:
        """Note a multiplexed socket, closed with ``close`` by ``close_all`` even when it follows no channel."""
        self._sockets.add(close)

    def socket_closed(self, close: Callable[[int, dict], None]) -> None:
        """Forget a multiplexed socket (``socket_opened``)."""
        self._sockets.discard(close)

    @staticmethod
    def _close(subscriptions: list[Subscription], code: int, body: dict) -> int:
        for subscription in subscriptions:
            subscription.close(code, body)
        return len(subscriptions)

    async def _receive_loop(self) -> None:
        while True:
            try:
                budget = self.events_per_turn
                while budget > 0:
                    event = await self.layer.receive(self.channel_name)
                    await self.dispatch(event)
                    budget -= _messages_in(event)
                # receive() does not yield while events are queued: let the connections' writers
                # drain their outboxes every few events, or a burst would overflow every one of them.
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                raise
            except Exception:
                # One bad event must not stop delivery for the whole instance.
                logger.exception("hub could not handle a channel-layer event")
                self.stats.incr(counters.HUB_ERRORS)
                await asyncio.sleep(0.01)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(GROUP_REFRESH_SECONDS)
            for group in [REGISTRY_GROUP, *map(channel_group, self._local)]:
                try:
                    await self.layer.group_add(group, self.channel_name)
                except Exception:
                    logger.exception("could not refresh group membership of %s", group)

    async def dispatch(self, event: dict) -> None:
        """Handle one event received on the hub's layer channel."""
        kind = event.get("type")
        if kind == "realtime.message":
            await self._on_message(_message_from_event(event))
        elif kind == "realtime.messages":
            for message in _messages_from_run_event(event):
                try:
                    await self._on_message(message)
                except Exception:
                    # As if each message were its own event: the rest of the run is still delivered.
                    logger.exception("hub could not deliver message %s of a run", message.id)
                    self.stats.incr(counters.HUB_ERRORS)
        elif kind == "realtime.close":
            error = ApplicationError(
                event.get("error", "closed"),
                event.get("message", "The server closed this connection."),
                close_code=int(event.get("code", 4000)),
            )
            self.close_local(event["channel_id"], error)
        elif kind == "realtime.replaced":
            self.close_replaced(event["channel_id"], event["client_id"], event["holder"])
        elif kind == "realtime.presence":
            self.deliver_controls(event.get("events", ()), self._local.get(event["channel_id"], ()))
        elif kind == "realtime.registry_changed":
            # Without a channel (an older instance's event) the whole cache is forgotten.
            self.runtime.registry.invalidate(pk=event.get("pk"), references=event.get("references", ()))
            self.stats.incr(counters.REGISTRY_CHANGES_HEARD)
        else:
            logger.warning("hub ignored a channel-layer event of unknown type %r", kind)
            self.stats.incr(counters.HUB_UNKNOWN_EVENTS)

    async def _on_message(self, message: Message) -> None:
        local = self._local.get(message.channel_id)
        if not local:
            return
        if message.offset is not None:
            if not await self._in_sequence(message):
                return
        self.deliver(message, local)

    async def _in_sequence(self, message: Message) -> bool:
        """Track per-channel offsets: drop repeats, repair holes from history."""
        channel_id = message.channel_id
        expected = self._next_offset.get(channel_id)
        if expected is not None and expected[0] == message.epoch and message.offset < expected[1]:
            self.stats.incr(counters.HUB_DUPLICATES)
            return False
        self._next_offset[channel_id] = (message.epoch, message.offset + 1)
        if expected is None:
            return True
        if expected[0] == message.epoch and message.offset > expected[1]:
            await self._repair(message, expected[1])
        elif expected[0] != message.epoch and message.offset > 1:
            # A new epoch (Redis restarted empty) starts at offset 1: what came before this message
            # was published while the layer re-subscribed, and is read back from the new history.
            await self._repair(message, 1)
        return True

    async def _repair(self, message: Message, first_missing: int) -> None:
        last_missing = message.offset - 1
        self.stats.incr(counters.LAYER_GAPS)
        try:
            channel = await self.runtime.registry.resolve(message.channel_id)
            recovered = await self.runtime.history.between(channel, first_missing, last_missing)
        except Exception:
            logger.exception("could not repair a hole in channel %s", message.channel_id)
            recovered = []
        local = self._local.get(message.channel_id, set())
        for missing in recovered:
            self.deliver(missing, local)
        self.stats.incr(counters.LAYER_RECOVERED, len(recovered))
        lost = (last_missing - first_missing + 1) - len(recovered)
        if lost > 0:
            self.stats.incr(counters.MESSAGES_LOST, lost)
            logger.warning(
                "channel %s: %d message(s) between offsets %d and %d were dropped by the channel "
                "layer and are no longer in history",
                message.channel_id,
                lost,
                first_missing,
                last_missing,
            )
            gap = Gap("dropped", f"{message.epoch}-{first_missing - 1}", f"{message.epoch}-{message.offset}")
            for subscription in local:
                subscription.send_gap(gap)

    def deliver(self, message: Message, subscriptions) -> None:
        """Encode ``message`` once per transport and offer it to each subscription."""
        if message.published_at is not None:
            self.stats.observe_latency(time.time() - message.published_at)
        encoded: dict[object, tuple[object, int]] = {}
        delivered = 0
        for subscription in tuple(subscriptions):
            encoder = subscription.encode
            frame = encoded.get(encoder)
            if frame is None:
                frame = encoded[encoder] = encoder(message)
            if subscription.offer(message, frame[0], frame[1]):
                delivered += 1
        self.stats.incr(counters.DELIVERIES, delivered)

    @staticmethod
    def deliver_controls(bodies, subscriptions) -> None:
        """Encode each control frame (presence ``join`` / ``leave``) once per transport and queue it
        for each subscription."""
        subscriptions = tuple(subscriptions)
        for body in bodies:
            encoded: dict[object, tuple[object, int]] = {}
            for subscription in subscriptions:
                encoder = subscription.encode_control
                frame = encoded.get(encoder)
                if frame is None:
                    frame = encoded[encoder] = encoder(body)
                subscription.outbox.put(frame[0], frame[1])


async def broadcast_registry_change(layer, *, pk: int | None = None, references: tuple[str, ...] = ()) -> None:
    """Tell every instance's hub to forget channel ``pk`` and ``references`` (all channels without them)."""
    event = {"type": "realtime.registry_changed", "references": list(references)}
    if pk is not None:
        event["pk"] = pk
    await layer.group_send(REGISTRY_GROUP, event)


def _messages_in(event: dict) -> int:
    """How many messages an event carries, as counted against a turn's budget."""
    if event.get("type") == "realtime.messages":
        return max(1, len(event.get("messages", ())))
    return 1


def _messages_from_run_event(event: dict) -> list[Message]:
    """The messages of a ``realtime.messages`` event (``messages.layer_event``), oldest first."""
    published_at = event.get("published_at") or [None] * len(event["messages"])
    return [Message.from_wire(wire, published_at=at) for wire, at in zip(event["messages"], published_at, strict=True)]


def _message_from_event(event: dict) -> Message:
    """The message in a ``realtime.message`` event: a full envelope, or a raw ``group_send``."""
    wire = event.get("message")
    if wire is not None:
        return Message.from_wire(wire, published_at=event.get("published_at"))
    payload = event.get("payload")
    if not isinstance(payload, str):
        raise ValueError(
            "a realtime.message event needs 'payload' as a string: "
            "group_send(group, {'type': 'realtime.message', 'channel_id': ..., 'payload': '...'})"
        )
    return Message(
        id=str(uuid.uuid4()),
        channel_id=event["channel_id"],
        client_id=event.get("client_id", SERVER_CLIENT_ID),
        payload=payload,
        created_at=utc_timestamp(),
        published_at=time.time(),
    )


def _busiest_first(item: tuple[str, set]) -> tuple[int, str]:
    channel_id, subscriptions = item
    return -len(subscriptions), channel_id


def _per_transport(subscriptions: set[Subscription]) -> dict[str, int]:
    return dict(Counter(subscription.transport for subscription in subscriptions))
