"""What the multiplexed endpoints share (``/api/v1/events`` and ``/api/v1/connect``): the channels a
connection asks for, and the stream id that holds every channel's position (docs/protocol.md,
"Many channels on one connection")."""

from __future__ import annotations

from urllib.parse import quote, unquote

from ..core.runtime import Runtime
from ..core.services import Connection, connection_close
from ..errors import ApplicationError, bad_request, too_many_channels
from ..messages import Position, position_parse

# The longest stream id read back: 1000 channels of 100-character ids and long positions.
MAX_STREAM_ID_LENGTH = 256 * 1024


def channel_references(values: list[str], limit: int) -> list[str]:
    """The distinct channels a connection asks for, in order; 400 when none, one is empty, or more than ``limit``."""
    if not values:
        raise bad_request("Name the channels to follow: ?channel=<id or name>&channel=<id or name>.", field="channel")
    if any(not value for value in values):
        raise bad_request("A channel parameter is empty: give each channel's id or name.", field="channel")
    references = list(dict.fromkeys(values))
    if len(references) > limit:
        raise too_many_channels(limit)
    return references


def stream_id(positions: dict[str, str]) -> str:
    """Every channel's position in one event id, django-eventstream's way: ``<id>:<position>,...``."""
    return ",".join(f"{quote(channel_id, safe='')}:{position}" for channel_id, position in positions.items())


def stream_id_parse(raw: str | None) -> dict[str, Position]:
    """The positions in a stream id (``Last-Event-ID``); a one-channel position is not one; 400 when malformed."""
    if not raw:
        return {}
    if len(raw) > MAX_STREAM_ID_LENGTH:
        raise bad_request("Last-Event-ID is too long to be an id of this stream.", field="lastEventId")
    positions = {}
    for part in raw.split(","):
        channel_id, separator, position = part.rpartition(":")
        if not separator or not channel_id:
            raise bad_request(
                "Last-Event-ID must be an id of this stream: <channel id>:<position>, separated by commas "
                "(such as 'news:k3x9a-42,alerts:0').",
                field="lastEventId",
            )
        positions[unquote(channel_id)] = position_parse(position)
    return positions


def refusal_naming(error: ApplicationError, reference: str) -> ApplicationError:
    """``error`` with the channel it is about, as the client named it."""
    named = error.copy()
    named.extra["channel"] = reference
    return named


async def connections_close(connections: list[Connection], runtime: Runtime) -> None:
    """Give back the slots of connections admitted before one of their stream's channels was refused."""
    for connection in connections:
        await connection_close(connection=connection, subscription=None, runtime=runtime)
