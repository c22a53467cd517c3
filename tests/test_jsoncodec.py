"""The one JSON reader (bounded depth and digits, no NaN or infinity) and the one payload writer.

The same bodies against real servers, endpoint by endpoint: tests/test_json_limits.py.
"""

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import channels_app
from channels_app.errors import ApplicationError
from channels_app.jsoncodec import (
    MAX_DEPTH,
    MAX_DIGITS,
    _deeper_than_limit,
    frame_payload,
    json_parse,
    json_text,
    payload_of,
)
from channels_app.messages import JSON, TEXT, Message
from channels_app.models import Channel


def refusal(body) -> str:
    with pytest.raises(ApplicationError) as refused:
        json_parse(body)
    assert (refused.value.status, refused.value.code) == (400, "bad_request")
    return refused.value.message


def nested(depth: int, inner: str = "") -> bytes:
    return ("[" * depth + inner + "]" * depth).encode()


def test_nesting_up_to_the_limit_is_read_and_one_level_more_is_refused():
    assert json_parse(nested(MAX_DEPTH)) is not None
    assert json_parse(b'{"a":' * (MAX_DEPTH - 1) + b"[1]" + b"}" * (MAX_DEPTH - 1)) is not None
    assert f"more than {MAX_DEPTH} levels" in refusal(nested(MAX_DEPTH + 1))
    assert f"more than {MAX_DEPTH} levels" in refusal(b'{"a":' * MAX_DEPTH + b"[1]" + b"}" * MAX_DEPTH)


@pytest.mark.parametrize("depth", [3_000, 100_000])
def test_deep_bodies_are_refused_not_crashed(depth):
    assert "levels deep" in refusal(b'{"payload":' + nested(depth) + b"}")
    assert "levels deep" in refusal(b"[" * depth)


def test_brackets_and_digits_inside_strings_do_not_count():
    text = '[[[{"x": "' + "[" * 500 + '\\"' + "1" * 500 + '"}]]]'
    assert json_parse(text.encode()) == [[[{"x": "[" * 500 + '"' + "1" * 500}]]]


def test_numbers_up_to_the_digit_limit_are_read_exactly_and_longer_ones_refused():
    assert json_parse(b"9" * MAX_DIGITS) == int("9" * MAX_DIGITS)
    assert json_parse(b"-0." + b"1" * MAX_DIGITS) == float("-0." + "1" * MAX_DIGITS)
    for body in (b"1" * (MAX_DIGITS + 1), b'{"payload": ' + b"1" * 5000 + b"}", b"1e" + b"0" * 200 + b"1"):
        assert f"more than {MAX_DIGITS} digits" in refusal(body)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinities_are_refused(constant):
    assert f"contains {constant}, which is not JSON" in refusal(f'{{"payload": [1, {constant}]}}'.encode())


@pytest.mark.parametrize("number", ["1e999", "-1e999", "1.5E+400"])
def test_numbers_that_overflow_to_infinity_are_refused(number):
    assert f"the number {number}, which is too large" in refusal(f'{{"payload": {{"x": {number}}}}}'.encode())


def test_what_json_allows_is_read():
    assert json_parse(b"") is None
    assert json_parse(b"1e308") == 1e308
    assert json_parse(b"1e-999") == 0.0
    assert json_parse(json.dumps({"a": [1, "x"]}).encode("utf-16")) == {"a": [1, "x"]}
    assert json_parse(b'{"a": "\\ud800"}') == {"a": "\ud800"}


def test_what_is_not_json_is_refused_with_the_reason():
    assert "not valid JSON: Expecting value" in refusal(b"[")
    assert "not UTF-8" in refusal(b'{"a": "\xff"}')
    # An unterminated string full of escaped quotes: refused, in linear time.
    assert "not valid JSON" in refusal(b'"\\"' * 200_000)


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=30,
)


@given(_values)
def test_any_json_value_within_the_limits_reads_back_as_itself(value):
    assert json_parse(json_text(value).encode()) == value


@given(st.text(alphabet="[]{}x", max_size=400))
def test_the_depth_scan_agrees_with_counting_bracket_by_bracket(text):
    depth = deepest = 0
    for char in text:
        depth += 1 if char in "[{" else -1 if char in "]}" else 0
        deepest = max(deepest, depth)
    assert _deeper_than_limit(text) == (deepest > MAX_DEPTH)


def test_the_writer_refuses_what_is_not_json():
    assert json_text({"a": [1, 2.5, "é"]}) == '{"a":[1,2.5,"é"]}'
    circular = []
    circular.append(circular)
    for value, reason in [
        (math.nan, "Out of range float"),
        ({"x": [math.inf]}, "Out of range float"),
        ({1, 2}, "no type for"),
        (circular, "Circular reference"),
    ]:
        with pytest.raises(ApplicationError) as refused:
            json_text(value)
        assert refused.value.status == 400 and reason in refused.value.message
        assert refused.value.as_dict()["field"] == "payload"


@pytest.mark.django_db(transaction=True)
async def test_publishing_nan_from_django_code_raises_and_publishes_nothing(inprocess):
    await Channel.objects.acreate(public_id="json-nan", name="json-nan", type="WS", max_connections=5)
    await inprocess()  # this process serves subscribers, so the MEMORY driver's publishes reach them
    with pytest.raises(ApplicationError) as refused:
        await channels_app.apublish("json-nan", {"temperature": math.nan})
    assert "not JSON compliant" in refused.value.message
    # Nothing took an offset: the next message is the channel's first.
    assert (await channels_app.apublish("json-nan", {"temperature": 21.5})).offset == 1


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(JSON_VALUES)
def test_a_published_value_is_text_when_it_is_a_string_and_json_otherwise(value):
    text, kind = payload_of(value)
    if isinstance(value, str):
        assert (text, kind) == (value, TEXT)
    else:
        assert (json.loads(text), kind) == (value, JSON)


@given(JSON_VALUES, st.sampled_from(["", " ", "\n  "]))
def test_a_json_frame_publishes_its_own_text_and_a_json_string_as_that_string(value, spacing):
    frame = spacing + json.dumps(value, indent=1 if spacing else None) + spacing
    payload, kind = frame_payload(frame)
    assert (payload, kind) == ((value, TEXT) if isinstance(value, str) else (frame, JSON))


@pytest.mark.parametrize("frame", ["", "not json", "{'a': 1}", "NaN", "[1e999]", "1" * 101, nested(65).decode()])
def test_a_frame_that_is_not_json_is_refused_as_such(frame):
    with pytest.raises(ApplicationError) as refused:
        frame_payload(frame)
    assert (refused.value.code, refused.value.close_code) == ("payload_not_json", 4400)
    assert "The body" not in refused.value.message


@given(JSON_VALUES, st.sampled_from(["", "\n "]), st.integers(min_value=1, max_value=10**18) | st.none())
def test_a_json_payload_is_written_into_the_envelope_as_its_value(value, spacing, offset):
    frame = spacing + json.dumps(value, ensure_ascii=False, indent=1 if spacing else None)
    message = Message("id-1", "chat", "alice", frame, "2026-01-01T00:00:00.000Z", offset, offset and "e1", None, JSON)
    envelope = json.loads(message.to_json_with_values())
    assert envelope == message.as_wire_with_values() == {**message.as_wire(), "payload": value}
    assert json.loads(message.to_json()) == message.as_wire()
    assert message.as_wire()["payload"] == frame
