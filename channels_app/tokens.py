"""Subscriber tokens for private channels: HMAC-SHA256 JWTs.

A token names one channel (``channel``), one client (``sub``), an expiry (``exp``) and whether
the client may publish (``pub``). It travels as ``?token=`` because an ``EventSource`` cannot
send headers; daphne's access log is redacted so it never shows there (see ops/logredact.py).
The signing key is ``REALTIME_TOKEN_SECRET`` (falling back to ``DJANGO_SECRET_KEY``): every
instance must share it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from django.conf import settings

from .errors import ApplicationError, bad_request

ALGORITHM = "HS256"
DEFAULT_TTL_SECONDS = 3600
MIN_TTL_SECONDS = 1
MAX_TTL_SECONDS = 7 * 24 * 3600
# What a token may say about its subscriber (``info``, shown by presence): a JSON object this small
# keeps tokens short enough for a URL.
MAX_INFO_BYTES = 1024
# Channels one token may cover: a token travels in a URL, so it stays a few KB at most.
MAX_TOKEN_CHANNELS = 32


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token allows."""

    channel_id: str
    client_id: str
    expires_at: int
    can_publish: bool
    info: dict[str, Any] | None = None


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


def token_info_check(info: object) -> dict[str, Any] | None:
    """A token's ``info``: None, or a JSON object of at most ``MAX_INFO_BYTES``; 400 otherwise."""
    if info is None:
        return None
    if not isinstance(info, Mapping):
        raise bad_request("info must be a JSON object.", field="info")
    try:
        size = len(json.dumps(info, separators=(",", ":"), allow_nan=False).encode("utf-8"))
    except (TypeError, ValueError) as exc:
        raise bad_request(f"info must be JSON: {exc}", field="info") from exc
    if size > MAX_INFO_BYTES:
        raise bad_request(f"info is {size} bytes of JSON; the limit is {MAX_INFO_BYTES}.", field="info")
    return dict(info)


def token_mint(
    *,
    channel_id: str | Sequence[str],
    client_id: str,
    ttl: int = DEFAULT_TTL_SECONDS,
    can_publish: bool = False,
    info: Mapping[str, Any] | None = None,
) -> str:
    """Sign a token letting ``client_id`` subscribe to ``channel_id`` (or to each of several channel
    ids, on one multiplexed connection) for ``ttl`` seconds; ``info`` (a small JSON object, a display
    name say) is what presence shows about the subscriber."""
    if not MIN_TTL_SECONDS <= ttl <= MAX_TTL_SECONDS:
        raise ApplicationError(
            "bad_request",
            f"ttl must be between {MIN_TTL_SECONDS} and {MAX_TTL_SECONDS} seconds",
            status=400,
            close_code=4400,
        )
    now = int(time.time())
    claims = {"sub": client_id, "iat": now, "exp": now + ttl, "pub": bool(can_publish)}
    if isinstance(channel_id, str):
        claims["channel"] = channel_id
    else:
        claims["channels"] = list(channel_id)
    info = token_info_check(info)
    if info is not None:
        claims["info"] = info
    return jwt.encode(claims, _secret(), algorithm=ALGORITHM)


def token_verify(token: str, *, channel_id: str) -> TokenClaims:
    """Check a token's signature, expiry and channel; raise ``ApplicationError`` when refused."""
    if not isinstance(token, str) or not token.isascii():
        # A JWT is ASCII; PyJWT would raise UnicodeEncodeError on a lone surrogate.
        raise token_invalid("it is not a token signed by this service")
    try:
        claims = jwt.decode(token, _secret(), algorithms=[ALGORITHM], options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError as exc:
        raise token_invalid("it has expired; mint a new one") from exc
    except jwt.InvalidTokenError as exc:
        raise token_invalid("it is not a token signed by this service") from exc
    covered = claims.get("channels")
    if claims.get("channel") != channel_id and not (isinstance(covered, list) and channel_id in covered):
        raise token_forbidden(f"The token is for another channel, not {channel_id!r}.")
    if not isinstance(claims.get("sub"), str):
        raise token_invalid("its sub claim is not a clientId")
    return TokenClaims(
        channel_id=channel_id,
        client_id=claims["sub"],
        expires_at=int(claims["exp"]),
        can_publish=bool(claims.get("pub", False)),
        info=claims["info"] if isinstance(claims.get("info"), dict) else None,
    )
