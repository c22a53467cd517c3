"""JSON in and out: one bounded reader for every request body, one strict writer for payloads.

The reader refuses, with a 400 that names the limit, what Python's ``json`` would otherwise
turn into a 500 or into text that is not JSON:

- nesting deeper than ``MAX_DEPTH`` (the C decoder recurses per level and raised
  ``RecursionError`` at about 1,000 levels);
- a run of more than ``MAX_DIGITS`` digits in a number (CPython refuses integers over 4,300
  digits with ``ValueError``, and converting them costs time quadratic in their length);
- ``NaN``, ``Infinity``, ``-Infinity`` and numbers that overflow a float (``1e999``): Python
  reads them, but they are not JSON, and written back they would be published as ``NaN`` or
  ``Infinity``.

The depth is checked before parsing, without recursion: strings are blanked out and the
brackets counted, so a body nested 100,000 levels deep is refused in 0.3 ms. Measured on a
2.4 MB body of 800,000 empty arrays, the checks cost 20 ms (110 ms when every bracket sits near
the depth limit) next to 180-270 ms for the parse itself.

The writer (``json_text``) is the only place a payload value becomes text, in the API and in
``channels_app.publish``; it refuses what is not JSON rather than write it. ``payload_of`` tells a
published string (kind ``text``) from any other JSON value (kind ``json``), and ``frame_payload``
reads the text frame of a WebSocket connection that publishes JSON.
"""

from __future__ import annotations

import json
import math
import re

from .errors import ApplicationError, bad_request
from .messages import JSON, TEXT

# 64 levels: real documents (events, API objects) rarely nest past 10-20, and a push body
# spends 1-3 levels on its envelope ({"messages": [{"payload": ...}]}); well below the ~1,000
# frames at which CPython's decoder and encoder, and subscribers' Python parsers, give up.
MAX_DEPTH = 64
# 100 digits: every 64-, 128- and 256-bit integer (at most 78 digits) a payload may carry
# passes exactly; longer numbers no common JSON reader holds, and are better sent as strings.
MAX_DIGITS = 100

# A string, escapes included, up to its closing quote or the end of the text: possessive and
# unambiguous, so the scan is linear even on hostile input (an unterminated string, backslashes).
_STRING = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+"?', re.DOTALL)
_OPEN_CLOSE = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))
_OPEN = ord("[")
_LONG_NUMBER = re.compile(f"[0-9]{{{MAX_DIGITS + 1}}}")


class _NotJson(Exception):
    """A number the decoder read that JSON cannot carry; ``message`` says what to send instead."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _refuse_constant(name: str):
    raise _NotJson(f"The body contains {name}, which is not JSON: send null or a string instead.")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        shown = literal if len(literal) <= 30 else literal[:30] + "..."
        raise _NotJson(
            f"The body contains the number {shown}, which is too large for a JSON number (it overflows to "
            "infinity): send it as a string."
        )
    return value


def _deeper_than_limit(structure: str) -> bool:
    """Whether the brackets of ``structure`` (strings already removed) nest deeper than ``MAX_DEPTH``.

    Outside strings JSON is ASCII, so the brackets are picked out of the bytes with
    ``bytes.translate``; then each run of ``MAX_DEPTH`` brackets is walked one by one only when
    its opening brackets could take the depth past the limit.
    """
    brackets = structure.encode("utf-8", "surrogatepass").translate(_OPEN_CLOSE, _NOT_BRACKET)
    depth = 0
    for start in range(0, len(brackets), MAX_DEPTH):
        end = min(start + MAX_DEPTH, len(brackets))
        opens = brackets.count(b"[", start, end)
        if depth + opens <= MAX_DEPTH:
            depth += 2 * opens - (end - start)
        else:
            for bracket in brackets[start:end]:
                depth += 1 if bracket == _OPEN else -1
                if depth > MAX_DEPTH:
                    return True
    return False


def json_parse(body: bytes | str) -> object:
    """``body`` parsed as JSON within the limits (an empty body is ``null``); 400 when it is not such JSON."""
    if isinstance(body, bytes):
        try:
            # What json.loads does with bytes: UTF-8, or UTF-16/32 recognised by their zero bytes.
            text = body.decode(json.detect_encoding(body), "surrogatepass")
        except UnicodeDecodeError as exc:
            raise bad_request("The body is not valid JSON: it is not UTF-8 text.") from exc
    else:
        text = body
    if not text:
        return None
    structure = _STRING.sub('""', text)
    if _deeper_than_limit(structure):
        raise bad_request(
            f"The body nests arrays and objects more than {MAX_DEPTH} levels deep; at most {MAX_DEPTH} are accepted."
        )
    if _LONG_NUMBER.search(structure):
        raise bad_request(
            f"The body has a number with more than {MAX_DIGITS} digits; at most {MAX_DIGITS} are accepted "
            "(send longer numbers as strings)."
        )
    try:
        return json.loads(text, parse_float=_finite_float, parse_constant=_refuse_constant)
    except _NotJson as exc:
        raise bad_request(exc.message) from None
    except json.JSONDecodeError as exc:
        raise bad_request(f"The body is not valid JSON: {exc}.") from exc


def json_text(value: object) -> str:
    """``value`` as compact JSON text; ``ApplicationError`` (400) when it is not a JSON value."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except TypeError as exc:
        reason = f"it holds a value JSON has no type for ({exc})"
    except RecursionError:
        reason = "it nests too deeply"
    except ValueError as exc:
        # NaN or an infinity ("Out of range float values are not JSON compliant"), a circular
        # reference, or an integer too long to write.
        reason = str(exc)
    raise bad_request(f"The payload cannot be sent as JSON: {reason}.", field="payload")


def payload_of(value: object) -> tuple[str, str]:
    """A published payload as its text and kind: a string stays a string (``text``), even one that looks
    like JSON; any other JSON value is its JSON text (``json``)."""
    if isinstance(value, str):
        return value, TEXT
    return json_text(value), JSON


def payload_not_json(reason: str) -> ApplicationError:
    """A text frame of a connection in the ``json`` payload format that is not JSON (error frame 4400)."""
    return ApplicationError(
        "payload_not_json",
        f"This frame was not published: this connection publishes JSON (payload format json). {reason} "
        'Send JSON text; a string is sent as a JSON string ("hello").',
        status=400,
        close_code=4400,
    )


def frame_payload(text: str) -> tuple[str, str]:
    """The payload a JSON connection's text frame publishes: a JSON string as that string (``text``),
    any other JSON value as the frame's own text (``json``: what the client wrote, every digit kept).
    ``payload_not_json`` when the frame is not JSON within the reader's limits."""
    if not text:
        raise payload_not_json("The frame is empty.")
    try:
        value = json_parse(text)
    except ApplicationError as error:
        raise payload_not_json(error.message.replace("The body", "The frame")) from None
    if isinstance(value, str):
        return value, TEXT
    return text, JSON
