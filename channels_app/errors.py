"""The one application error type, turned into HTTP statuses and WebSocket close codes at the boundary."""

from __future__ import annotations

from typing import Any


class ApplicationError(Exception):
    """A request the service refuses: ``code`` is machine-readable, ``message`` says what to fix.

    ``status`` is the HTTP status and ``close_code`` the WebSocket close code used at the
    boundary; both are documented in docs/protocol.md.
    """

    def __init__(
        self, code: str, message: str, *, status: int = 400, close_code: int = 4400, extra: dict[str, Any] | None = None
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.close_code = close_code
        self.extra = extra or {}

    def copy(self) -> ApplicationError:
        """The same refusal as a new exception, for raising it in several callers at once."""
        return ApplicationError(
            self.code, self.message, status=self.status, close_code=self.close_code, extra=dict(self.extra)
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON body of the refusal: ``{"error": code, "message": text, ...extra}``."""
        return {"error": self.code, "message": self.message, **self.extra}


def bad_request(message: str, **extra: Any) -> ApplicationError:
    """A malformed query, body or frame (400 / 4400)."""
    return ApplicationError("bad_request", message, status=400, close_code=4400, extra=extra)


def channel_not_found(reference: str) -> ApplicationError:
    """No active channel has this id or name (404 / 4404)."""
    # Ids have at most 100 characters: a longer reference is shown cut, not echoed back whole.
    shown = reference if len(reference) <= 100 else reference[:100] + "..."
    return ApplicationError(
        "channel_not_found",
        f"No channel has the id or name {shown!r}: check the URL, or create the channel first.",
        status=404,
        close_code=4404,
    )


def wrong_transport(channel_id: str, channel_type: str) -> ApplicationError:
    """A WebSocket channel requested as an event stream, or the reverse (400 / 4400)."""
    if channel_type == "WS":
        hint = "it is a WebSocket channel: open it with new WebSocket(url), not EventSource"
    else:
        hint = "it is an SSE channel: open it with new EventSource(url), not a WebSocket"
    return ApplicationError(
        "wrong_transport", f"Channel {channel_id!r} cannot be opened this way: {hint}.", status=400, close_code=4400
    )


def channel_full(channel_id: str, limit: int) -> ApplicationError:
    """The channel has ``max_of_channel_connections`` live connections (422 / 4422)."""
    return ApplicationError(
        "channel_full",
        f"Channel {channel_id!r} already has its maximum of {limit} connections: try again later.",
        status=422,
        close_code=4422,
    )


def client_id_taken(channel_id: str, client_id: str) -> ApplicationError:
    """Another live connection on the channel uses this clientId (409 / 4409)."""
    return ApplicationError(
        "client_id_taken",
        f"clientId {client_id!r} is already connected to channel {channel_id!r}: "
        "use another clientId or close the other connection.",
        status=409,
        close_code=4409,
    )


def client_id_replaced(channel_id: str, client_id: str) -> ApplicationError:
    """A newer connection with this clientId took the slot (``duplicate_client_id: replace``) (409 / 4001)."""
    return ApplicationError(
        "replaced",
        f"A newer connection with clientId {client_id!r} joined channel {channel_id!r} and replaced this one: "
        "do not reconnect with this clientId, or the two will keep replacing each other.",
        status=409,
        close_code=4001,
    )


def shutting_down() -> ApplicationError:
    """This instance is draining before it stops and takes no new connections (503 / 4503)."""
    return ApplicationError(
        "shutting_down",
        "This instance is shutting down and accepts no new connections: reconnect in a moment.",
        status=503,
        close_code=4503,
    )


def publish_outcome_unknown() -> ApplicationError:
    """The publish was sent to Redis, which did not answer in time: it may or may not be recorded (504 / 4504)."""
    return ApplicationError(
        "publish_outcome_unknown",
        "The message broker (Redis) did not answer in time, so whether this message was published is unknown. "
        "Retry with the same Idempotency-Key: you get the original receipt if it was published, and it is "
        "published once if it was not.",
        status=504,
        close_code=4504,
    )


def too_many_channels(limit: int) -> ApplicationError:
    """A multiplexed connection asked for more than ``server.max_channels_per_connection`` channels (400 / 4400)."""
    return ApplicationError(
        "too_many_channels",
        f"One connection may follow at most {limit} channels (server.max_channels_per_connection): "
        "unsubscribe from one first, or open another connection.",
        status=400,
        close_code=4400,
        extra={"limit": limit},
    )
