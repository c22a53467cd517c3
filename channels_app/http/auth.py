"""API keys for the server API: ``Authorization: Bearer <key>``, compared in constant time."""

from __future__ import annotations

import hmac
import logging

from django.conf import settings

from ..errors import ApplicationError

logger = logging.getLogger(__name__)

WWW_AUTHENTICATE = 'Bearer realm="realtime"'


def api_keys_configured() -> bool:
    """Whether any API key is set (YAML ``server.api_keys`` or ``REALTIME_API_KEYS``)."""
    return bool(settings.REALTIME_API_KEYS)


def api_open_for_debug() -> bool:
    """True when no key is configured and ``APP_DEBUG=1``: the API is open, as the Go service was."""
    return not api_keys_configured() and settings.APP_DEBUG


def bearer_token(authorization: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer <key>`` header, or None."""
    if not authorization:
        return None
    scheme, _, credential = authorization.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return None
    return credential.strip()


def api_key_check(authorization: str | None) -> None:
    """Refuse (401) a request without a valid API key; pass when the API is open for debugging."""
    if api_open_for_debug():
        return
    if not api_keys_configured():
        raise ApplicationError(
            "api_key_not_configured",
            "No API key is configured, so the server API is closed: set REALTIME_API_KEYS "
            "(comma-separated) or server.api_keys in the YAML file (use ${VAR} to keep keys out "
            "of the file), then send Authorization: Bearer <key>.",
            status=401,
        )
    presented = bearer_token(authorization)
    if presented is None:
        raise ApplicationError("api_key_required", "Send the API key as Authorization: Bearer <key>.", status=401)
    presented_bytes = presented.encode()
    # Compare against every key so the time taken does not reveal which key nearly matched.
    matched = False
    for key in settings.REALTIME_API_KEYS:
        matched |= hmac.compare_digest(presented_bytes, key.encode())
    if not matched:
        raise ApplicationError("api_key_invalid", "The API key is not valid.", status=401)


def log_security_warnings() -> None:
    """Warn at start-up about an open API, and say where the signing key comes from when it is not set."""
    if api_open_for_debug():
        logger.warning(
            "APP_DEBUG=1 and no API key configured: the server API (push, create and delete "
            "channels, tokens) is OPEN to anyone who can reach this service. Set REALTIME_API_KEYS "
            "before exposing it."
        )
    if not settings.SECRET_KEY_FROM_ENVIRONMENT:
        logger.warning(secret_key_notice())


def secret_key_notice() -> str:
    """What signs sessions and tokens when ``DJANGO_SECRET_KEY`` is unset, and what follows from it."""
    if settings.SECRET_KEY_FILE is not None:
        how = "created" if settings.SECRET_KEY_FILE_CREATED else "read"
        return (
            f"DJANGO_SECRET_KEY is not set: using the key kept in {settings.SECRET_KEY_FILE} ({how} at start, "
            "readable by this user only), so admin sessions and private-channel tokens survive restarts. "
            "Instances that share sessions or tokens must share one key: set DJANGO_SECRET_KEY on each."
        )
    return (
        f"DJANGO_SECRET_KEY is not set and {settings.SECRET_KEY_PROBLEM}: a random key is used for this "
        "process only, so admin sessions and private-channel tokens stop working on restart. Set "
        "DJANGO_SECRET_KEY, or REALTIME_DATA_DIR to a writable folder."
    )
