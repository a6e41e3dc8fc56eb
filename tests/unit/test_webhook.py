"""Webhook verification: only a body signed by our LiveKit deployment, unchanged, is accepted."""

from __future__ import annotations

import base64
import hashlib
import time

import jwt
import pytest
from livekit.protocol import models

from bridge.config import load_settings
from bridge.errors import WebhookRefused
from bridge.rooms.webhook import REFUSALS, WebhookVerifier
from bridge.sim.webhooks import sign_webhook, webhook_body

KEY, SECRET = "APIkey", "the-api-secret-of-this-deployment"


def verifier() -> WebhookVerifier:
    settings = load_settings(
        None,
        {
            "BRIDGE_LIVEKIT__URL": "ws://lk:7880",
            "BRIDGE_LIVEKIT__API_KEY": KEY,
            "BRIDGE_LIVEKIT__API_SECRET": SECRET,
        },
    )
    return WebhookVerifier(settings.livekit)


def body(event: str = "room_started", room: str = "r1") -> bytes:
    return webhook_body(event, models.Room(name=room, sid="RM_1"))


def refused(v: WebhookVerifier, payload: bytes, header: str | None) -> WebhookRefused:
    with pytest.raises(WebhookRefused) as caught:
        v.verify(payload, header)
    assert caught.value.reason in REFUSALS
    return caught.value


def test_a_signed_webhook_is_accepted_and_parsed() -> None:
    v = verifier()
    payload = body()
    event = v.verify(payload, sign_webhook(payload, KEY, SECRET))
    assert (event.event, event.room.name, event.room.sid) == ("room_started", "r1", "RM_1")
    assert v.accepted["room_started"] == 1
    # LiveKit sends the bare token; a Bearer prefix is fine too.
    assert v.verify(payload, "Bearer " + sign_webhook(payload, KEY, SECRET)).room.name == "r1"


def test_a_forged_signature_is_refused() -> None:
    v = verifier()
    payload = body()
    exc = refused(v, payload, sign_webhook(payload, KEY, "not-our-secret-but-just-as-long-as-ours"))
    assert (exc.reason, exc.status) == ("bad_token", 401)
    assert v.refused["bad_token"] == 1
    assert not v.accepted


def test_a_tampered_body_is_refused() -> None:
    v = verifier()
    token = sign_webhook(body(room="r1"), KEY, SECRET)
    assert refused(v, body(room="someone-elses-room"), token).reason == "body_mismatch"


def test_a_token_for_another_api_key_is_refused() -> None:
    payload = body()
    assert refused(verifier(), payload, sign_webhook(payload, "OtherKey", SECRET)).reason == "wrong_issuer"


@pytest.mark.parametrize("header", [None, "", "   "])
def test_a_missing_header_is_refused(header: str | None) -> None:
    assert refused(verifier(), body(), header).reason == "missing_header"


def test_garbage_and_unsigned_tokens_are_refused() -> None:
    payload = body()
    sha = base64.b64encode(hashlib.sha256(payload).digest()).decode()
    claims = {"iss": KEY, "exp": int(time.time()) + 60, "sha256": sha}
    none_alg = jwt.encode(claims, key="", algorithm="none")
    hs512 = jwt.encode(claims, SECRET * 2, algorithm="HS512")
    for header in ("not-a-jwt", none_alg, hs512):
        assert refused(verifier(), payload, header).reason == "bad_token"


def test_an_expired_token_is_refused() -> None:
    payload = body()
    token = sign_webhook(payload, KEY, SECRET, now=time.time() - 3600)
    assert refused(verifier(), payload, token).reason == "expired"


def test_a_token_without_a_body_hash_is_refused() -> None:
    token = jwt.encode({"iss": KEY, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    assert refused(verifier(), body(), token).reason == "body_mismatch"


def test_a_signed_body_that_is_not_an_event_is_a_400() -> None:
    payload = b"{not json"
    exc = refused(verifier(), payload, sign_webhook(payload, KEY, SECRET))
    assert (exc.reason, exc.status) == ("malformed", 400)


def test_the_refusal_never_quotes_the_token() -> None:
    payload = body()
    token = sign_webhook(payload, KEY, "forged-forged-forged-forged-forged-forged")
    exc = refused(verifier(), payload, token)
    assert token not in str(exc)
    assert all(part not in str(exc) for part in token.split("."))
