"""Hypothesis strategies for what reaches the service's boundary: any text, query strings, the documented alphabets."""

import string

from hypothesis import strategies as st

CLIENT_ID_ALPHABET = string.ascii_letters + string.digits + "._:@-"
IDENTIFIER_ALPHABET = string.ascii_letters + string.digits + "._-"
# Anything a query string decoded as latin-1 (query_params in transports/websocket.py) or JSON (the API) can carry.
# Lone surrogates included: JSON bodies can carry them as "\\ud800" escapes.
any_character = st.characters(exclude_categories=())
any_text = st.one_of(
    st.text(alphabet=any_character, max_size=300),
    st.lists(st.one_of(st.characters(), st.sampled_from(["\ud800", "\udfff", "\x00", "\n"])), max_size=40).map("".join),
)
query_text = st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=200)
