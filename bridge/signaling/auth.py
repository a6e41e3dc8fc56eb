"""Access tokens for the bridge's own participant, minted with ``livekit-api``.

The bridge joins hidden (setting ``livekit.hidden``), scoped to one room, with a short lifetime: it can
always mint a new token, and LiveKit's ``refresh_token`` keeps a live session's token fresh in between.
"""

from __future__ import annotations

from datetime import timedelta

from livekit import api

from bridge.config import LiveKitSettings


def mint_join_token(settings: LiveKitSettings, room: str) -> str:
    """A token that lets ``settings.identity`` join ``room`` as a (by default hidden) subscriber that can
    publish data (its own data channel: ``bridge.send_data``) and, with ``livekit.can_publish``, media."""
    grants = api.VideoGrants(
        room_join=True,
        room=room,
        hidden=settings.hidden,
        can_subscribe=True,
        can_publish_data=True,
        can_publish=settings.can_publish,
        can_update_own_metadata=settings.can_update_own_metadata,
    )
    token = (
        api.AccessToken(settings.api_key, settings.api_secret.reveal())
        .with_identity(settings.identity)
        .with_name(settings.identity)
        .with_grants(grants)
        .with_ttl(timedelta(seconds=settings.token_ttl_s))
    )
    return token.to_jwt()
