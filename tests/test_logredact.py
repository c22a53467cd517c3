"""Tokens and keys never reach daphne's access log."""

import io

from daphne.access import AccessLogGenerator

from channels_app.logredact import install_daphne_access_log_redaction, redact


def test_sensitive_query_values_are_redacted():
    assert redact("/api/v1/channels/x?clientId=a&token=abc.def.ghi&since=3") == (
        "/api/v1/channels/x?clientId=a&token=[redacted]&since=3"
    )
    assert redact("/x?TOKEN=1&api_key=2") == "/x?TOKEN=[redacted]&api_key=[redacted]"
    assert redact("/x?tokens=keep") == "/x?tokens=keep"


def test_daphne_access_log_is_redacted():
    install_daphne_access_log_redaction()
    install_daphne_access_log_redaction()  # idempotent
    stream = io.StringIO()
    AccessLogGenerator(stream)(
        "http",
        "complete",
        {"path": "/api/v1/channels/feed?token=secret.jwt.value", "status": 200, "method": "GET",
         "client": "127.0.0.1:1", "size": 10},
    )  # fmt: skip
    assert "secret.jwt.value" not in stream.getvalue()
    assert "token=[redacted]" in stream.getvalue()
