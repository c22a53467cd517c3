"""Subscriber tokens for private channels, minted locally with the server's shared secret.

A token is an HS256 JWT with the claims the server checks (channels_app/tokens.py): ``channel``
(the channel's **id**, not its name), ``sub`` (the clientId), ``iat``, ``exp`` and ``pub`` (may
publish on the WebSocket). Minting here needs ``REALTIME_TOKEN_SECRET`` in this process; a process
without it asks the server instead (``Publisher.create_token``), which also accepts a channel name.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

# The server refuses to mint longer-lived tokens itself; the same bound keeps leaked tokens short-lived.
MAX_TTL_SECONDS = 7 * 24 * 3600


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint_token(
    secret: str | bytes,
    *,
    channel_id: str,
    client_id: str,
    ttl: int = 3600,
    publish: bool = False,
    now: int | None = None,
) -> str:
    """A token letting ``client_id`` subscribe to the channel ``channel_id`` for ``ttl`` seconds (and publish on
    it over the WebSocket when ``publish``), signed with the server's ``REALTIME_TOKEN_SECRET``."""
    if not secret:
        raise ValueError("secret must be the server's REALTIME_TOKEN_SECRET")
    if not channel_id or not client_id:
        raise ValueError("channel_id and client_id are required")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL_SECONDS:
        raise ValueError(f"ttl must be a whole number of seconds from 1 to {MAX_TTL_SECONDS}")
    issued = int(time.time()) if now is None else now
    claims = {"channel": channel_id, "sub": client_id, "iat": issued, "exp": issued + ttl, "pub": bool(publish)}
    header = {"alg": "HS256", "typ": "JWT"}
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":")).encode("utf-8")) for part in (header, claims)
    )
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    signature = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"
