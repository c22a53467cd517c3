"""Private-channel tokens: minting and every way verification refuses."""

import base64
import json
import time

import jwt
import pytest
from django.conf import settings
from hypothesis import assume, given
from hypothesis import strategies as st

from channels_app.errors import ApplicationError
from channels_app.tokens import MAX_TTL_SECONDS, TokenClaims, token_mint, token_verify
from tests.support.strategies import CLIENT_ID_ALPHABET, IDENTIFIER_ALPHABET, any_text


def test_minted_token_verifies_with_its_claims():
    token = token_mint(channel_id="news", client_id="alice", ttl=60, can_publish=True)
    claims = token_verify(token, channel_id="news")
    assert claims.client_id == "alice"
    assert claims.can_publish is True
    assert claims.expires_at - time.time() == pytest.approx(60, abs=2)


def test_read_only_is_the_default():
    assert token_verify(token_mint(channel_id="news", client_id="bob"), channel_id="news").can_publish is False


def _refusal(token: str, channel_id: str = "news") -> ApplicationError:
    with pytest.raises(ApplicationError) as refused:
        token_verify(token, channel_id=channel_id)
    return refused.value


def test_token_for_another_channel_is_forbidden():
    error = _refusal(token_mint(channel_id="other", client_id="alice"))
    assert (error.status, error.close_code, error.code) == (403, 4403, "token_forbidden")


def test_expired_token_is_refused():
    expired = jwt.encode(
        {"channel": "news", "sub": "alice", "exp": int(time.time()) - 5}, settings.REALTIME_TOKEN_SECRET, "HS256"
    )
    error = _refusal(expired)
    assert (error.status, error.close_code) == (401, 4401)
    assert "expired" in error.message


def test_forged_token_is_refused():
    forged = jwt.encode(
        {"channel": "news", "sub": "alice", "exp": int(time.time()) + 60},
        "not-the-secret-of-this-service-at-all",
        "HS256",
    )
    assert _refusal(forged).code == "token_invalid"


def test_unsigned_token_is_refused():
    unsigned = jwt.encode({"channel": "news", "sub": "alice", "exp": int(time.time()) + 60}, None, "none")
    assert _refusal(unsigned).code == "token_invalid"


def test_garbage_is_refused():
    assert _refusal("not a token").code == "token_invalid"


def test_ttl_is_bounded():
    with pytest.raises(ApplicationError):
        token_mint(channel_id="news", client_id="alice", ttl=0)
    with pytest.raises(ApplicationError):
        token_mint(channel_id="news", client_id="alice", ttl=10**9)


# --- Any token-like string verifies or is refused (hypothesis) (moved from test_hardening_properties.py) ---


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
