"""Property-based tests (hypothesis): every parser at the boundary turns any input into a typed value
or the one error type it documents, never another exception.

The number of examples per property is set by the ``ci`` profile below (``HYPOTHESIS_PROFILE=thorough``
runs ten times more); docs/reliability.md reports how many inputs a CI run tries.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import string
import time

import jwt
import pytest
import yaml
from channels.layers import BaseChannelLayer
from django.conf import settings
from hypothesis import HealthCheck, assume, given, note
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from channels_app.channel import ChannelInfo
from channels_app.config import (
    CHANNEL_KEYS,
    IDENTIFIER_PATTERN,
    PUBSUB_KEYS,
    REDIS_KEYS,
    SERVER_KEYS,
    ConfigError,
    RealtimeConfig,
    parse_config,
)
from channels_app.core.services import message_publish
from channels_app.errors import ApplicationError
from channels_app.messages import Position, position_parse
from channels_app.naming import CLIENT_ID_PATTERN, SERVER_CLIENT_ID, channel_group, client_id_parse
from channels_app.tokens import MAX_TTL_SECONDS, TokenClaims, token_mint, token_verify
from tests.conftest import memory_runtime

hypothesis_settings.register_profile(
    "ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
hypothesis_settings.register_profile(
    "thorough", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CLIENT_ID_ALPHABET = string.ascii_letters + string.digits + "._:@-"
IDENTIFIER_ALPHABET = string.ascii_letters + string.digits + "._-"
# Anything a query string decoded as latin-1 (consumers.query_params) or JSON (the API) can carry.
# Lone surrogates included: JSON bodies can carry them as "\\ud800" escapes.
any_character = st.characters(exclude_categories=())
any_text = st.one_of(
    st.text(alphabet=any_character, max_size=300),
    st.lists(st.one_of(st.characters(), st.sampled_from(["\ud800", "\udfff", "\x00", "\n"])), max_size=40).map("".join),
)
query_text = st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=200)


# --- the YAML loader ---------------------------------------------------------------------------


def scalar_values():
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=40),
        st.sampled_from(["WS", "SSE", "ws", "MEMORY", "REDIS", "redis://[::1", "redis://h:99999999/0", "${X}", "1"]),
        st.sampled_from(["${HOME}", "${UNSET_VAR_FOR_TESTS}", "${UNSET_VAR_FOR_TESTS:-7}", "h:²", "a:b:c"]),
    )


values = st.recursive(scalar_values(), lambda inner: st.lists(inner, max_size=4), max_leaves=8)


def section(keys, extra=()):
    names = [key.name for key in keys] + list(extra) + ["typo_key"]
    return st.dictionaries(st.sampled_from(names), values, max_size=len(names))


channel_names = st.one_of(st.text(alphabet=IDENTIFIER_ALPHABET, min_size=1, max_size=12), st.integers(), any_text)
documents = st.fixed_dictionaries(
    {},
    optional={
        "server": st.one_of(section(SERVER_KEYS), values),
        "pubsub": st.one_of(
            st.fixed_dictionaries(
                {"driver": st.sampled_from(["MEMORY", "REDIS", "redis", 3])},
                optional={"redis": st.one_of(section(REDIS_KEYS), values)},
            ),
            section(PUBSUB_KEYS, ("redis",)),
        ),
        "channels": st.one_of(st.dictionaries(channel_names, st.one_of(section(CHANNEL_KEYS), values), max_size=4)),
        "unknown": values,
    },
)


def assert_config_outcome(text: str) -> None:
    try:
        config = parse_config(text, environ={"HOME": "/root", "X": "1"})
    except ConfigError as error:
        assert error.problems, "a ConfigError must list its problems"
        for key_path, message in error.problems:
            assert isinstance(key_path, str) and isinstance(message, str) and message
        return
    assert isinstance(config, RealtimeConfig)
    for channel in config.channels:
        assert IDENTIFIER_PATTERN.match(channel.id) and IDENTIFIER_PATTERN.match(channel.name)


@given(st.text(max_size=400))
def test_any_text_loads_or_raises_config_error(text):
    assert_config_outcome(text)


@given(documents)
def test_any_structured_document_loads_or_raises_config_error(document):
    text = yaml.safe_dump(document, allow_unicode=True, sort_keys=False)
    note(text)
    assert_config_outcome(text)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 5000 + "]" * 5000,  # deep nesting overflows PyYAML's recursive composer
        "a: &x [*x]",
        "server: {max_message_size: 1e400}",
        'pubsub: {driver: "REDIS", redis: {url: "redis://[::1"}}',
        'pubsub: {driver: "REDIS", redis: {sentinels: ["host:²"], master_name: m}}',
        "\x00",
        "\ud800: 1",
        "? [a, b]\n: c",
        "server: !!binary aGVsbG8=",
        "channels: {c: {id: !!timestamp 2001-12-14, type: WS}}",
        'channels: {c: {id: "c", type: WS, max_of_channel_connections: "${UNSET_VAR_FOR_TESTS:-9e999}"}}',
    ],
)
def test_known_hostile_documents(text):
    assert_config_outcome(text)


# --- identifiers, client ids and group names ----------------------------------------------------


@given(query_text)
def test_client_id_parse_accepts_exactly_the_documented_alphabet(raw):
    try:
        parsed = client_id_parse(raw)
    except ApplicationError as error:
        assert error.status == 400 and error.extra["field"] == "clientId"
        assert raw == SERVER_CLIENT_ID or not (1 <= len(raw) <= 128 and set(raw) <= set(CLIENT_ID_ALPHABET))
        return
    assert parsed == raw
    assert 1 <= len(parsed) <= 128 and set(parsed) <= set(CLIENT_ID_ALPHABET)


@given(st.text(alphabet=CLIENT_ID_ALPHABET, min_size=1, max_size=128), st.sampled_from(["\n", "\r\n", " ", "\x00"]))
def test_client_id_with_a_trailing_control_character_is_refused(client_id, suffix):
    assume(client_id != SERVER_CLIENT_ID)
    assert client_id_parse(client_id) == client_id
    with pytest.raises(ApplicationError):
        client_id_parse(client_id + suffix)
    assert not CLIENT_ID_PATTERN.match(client_id + suffix)


def test_absent_client_id_gets_a_fresh_generated_one():
    first, second = client_id_parse(None), client_id_parse(None)
    assert first != second and first.startswith("client-")


@given(any_text)
def test_identifier_pattern_is_the_documented_rule(raw):
    documented = 1 <= len(raw) <= 100 and set(raw) <= set(IDENTIFIER_ALPHABET) and set(raw) != {"."}
    assert bool(IDENTIFIER_PATTERN.match(raw)) is documented


@given(st.one_of(st.text(alphabet=IDENTIFIER_ALPHABET, min_size=1, max_size=100), any_text))
def test_channel_group_is_always_a_valid_group_name_or_value_error(channel_id):
    try:
        group = channel_group(channel_id)
    except ValueError:
        assert not IDENTIFIER_PATTERN.match(channel_id)
        return
    assert IDENTIFIER_PATTERN.match(channel_id)
    assert len(group) < 100
    assert BaseChannelLayer().require_valid_group_name(group)
    # Distinct ids never share a group.
    assert channel_group(channel_id) == group


@given(st.lists(st.text(alphabet=IDENTIFIER_ALPHABET, min_size=1, max_size=100), min_size=2, max_size=6, unique=True))
def test_distinct_channel_ids_get_distinct_groups(ids):
    ids = [channel_id for channel_id in ids if IDENTIFIER_PATTERN.match(channel_id)]
    assert len({channel_group(channel_id) for channel_id in ids}) == len(ids)


# --- tokens ------------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


claims_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
claims = st.dictionaries(
    st.sampled_from(["channel", "sub", "exp", "iat", "nbf", "pub", "aud", "iss", "other"]), claims_values, max_size=8
)


@st.composite
def token_like(draw):
    """Strings shaped like JWTs: signed with our secret or another, with any claims, or mangled."""
    kind = draw(st.sampled_from(["text", "signed", "forged", "mangled", "none-alg", "segments"]))
    if kind == "text":
        return draw(any_text)
    body = draw(claims)
    if kind == "segments":
        parts = draw(st.lists(st.binary(max_size=40), min_size=1, max_size=5))
        return ".".join(b64(part) for part in parts)
    if kind == "none-alg":
        header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        return f"{header}.{b64(json.dumps(body, default=str).encode())}."
    secret = settings.REALTIME_TOKEN_SECRET if kind in ("signed", "mangled") else "another-secret-entirely-0123456789"
    try:
        token = jwt.encode(body, secret, algorithm="HS256")
    except (TypeError, ValueError):
        assume(False)
    if kind == "mangled":
        position = draw(st.integers(min_value=0, max_value=len(token) - 1))
        token = token[:position] + draw(st.characters()) + token[position + 1 :]
    return token


@given(st.one_of(any_text, token_like()), st.sampled_from(["chat-1", "vault-1"]))
def test_token_verify_raises_only_application_errors(token, channel_id):
    try:
        verified = token_verify(token, channel_id=channel_id)
    except ApplicationError as error:
        assert error.code in ("token_invalid", "token_forbidden")
        assert error.status in (401, 403)
        return
    assert isinstance(verified, TokenClaims)
    assert verified.channel_id == channel_id and isinstance(verified.client_id, str)
    assert verified.expires_at > time.time() - 5


@given(
    st.text(alphabet=IDENTIFIER_ALPHABET, min_size=1, max_size=100),
    st.text(alphabet=CLIENT_ID_ALPHABET, min_size=1, max_size=128),
    st.integers(min_value=1, max_value=MAX_TTL_SECONDS),
    st.booleans(),
)
def test_mint_then_verify_round_trips(channel_id, client_id, ttl, can_publish):
    token = token_mint(channel_id=channel_id, client_id=client_id, ttl=ttl, can_publish=can_publish)
    claims = token_verify(token, channel_id=channel_id)
    assert (claims.channel_id, claims.client_id, claims.can_publish) == (channel_id, client_id, can_publish)
    assert abs(claims.expires_at - (time.time() + ttl)) <= 5
    with pytest.raises(ApplicationError) as refused:
        token_verify(token, channel_id=channel_id + "x")
    assert refused.value.code == "token_forbidden"


@given(st.integers().filter(lambda ttl: not 1 <= ttl <= MAX_TTL_SECONDS))
def test_mint_refuses_a_ttl_out_of_range(ttl):
    with pytest.raises(ApplicationError):
        token_mint(channel_id="chat-1", client_id="a", ttl=ttl)


# --- positions ---------------------------------------------------------------------------------


@given(st.one_of(query_text, any_text, st.from_regex(r"\A[A-Za-z0-9]{1,32}-[0-9]{1,18}\Z")))
def test_position_parse_returns_a_position_or_a_400(raw):
    try:
        position = position_parse(raw)
    except ApplicationError as error:
        assert error.status == 400 and error.extra["field"] == "since"
        return
    if raw == "":
        assert position is None
        return
    assert isinstance(position, Position)
    if position.message_id is None:
        assert isinstance(position.offset, int) and 0 <= position.offset < 10**18
        assert position.epoch is None or (position.epoch.isascii() and position.epoch.isalnum())
        epoch, _, offset = raw.strip().rpartition("-")
        assert (position.epoch or "", position.offset) == (epoch, int(offset)) and offset.isascii()


@pytest.mark.parametrize("raw", ["²", "12³", "١٢", "ep-١٢", "ep-²", "\u0660", "1\n2", "ep-1\nx"])
def test_non_ascii_digits_are_not_offsets(raw):
    with pytest.raises(ApplicationError):
        position_parse(raw)


@given(st.uuids())
def test_message_ids_are_accepted_in_any_spelling(message_id):
    canonical = str(message_id)
    for spelling in (canonical, canonical.upper(), canonical.replace("-", "")):
        assert position_parse(spelling) == Position(message_id=canonical)


# --- the publish path --------------------------------------------------------------------------

PUBLISH_CHANNEL = ChannelInfo(
    id="prop-1", name="prop", type="WS", max_connections=10, history_size=1000, history_ttl=3600
)


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@given(st.lists(st.text(alphabet=any_character, max_size=60), min_size=1, max_size=25))
def test_message_publish_works_or_refuses_and_keeps_history_in_order(payloads):
    async def scenario():
        runtime = memory_runtime()
        outcomes = []
        for payload in payloads:
            try:
                message = await message_publish(
                    channel=PUBLISH_CHANNEL, payload=payload, client_id="prop", runtime=runtime
                )
            except ApplicationError as error:
                outcomes.append((payload, error))
            else:
                outcomes.append((payload, message))
        held = (await runtime.history.since(PUBLISH_CHANNEL, Position(offset=0))).messages
        return outcomes, held

    outcomes, held = asyncio.run(scenario())
    published = [(payload, result) for payload, result in outcomes if not isinstance(result, ApplicationError)]
    for payload, result in outcomes:
        if isinstance(result, ApplicationError):
            assert result.status == 400 and not encodable(payload), (payload, result.as_dict())
        else:
            # Whatever is published can be written to a WebSocket and an event stream (strict UTF-8).
            assert encodable(result.to_json())
    assert [message.payload for message in held] == [payload for payload, _ in published]
    assert [message.offset for message in held] == list(range(1, len(published) + 1))
    assert [message.id for message in held] == [result.id for _, result in published]


@given(st.one_of(st.integers(), st.binary(), st.none(), st.lists(st.text())))
def test_message_publish_refuses_a_payload_that_is_not_text(payload):
    async def scenario():
        runtime = memory_runtime()
        with pytest.raises(ApplicationError):
            await message_publish(channel=PUBLISH_CHANNEL, payload=payload, client_id="prop", runtime=runtime)
        return await runtime.history.head(PUBLISH_CHANNEL.id)

    assert asyncio.run(scenario()) == 0
