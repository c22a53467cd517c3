"""Keep tokens out of daphne's access log.

daphne logs the full request URI of HTTP requests, query string included, so an SSE
subscription's ``?token=`` would be written to the log. Its access logger is wrapped once, at
start-up, to replace the values of sensitive query parameters.
"""

from __future__ import annotations

import re

SENSITIVE_PARAMETERS = ("token", "api_key", "apikey", "key", "access_token")
_SENSITIVE = re.compile(r"(?i)([?&](?:" + "|".join(SENSITIVE_PARAMETERS) + r")=)[^&#\s]*")


def redact(text: str) -> str:
    """``text`` with the values of sensitive query parameters replaced by ``[redacted]``."""
    return _SENSITIVE.sub(r"\1[redacted]", text)


def install_daphne_access_log_redaction() -> None:
    """Wrap daphne's access-log writer so the paths it logs are redacted (idempotent)."""
    try:
        from daphne.access import AccessLogGenerator
    except ImportError:
        return
    if getattr(AccessLogGenerator.__call__, "redacts_tokens", False):
        return
    original = AccessLogGenerator.__call__

    def redacting_call(self, protocol, action, details):
        if isinstance(details.get("path"), str):
            details = {**details, "path": redact(details["path"])}
        return original(self, protocol, action, details)

    redacting_call.redacts_tokens = True
    AccessLogGenerator.__call__ = redacting_call
