"""LiveKit webhooks: prove a POST comes from our LiveKit deployment, then parse it.

LiveKit signs every webhook with the deployment's API key and secret: the ``Authorization`` header is an
HS256 JWT (``iss`` = the API key, valid for 5 minutes) whose ``sha256`` claim is the base64 SHA-256 of the
exact request body, which is the protobuf JSON of a ``WebhookEvent``. :meth:`WebhookVerifier.verify`
checks all of that and refuses anything else with a :class:`~bridge.errors.WebhookRefused` whose
``reason`` is one of :data:`REFUSALS`. No I/O here: the HTTP handler hands over the body and header.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections import Counter
from typing import Final

import jwt
from google.protobuf import json_format
from livekit.protocol.webhook import WebhookEvent

from bridge.config import LiveKitSettings
from bridge.errors import WebhookRefused

__all__ = ["LEEWAY_S", "REFUSALS", "WEBHOOK_EVENTS", "WebhookVerifier"]

LEEWAY_S: Final = 60.0  # clock skew allowed between LiveKit and us on exp/nbf
# The events LiveKit sends (livekit/protocol webhook/consts.go); anything else is counted as "other".
WEBHOOK_EVENTS: Final = (
    "room_started",
    "room_finished",
    "participant_joined",
    "participant_left",
    "participant_connection_aborted",
    "track_published",
    "track_unpublished",
    "egress_started",
    "egress_updated",
    "egress_ended",
    "ingress_started",
    "ingress_ended",
)
REFUSALS: Final = (
    "missing_header",  # no Authorization header
    "bad_token",  # not a JWT, wrong algorithm, or a signature our secret did not make
    "wrong_issuer",  # signed with our secret but for another API key
    "expired",  # exp (or nbf) outside the leeway
    "body_mismatch",  # no sha256 claim, or it does not match the body
    "malformed",  # signed and intact, but not a WebhookEvent (400, not 401)
)


class WebhookVerifier:
    """Checks webhooks against one API key/secret; counts what it accepted and refused (for metrics)."""

    def __init__(self, settings: LiveKitSettings) -> None:
        self._key = settings.api_key
        self._secret = settings.api_secret
        self.accepted: Counter[str] = Counter()  # by event, WEBHOOK_EVENTS or "other"
        self.refused: Counter[str] = Counter()  # by reason, REFUSALS

    def verify(self, body: bytes, authorization: str | None) -> WebhookEvent:
        """The event, if ``authorization`` is LiveKit's signature of ``body``; else WebhookRefused."""
        try:
            event = self._verify(body, authorization)
        except WebhookRefused as exc:
            self.refused[exc.reason] += 1
            raise
        self.accepted[event.event if event.event in WEBHOOK_EVENTS else "other"] += 1
        return event

    def _verify(self, body: bytes, authorization: str | None) -> WebhookEvent:
        if not authorization or not authorization.strip():
            raise WebhookRefused("missing_header", "no Authorization header")
        # LiveKit sends the bare token; accept a Bearer prefix too, as LiveKit's own receivers do.
        token = authorization.strip().removeprefix("Bearer ").strip()
        try:
            claims = jwt.decode(
                token,
                key=self._secret.reveal(),
                algorithms=["HS256"],
                issuer=self._key,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss"]},
            )
        except jwt.InvalidIssuerError:
            raise WebhookRefused("wrong_issuer", "token issued for another API key") from None
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
            raise WebhookRefused("expired", "token expired or not yet valid") from None
        except jwt.PyJWTError as exc:
            # The class name says enough; PyJWT's messages can quote token parts.
            raise WebhookRefused("bad_token", f"token does not verify ({type(exc).__name__})") from None
        claimed = claims.get("sha256")
        try:
            digest = base64.b64decode(claimed, validate=True) if isinstance(claimed, str) else b""
        except (binascii.Error, ValueError):
            digest = b""
        if not digest or not hmac.compare_digest(digest, hashlib.sha256(body).digest()):
            raise WebhookRefused("body_mismatch", "the body is not the one the token signed")
        event = WebhookEvent()
        try:
            json_format.Parse(body.decode(), event, ignore_unknown_fields=True)
        except (json_format.ParseError, UnicodeDecodeError):
            raise WebhookRefused("malformed", "the body is not a WebhookEvent", status=400) from None
        return event
