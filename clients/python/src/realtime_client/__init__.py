"""Python client for the Realtime service: publish over the HTTP API, mint tokens, subscribe over WebSocket or SSE.

    from realtime_client import Publisher

    with Publisher("http://127.0.0.1:8080", api_key="...") as publisher:
        receipt = publisher.publish("my-chat-example", {"order": 42})

See docs/python-client.md in the service's repository.
"""

from ._version import __version__
from .errors import (
    BadRequest,
    ChannelDeleted,
    ChannelFull,
    Conflict,
    ConnectionFailed,
    Forbidden,
    IdempotencyKeyReused,
    NotFound,
    NotPublished,
    OutcomeUnknown,
    PayloadTooLarge,
    RateLimited,
    RealtimeError,
    ServerError,
    Unauthorized,
    Unavailable,
)
from .models import BatchItem, BatchResult, FrameError, Gap, History, Message, Receipt, Token
from .publisher import AsyncPublisher, Publisher
from .retry import RetryPolicy
from .subscriber import Subscription, subscribe
from .tokens import mint_token

__all__ = [
    "AsyncPublisher",
    "BadRequest",
    "BatchItem",
    "BatchResult",
    "ChannelDeleted",
    "ChannelFull",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "FrameError",
    "Gap",
    "History",
    "IdempotencyKeyReused",
    "Message",
    "NotFound",
    "NotPublished",
    "OutcomeUnknown",
    "PayloadTooLarge",
    "Publisher",
    "RateLimited",
    "RealtimeError",
    "Receipt",
    "RetryPolicy",
    "ServerError",
    "Subscription",
    "Token",
    "Unauthorized",
    "Unavailable",
    "__version__",
    "mint_token",
    "subscribe",
]
