"""Tokens and keys never reach a log line: the redactor, the record factory and daphne's access log.

The end-to-end check against real servers is tests/test_log_secrets.py.
"""

import io
import json
import logging
from urllib.parse import parse_qs, quote, quote_plus

import pytest
from daphne.access import AccessLogGenerator
from django.conf import settings
from hypothesis import given
from hypothesis import strategies as st
from uvicorn.logging import AccessFormatter

from channels_app.ops import logredact
from channels_app.ops.logformat import JsonFormatter
from channels_app.ops.logredact import SENSITIVE_PARAMETERS, install_log_redaction, redact

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJjaGFubmVsIjoidmF1bHQtMSIsInN1YiI6ImEiLCJleHAiOjE3MDAwMDAwMDB9"
    ".Qm9ndXMtc2lnbmF0dXJlLWZvci10ZXN0cw"
)
KEY = "s3cr3t/key+with=odd&chars"


@pytest.fixture
def with_key():
    install_log_redaction(secrets=[KEY])
    yield
    install_log_redaction(secrets=(*settings.REALTIME_API_KEYS, settings.METRICS_TOKEN))


def test_sensitive_query_values_are_redacted():
    assert redact("/api/v1/channels/x?clientId=a&token=abc.def.ghi&since=3") == (
        "/api/v1/channels/x?clientId=a&token=[redacted]&since=3"
    )
    assert redact("/x?TOKEN=1&api_key=2") == "/x?TOKEN=[redacted]&api_key=[redacted]"
    assert (
        redact("/x?%74oken=1&tok%65n=2&%54%4f%4B%45%4e=3")
        == "/x?%74oken=[redacted]&tok%65n=[redacted]&%54%4f%4B%45%4e=[redacted]"
    )
    assert redact("/x?a=1;token=2;x&b") == "/x?a=1;token=[redacted]&b"
    assert redact('"GET /x?token=abc HTTP/1.1" 200') == '"GET /x?token=[redacted] HTTP/1.1" 200'


def test_what_is_not_a_credential_is_kept():
    for text in ("/x?tokens=keep", "/x?monkey=1&api_keys=2", "no key here", "/x?token=", "eye.eyes.eyelid"):
        assert redact(text) == text


def test_anything_shaped_like_a_token_is_redacted_wherever_it_is():
    assert redact(f"/api/v1/channels/{JWT}") == "/api/v1/channels/[redacted]"
    assert redact(f"refused {JWT!r}") == "refused '[redacted]'"
    assert redact("x=" + JWT.replace(".", "%2E")) == "x=[redacted]"
    assert redact("x=" + quote(JWT, safe="").replace("e", "%65")) == "x=[redacted]"


def test_configured_keys_and_bearer_credentials_are_redacted(with_key):
    for spelling in (KEY, quote(KEY, safe=""), quote(KEY, safe="").replace("%2F", "%2f"), quote_plus(KEY)):
        assert redact(f"x {spelling} y") == "x [redacted] y"
    assert redact("Authorization: Bearer abc.def") == "Authorization: Bearer [redacted]"


# The spellings parse_qs reads as a sensitive name: each character as it is or percent-encoded,
# in either case; values that are recognisable wherever they end up.
def _spellings(name: str):
    def character(char):
        return st.sampled_from(
            sorted({char.lower(), char.upper(), *(f"%{ord(c):02x}" for c in {char.lower(), char.upper()})})
            + [f"%{ord(char):02X}"]
        )

    return st.tuples(*(character(char) for char in name)).map("".join)


