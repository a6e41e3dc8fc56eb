"""Which remote tracks the bridge subscribes to (setting ``media.subscribe``). Pure: no I/O.

The bridge joins with ``auto_subscribe=0`` and receives nothing unless asked. Each rule names a track
kind, a source and a glob over the publisher's identity (``*`` for any); a track matching any rule is
subscribed once, with an ``UpdateSubscription`` request, as soon as the room state shows it. Tracks
whose only codecs aiortc cannot receive (VP9, AV1) are never selected: LiveKit would offer an m-line
the bridge has to neutralise (research ``media-aiortc.md`` §1.4).

The set of subscribed sids is bounded by the room's current tracks: :meth:`forget_missing` drops the
sids of tracks that are gone.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

from livekit.protocol import models

from bridge.config import SubscribeRule

__all__ = ["SubscriptionPolicy", "receivable"]

UNRECEIVABLE: Final = frozenset({"video/vp9", "video/av1"})

_KINDS: Final = {models.TrackType.AUDIO: "audio", models.TrackType.VIDEO: "video"}
_SOURCES: Final = {
    models.TrackSource.UNKNOWN: "unknown",
    models.TrackSource.CAMERA: "camera",
    models.TrackSource.MICROPHONE: "microphone",
    models.TrackSource.SCREEN_SHARE: "screen_share",
    models.TrackSource.SCREEN_SHARE_AUDIO: "screen_share_audio",
}


def receivable(track: models.TrackInfo) -> bool:
    """False when every codec the track is published with is one aiortc cannot receive."""
    mimes = {track.mime_type.lower()} | {c.mime_type.lower() for c in track.codecs}
    mimes.discard("")
    return not mimes or not mimes <= UNRECEIVABLE


class SubscriptionPolicy:
    """``media.subscribe`` rules plus the sids already subscribed in this session."""

    def __init__(self, rules: Sequence[SubscribeRule]) -> None:
        self.rules = tuple(rules)
        self._subscribed: dict[str, None] = {}  # insertion-ordered set

    @property
    def subscribed(self) -> list[str]:
        return list(self._subscribed)

    def matches(self, participant: models.ParticipantInfo, track: models.TrackInfo) -> bool:
        kind = _KINDS.get(track.type)
        source = _SOURCES.get(track.source, "unknown")
        return kind is not None and any(
            rule.kind in ("*", kind)
            and rule.source in ("*", source)
            and fnmatch.fnmatchcase(participant.identity, rule.identity)
            for rule in self.rules
        )

    def select(self, participant: models.ParticipantInfo) -> Iterator[str]:
        """Sids of ``participant``'s tracks to subscribe to now; each is marked subscribed."""
        for track in participant.tracks:
            if track.sid in self._subscribed or not self.matches(participant, track):
                continue
            if receivable(track) and self.mark(track.sid):
                yield track.sid

    def mark(self, track_sid: str) -> bool:
        """Record ``track_sid`` as subscribed; False when it already was."""
        if track_sid in self._subscribed:
            return False
        self._subscribed[track_sid] = None
        return True

    def forget_missing(self, present: Iterable[str]) -> None:
        keep = set(present)
        for sid in [s for s in self._subscribed if s not in keep]:
            del self._subscribed[sid]

    def clear(self) -> None:
        self._subscribed.clear()
