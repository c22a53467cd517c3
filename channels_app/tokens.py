"""Subscriber tokens for private channels: HMAC-SHA256 JWTs.

A token names one channel (``channel``), one client (``sub``), an expiry (``exp``) and whether
the client may publish (``pub``). It travels as ``?token=`` because an ``EventSource`` cannot
send headers; daphne's access log is redacted so it never shows there (see ops/logredact.py).
The signing key is ``REALTIME_TOKEN_SECRET`` (falling back to ``DJANGO_SECRET_KEY``): every
instance must share it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt
from django.conf import settings

from .errors import ApplicationError

ALGORITHM = "HS256"
DEFAULT_TTL_SECONDS = 3600
MIN_TTL_SECONDS = 1
MAX_TTL_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token allows."""

    channel_id: str
    client_id: str
    expires_at: int
    can_publish: bool


def token_required(channel_id: str) -> ApplicationError:
    """A private channel was opened without a token (401 / 4401)."""
    return ApplicationError(
        "token_required",
        f"Channel {channel_id!r} is private: connect with ?token=<token> minted for this channel "
        "(POST /api/v1/tokens or channels_app.tokens.token_mint).",
        status=401,
        close_code=4401,
    )


def token_invalid(reason: str) -> ApplicationError:
    """A token that is forged, malformed or expired (401 / 4401)."""
    return ApplicationError("token_invalid", f"The token was refused: {reason}.", status=401, close_code=4401)


def token_forbidden(message: str) -> ApplicationError:
    """A valid token that does not allow this (403 / 4403)."""
    return ApplicationError("token_forbidden", message, status=403, close_code=4403)


def _secret() -> str:
    return settings.REALTIME_TOKEN_SECRET


def token_mint(*, channel_id: str, client_id: str, ttl: int = DEFAULT_TTL_SECONDS, can_publish: bool = False) -> str:
    """Sign a token letting ``client_id`` subscribe to ``channel_id`` for ``ttl`` seconds."""
    if not MIN_TTL_SECONDS <= ttl <= MAX_TTL_SECONDS:
        raise ApplicationError(
            "bad_request",
            f"ttl must be between {MIN_TTL_SECONDS} and {MAX_TTL_SECONDS} seconds",
            status=400,
            close_code=4400,
        )
    now = int(time.time())
    claims = {"channel": channel_id, "sub": client_id, "iat": now, "exp": now + ttl, "pub": bool(can_publish)}
    return jwt.encode(claims, _secret(), algorithm=ALGORITHM)


def token_verify(token: str, *, channel_id: str) -> TokenClaims:
    """Check a token's signature, expiry and channel; raise ``ApplicationError`` when refused."""
    if not isinstance(token, str) or not token.isascii():
        # A JWT is ASCII; PyJWT would raise UnicodeEncodeError on a lone surrogate.
        raise token_invalid("it is not a token signed by this service")
    try:
        claims = jwt.decode(token, _secret(), algorithms=[ALGORITHM], options={"require": ["exp", "sub", "channel"]})
    except jwt.ExpiredSignatureError as exc:
        raise token_invalid("it has expired; mint a new one") from exc
    except jwt.InvalidTokenError as exc:
        raise token_invalid("it is not a token signed by this service") from exc
    if claims.get("channel") != channel_id:
        raise token_forbidden(f"The token is for another channel, not {channel_id!r}.")
    if not isinstance(claims.get("sub"), str):
        raise token_invalid("its sub claim is not a clientId")
    return TokenClaims(
        channel_id=channel_id,
        client_id=claims["sub"],
        expires_at=int(claims["exp"]),
        can_publish=bool(claims.get("pub", False)),
    )
