"""What the WebSocket and event-stream endpoints share: reading the query of a subscribe request,
and building an admitted connection's outbox and subscriptions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

from ..adapters.servers import write_buffer_watch
from ..core.outbox import Outbox
from ..core.runtime import Runtime
from ..core.services import Connection
from ..core.subscription import Subscription
from ..messages import Message


def query_lists(scope: dict) -> dict[str, list[str]]:
    """Every value of each query-string parameter, in order (``?channel=a&channel=b``)."""
    return parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)


def query_params(scope: dict) -> dict[str, str]:
    """The last value of each query-string parameter."""
    return {key: values[-1] for key, values in query_lists(scope).items()}


def flag(value: str | None) -> bool:
    """Whether a query flag such as ``echo=1`` is on."""
    return value is not None and value.lower() in ("1", "true", "yes", "on")


def new_outbox(
    *, runtime: Runtime, send, write: Callable[[object], Awaitable[None]], on_overflow: Callable[[], None]
) -> Outbox:
    """A connection's outbox: frames written by ``write``, bounded by the server settings counting
    what ``send``'s server buffers. A multiplexed connection's subscriptions share one."""
    server = runtime.server
    buffered_bytes, wait_drained = write_buffer_watch(send)
    return Outbox(
        write=write,
        max_messages=server.max_pending_messages,
        max_bytes=server.max_pending_bytes,
        on_overflow=on_overflow,
        buffered_bytes=buffered_bytes,
        wait_drained=wait_drained,
    )


def subscription_for(
    connection: Connection,
    outbox: Outbox,
    *,
    encode: Callable[[Message], tuple[object, int]],
    encode_control: Callable[[dict], tuple[object, int]],
    on_close: Callable[[int, dict], None],
    transport: str,
) -> Subscription:
    """The subscription of an admitted connection to its channel, queueing into ``outbox``."""
    return Subscription(
        channel_id=connection.channel.id,
        client_id=connection.client_id,
        holder=connection.holder,
        echo=connection.echo,
        encode=encode,
        encode_control=encode_control,
        outbox=outbox,
        on_close=on_close,
        transport=transport,
        info=connection.info,
    )


def new_subscription(
    *,
    runtime: Runtime,
    connection: Connection,
    send,
    write: Callable[[object], Awaitable[None]],
    encode: Callable[[Message], tuple[object, int]],
    encode_control: Callable[[dict], tuple[object, int]],
    on_overflow: Callable[[], None],
    on_close: Callable[[int, dict], None],
    transport: str,
) -> Subscription:
    """The subscription of a one-channel connection, with its own outbox."""
    outbox = new_outbox(runtime=runtime, send=send, write=write, on_overflow=on_overflow)
    return subscription_for(
        connection, outbox, encode=encode, encode_control=encode_control, on_close=on_close, transport=transport
    )