_name = st.sampled_from(SENSITIVE_PARAMETERS).flatmap(_spellings)
_secret = st.from_regex(r"[A-Za-z0-9._~-]{0,30}", fullmatch=True).map(lambda tail: "SECRET" + tail)
_other = st.tuples(
    st.sampled_from(["clientId", "since", "echo", "x", "a%20b", "tokens", "monkey", "%6bey%73"]),
    st.from_regex(r"[a-z0-9%._-]{0,12}", fullmatch=True),
)
_pair = st.one_of(st.tuples(_name, _secret), _other).map("=".join)
_query = st.tuples(st.lists(_pair, min_size=1, max_size=6), st.sampled_from(["&", "&", ";"])).map(
    lambda parts: parts[1].join(parts[0])
)
_line = st.sampled_from(
    [
        '127.0.0.1:5000 - "GET /api/v1/channels/x?{} HTTP/1.1" 200',
        '127.0.0.1:5000 - - [01/Jan/2026:00:00:00] "GET /api/v1/channels/x?{}" 401 181',
        '127.0.0.1:5000 - "WebSocket /api/v1/channels/x?{}" [accepted]',
        "{}",
    ]
)


@given(_query, _line)
def test_a_value_the_service_reads_under_a_sensitive_name_never_survives(query, line):
    read = parse_qs(query, keep_blank_values=True)
    secrets = [
        value for name, values in read.items() if name.lower() in SENSITIVE_PARAMETERS for value in values if value
    ]
    redacted = redact(line.format(query))
    for secret in secrets:
        assert secret not in redacted
    assert "SECRET" not in redacted


def _record(name: str, msg: str, *args, exc_info=None) -> logging.LogRecord:
    return logging.getLogger(name).makeRecord(name, logging.INFO, __file__, 1, msg, args, exc_info)


def test_uvicorn_access_record_is_redacted_and_its_formatter_still_reads_the_arguments():
    install_log_redaction()
    record = _record("uvicorn.access", '%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", f"/x?token={JWT}", "1.1", 200)
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False).format(record)
    assert line == '127.0.0.1:1 - "GET /x?token=[redacted] HTTP/1.1" 200 OK'


def test_record_arguments_of_any_type_and_tracebacks_are_redacted():
    install_log_redaction()
    record = _record("x", "path %s", f"/x?token={JWT}".encode())
    assert JWT not in logging.Formatter().format(record)
    record = _record("x", "got %(path)s", {"path": f"/x?%74oken={JWT}"})
    assert logging.Formatter().format(record) == "got /x?%74oken=[redacted]"
    try:
        raise ValueError(f"bad URL /x?token={JWT}")
    except ValueError as error:
        record = _record("x", "failed", exc_info=(type(error), error, error.__traceback__))
    assert JWT not in logging.Formatter().format(record)
    assert JWT not in json.loads(JsonFormatter().format(record))["exception"]


def test_a_message_that_cannot_be_formatted_is_still_redacted():
    install_log_redaction()
    record = _record("x", f"%d /x?token={JWT}", "not a number")
    assert JWT not in record.msg


def test_a_record_that_cannot_be_checked_is_withheld_not_raised(monkeypatch):
    install_log_redaction()
    monkeypatch.setattr(logredact, "redact_record", lambda record: 1 / 0)
    record = _record("x", "path %s", f"/x?token={JWT}")
    assert logging.Formatter().format(record) == "[log line withheld: redaction failed]"


def test_the_record_factory_is_installed_once():
    install_log_redaction()
    factory = logging.getLogRecordFactory()
    install_log_redaction()
    assert logging.getLogRecordFactory() is factory


def test_daphne_access_log_is_redacted():
    install_log_redaction()
    stream = io.StringIO()
    log = AccessLogGenerator(stream)
    log("http", "complete", {"path": f"/api/v1/channels/feed?%74oken={JWT}", "status": 200, "method": "GET",
                             "client": "127.0.0.1:1", "size": 10})  # fmt: skip
    for action in ("connecting", "connected", "rejected", "disconnected"):
        log("websocket", action, {"path": f"/api/v1/channels/vault?token={JWT}", "client": "127.0.0.1:1"})
    assert JWT not in stream.getvalue()
    assert stream.getvalue().count("oken=[redacted]") == 5
