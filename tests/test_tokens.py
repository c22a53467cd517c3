"""Private-channel tokens: minting and every way verification refuses."""

import time

import jwt
import pytest
from django.conf import settings

from channels_app.errors import ApplicationError
from channels_app.tokens import token_mint, token_verify


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
