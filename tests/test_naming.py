"""Client ids and channel-layer group names (channels_app/naming.py): property-based (hypothesis), every input
parses to the documented alphabet or to the one error it documents."""

from __future__ import annotations

import pytest
from channels.layers import BaseChannelLayer
from hypothesis import assume, given
from hypothesis import strategies as st

from channels_app.config import IDENTIFIER_PATTERN
from channels_app.errors import ApplicationError
from channels_app.naming import CLIENT_ID_PATTERN, SERVER_CLIENT_ID, channel_group, client_id_parse
from tests.support.strategies import CLIENT_ID_ALPHABET, IDENTIFIER_ALPHABET, any_text, query_text

# Moved from test_hardening_properties.py.


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
