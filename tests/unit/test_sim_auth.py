"""Token checks keep LiveKit's grant defaults and name the problem."""

from __future__ import annotations

import time

import jwt
import pytest

from bridge.errors import AuthError
from bridge.sim.auth import bearer_token, mint_token, verify_token
from support.signal_client import API_KEY, API_SECRET, make_token

KEYS = {API_KEY: API_SECRET}


def test_defaults_follow_livekit() -> None:
    grants = verify_token(make_token("alice", "r"), KEYS)
    assert (grants.identity, grants.room, grants.room_join) == ("alice", "r", True)
    assert grants.can_publish
    assert grants.can_subscribe
    assert grants.can_publish_data
    assert not grants.can_update_own_metadata
    assert not grants.hidden
    # canPublishData follows canPublish when absent.
    assert not verify_token(make_token("a", "r", can_publish=False), KEYS).can_publish_data


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (make_token("a", "r", key="nope"), "invalid API key"),
        (make_token("a", "r", secret="x" * 40), "Signature verification failed"),
        (make_token("a", "r", ttl_s=-600), "expired"),
        ("abc", "invalid authorization token"),
    ],
)
def test_refusals_name_the_problem(token: str, message: str) -> None:
    with pytest.raises(AuthError, match=message):
        verify_token(token, KEYS)


def test_refreshed_token_keeps_grants_and_extends_life() -> None:
    grants = verify_token(make_token("alice", "r", hidden=True, ttl_s=30), KEYS)
    fresh = mint_token(grants.claims, API_KEY, API_SECRET, ttl_s=600, now=time.time())
    again = verify_token(fresh, KEYS)
    assert again.hidden
    assert again.identity == "alice"
    assert again.expires_at > grants.expires_at + 500


def test_bearer_header_parsing() -> None:
    assert bearer_token(None) is None
    assert bearer_token("Bearer abc") == "abc"
    with pytest.raises(AuthError, match="Must start with Bearer"):
        bearer_token("Token abc")
    assert jwt.decode(make_token("a", "r"), options={"verify_signature": False})["sub"] == "a"
