"""Keep tokens and API keys out of every log line, whichever server writes it.

Two things write log lines: Python's logging (this project, Django, daphne's loggers, and
uvicorn's ``uvicorn.access`` and ``uvicorn.error``, which have their own handlers and do not
propagate) and daphne's access log, which writes straight to its stream. So the redaction sits
below both: a log record factory redacts every record as it is made, whatever logger or handler
it then goes to, and daphne's ``AccessLogGenerator.write_entry`` (the one adapter to a private
interface here; tests/test_logredact.py checks it still exists) is wrapped.

What is replaced by ``[redacted]``, anywhere in a line:

- the value of a query parameter whose name, read as ``parse_qs`` reads it (percent-decoded),
  in any case, is a sensitive name (``?%74oken=``, ``&TOKEN=``, ``;token=``, every repetition),
  up to the next ``&``, which is where the application's value ends too;
- anything shaped like one of our tokens: an HS256 JWT (``eyJ...``.``eyJ...``.``...``), also
  percent-encoded;
- the credential after ``Bearer``, and the configured API keys and metrics token, as written
  or percent-encoded.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

logger = logging.getLogger(__name__)

REDACTED = "[redacted]"
SENSITIVE_PARAMETERS = ("token", "access_token", "api_key", "apikey", "key")


def _spelled_any_way(name: str) -> str:
    """A pattern for ``name`` in any case, any of its characters percent-encoded (escapes in any case too)."""
    pattern = ""
    for char in name:
        lower, upper = f"{ord(char.lower()):02X}", f"{ord(char.upper()):02X}"
        # A letter's two cases differ in the first hex digit only.
        first = "".join(sorted({lower[0], upper[0]}))
        second = f"[{lower[1]}{lower[1].lower()}]" if lower[1].isalpha() else lower[1]
        literal = f"[{char.lower()}{char.upper()}]" if char.lower() != char.upper() else re.escape(char)
        pattern += f"(?:{literal}|%[{first}]{second})"
    return pattern


# A parameter starts after "?", "&" or ";" (or a blank or a quote, or the start of the text, for
# a bare query string); its value runs to the next "&", as parse_qs reads it, and stops where a
# log line's URL ends (a blank, a quote, "<" or ">").
_PARAMETER = re.compile(
    r"(^|[?&;\s\"'])((?:" + "|".join(_spelled_any_way(name) for name in SENSITIVE_PARAMETERS) + r")=)"
    r"[^&#\s\"'<>]+"
)
# The header and the claims of a JWT are JSON objects, so both start with "eyJ" ('{"'). The
# segments are matched possessively, and cannot swallow an encoded dot: a first draft that could
# backtrack ran past the 120 s test timeout on one 150-character token.
_B64 = r"(?:[A-Za-z0-9_-]++|%(?!2[Ee])[0-9A-Fa-f]{2})"
_DOT = r"(?:\.|%2[Ee])"
_JSON_OBJECT_START = r"(?:e|%65)(?:y|%79)(?:J|%4[Aa])"
_JWT = re.compile(f"{_JSON_OBJECT_START}{_B64}++{_DOT}{_JSON_OBJECT_START}{_B64}++{_DOT}{_B64}*+")
_BEARER = re.compile(r"(\bbearer\s+)[^\s\"',;]+", re.IGNORECASE)


def _literal(text: str) -> str:
    """A pattern matching ``text`` as it is, with its percent-escapes in either case."""
    return re.sub(
        r"%([0-9A-F]{2})",
        lambda escape: "%" + "".join(f"[{d}{d.lower()}]" if d.isalpha() else d for d in escape.group(1)),
        re.escape(text),
    )


class Redactor:
    """Replaces credentials in text; built once with the configured secrets."""

    def __init__(self, secrets: Iterable[str] = ()):
        forms = {form for secret in secrets if secret for form in (secret, quote(secret, safe=""), quote_plus(secret))}
        # Longest first, so that a key containing another is replaced whole.
        literals = sorted(forms, key=len, reverse=True)
        self._secrets = re.compile("|".join(map(_literal, literals))) if literals else None
        self._plain_secrets = tuple(form for form in forms if "%" not in form)

    def __call__(self, text: str) -> str:
        """``text`` with every credential replaced by ``[redacted]`` (the same object when there is none)."""
        # Substring tests first: most lines hold no credential, and they cost 50 ns where a
        # pattern that cannot start with a literal costs microseconds.
        percent = "%" in text
        lowered = text.lower()
        if percent or "eyJ" in text:
            text = _JWT.sub(REDACTED, text)
        if "=" in text and (percent or "en=" in lowered or "ey=" in lowered):
            text = _PARAMETER.sub(r"\1\2" + REDACTED, text)
        if self._secrets is not None and (percent or any(map(text.__contains__, self._plain_secrets))):
            text = self._secrets.sub(REDACTED, text)
        if "bearer" in lowered:
            text = _BEARER.sub(r"\1" + REDACTED, text)
        return text


_redactor = Redactor()


def redact(text: str) -> str:
    """``text`` with tokens, API keys and sensitive query values replaced by ``[redacted]``."""
    return _redactor(text)


def _redacted(value):
    return _redactor(value) if isinstance(value, str) else value


def _clean(record: logging.LogRecord) -> bool:
    try:
        message = record.getMessage()
    except Exception:
        return False
    return _redactor(message) == message


def redact_record(record: logging.LogRecord) -> None:
    """Redact ``record`` in place: its formatted message, its arguments, its traceback and stack."""
    try:
        message = record.getMessage()
    except Exception:
        message = None
    redacted_message = None if message is None else _redactor(message)
    if redacted_message is None or redacted_message != message:
        # Redact the template and each argument first: formatters such as uvicorn's access
        # formatter read the arguments themselves, so they stay in place where that suffices.
        record.msg = _redacted(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _redacted(value) for key, value in record.args.items()}
        if redacted_message is not None and not _clean(record):
            # The secret came from an argument's str() (bytes, an object): keep the text only.
            record.msg, record.args = redacted_message, ()
    if record.exc_info:
        # Formatters reuse exc_text rather than format the exception again.
        record.exc_text = _redactor(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = _redactor(record.stack_info)


def install_log_redaction(secrets: Iterable[str] = ()) -> None:
    """Redact every log record from now on, and daphne's access log; ``secrets`` are redacted as they are."""
    global _redactor
    _redactor = Redactor(secrets)
    make_record = logging.getLogRecordFactory()
    if not getattr(make_record, "redacts_secrets", False):

        def redacting_record_factory(*args, **kwargs):
            record = make_record(*args, **kwargs)
            try:
                redact_record(record)
            except Exception:
                # A logging call must not fail; a line that could not be checked is not written as is.
                record.msg, record.args = "[log line withheld: redaction failed]", ()
                record.exc_info = record.exc_text = record.stack_info = None
            return record

        redacting_record_factory.redacts_secrets = True
        logging.setLogRecordFactory(redacting_record_factory)
    install_daphne_access_log_redaction()


def install_daphne_access_log_redaction() -> None:
    """Wrap daphne's access-log writer so every line it writes is redacted (idempotent)."""
    try:
        from daphne.access import AccessLogGenerator
    except ImportError:
        return
    write_entry = AccessLogGenerator.write_entry
    if getattr(write_entry, "redacts_secrets", False):
        return

    @functools.wraps(write_entry)
    def redacting_write_entry(self, host, date, request, status=None, length=None, ident=None, user=None):
        return write_entry(
            self, _redacted(host), date, _redacted(request), status, length, _redacted(ident), _redacted(user)
        )

    redacting_write_entry.redacts_secrets = True
    AccessLogGenerator.write_entry = redacting_write_entry
