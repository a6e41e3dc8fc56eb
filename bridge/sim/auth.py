"""Access-token checks of the simulator, with LiveKit's statuses and messages.

Tokens are HS256 JWTs signed with an API secret; ``iss`` names the key. Grants keep LiveKit's
defaults for absent keys (``canPublish``/``canSubscribe`` true, ``canPublishData`` = ``canPublish``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

from bridge.errors import AuthError

LEEWAY_S = 60.0


@dataclass(frozen=True, slots=True)
class Grants:
    """The token claims the simulator acts on."""

    identity: str
    room: str
    room_join: bool
    room_admin: bool = False
    room_list: bool = False
    room_create: bool = False
    can_publish: bool = True
    can_subscribe: bool = True
    can_publish_data: bool = True
    can_update_own_metadata: bool = False
    hidden: bool = False
    recorder: bool = False
    agent: bool = False
    name: str = ""
    metadata: str = ""
    kind: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    expires_at: float = 0.0
    claims: Mapping[str, Any] = field(default_factory=dict)  # as signed, for refresh_token


def verify_token(token: str, keys: Mapping[str, str]) -> Grants:
    """Check signature, key and expiry; raise :class:`AuthError` with LiveKit's wording."""
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise AuthError(f"invalid authorization token: {exc}") from None
    key = unverified.get("iss")
    if not isinstance(key, str) or key not in keys:
        raise AuthError("invalid API key")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key=keys[key],
            algorithms=["HS256"],
            issuer=key,
            leeway=LEEWAY_S,
            options={"require": ["exp"], "verify_iat": False},
        )
    except jwt.PyJWTError as exc:
        raise AuthError(f"invalid authorization token: {exc}") from None
    return _grants(claims)


def _flag(video: Mapping[str, Any], name: str, default: bool) -> bool:
    value = video.get(name)
    return default if value is None else bool(value)


def _grants(claims: Mapping[str, Any]) -> Grants:
    video = claims.get("video") or {}
    if not isinstance(video, dict):
        raise AuthError("invalid authorization token: video grant is not an object")
    identity = str(claims.get("sub") or claims.get("jti") or "")
    can_publish = _flag(video, "canPublish", True)
    attributes = claims.get("attributes") or {}
    return Grants(
        identity=identity,
        room=str(video.get("room") or ""),
        room_join=_flag(video, "roomJoin", False),
        room_admin=_flag(video, "roomAdmin", False),
        room_list=_flag(video, "roomList", False),
        room_create=_flag(video, "roomCreate", False),
        can_publish=can_publish,
        can_subscribe=_flag(video, "canSubscribe", True),
        can_publish_data=_flag(video, "canPublishData", can_publish),
        can_update_own_metadata=_flag(video, "canUpdateOwnMetadata", False),
        hidden=_flag(video, "hidden", False),
        recorder=_flag(video, "recorder", False),
        agent=_flag(video, "agent", False),
        name=str(claims.get("name") or ""),
        metadata=str(claims.get("metadata") or ""),
        kind=str(claims.get("kind") or ""),
        attributes={str(k): str(v) for k, v in attributes.items()} if isinstance(attributes, dict) else {},
        expires_at=float(claims["exp"]),
        claims=dict(claims),
    )


def bearer_token(header: str | None) -> str | None:
    """The JWT from an ``Authorization`` header; AuthError when the header is not ``Bearer``."""
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme != "Bearer" or not token:
        raise AuthError("invalid authorization header. Must start with Bearer ")
    return token.strip()


def mint_token(claims: Mapping[str, Any], key: str, secret: str, *, ttl_s: float, now: float) -> str:
    """Sign ``claims`` again with a fresh lifetime, as LiveKit's ``refresh_token`` does."""
    payload = dict(claims)
    payload.update(iss=key, nbf=int(now), iat=int(now), exp=int(now + ttl_s))
    return jwt.encode(payload, secret, algorithm="HS256")
