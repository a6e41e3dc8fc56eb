"""Room and participant state of the simulator, and the messages their changes cause.

A :class:`SimRoom` owns its participants. A participant is either *connected* (a real client on a
WebSocket, with a :class:`~bridge.sim.session.ClientSession`) or *simulated* (driven by the scenario
API, with synthetic tracks). Every state change goes through a method here that bumps the
participant's ``version`` and broadcasts the resulting ``SignalResponse`` the way LiveKit would.
"""

from __future__ import annotations

import logging
import secrets
import string
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from livekit.protocol import models, rtc

from bridge.errors import BadRequest, NotFound

if TYPE_CHECKING:
    from bridge.sim.auth import Grants

log = logging.getLogger(__name__)

_ALPHABET = string.ascii_letters + string.digits


def new_sid(prefix: str) -> str:
    """A LiveKit-style id: ``PA_``, ``TR_``, ``RM_``… followed by 12 random characters."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(12))


def now_ms() -> int:
    return int(time.time() * 1000)


class Connection(Protocol):
    """What the room needs from a connected client (implemented by ``ClientSession``)."""

    def send(self, response: rtc.SignalResponse) -> None: ...

    def close_with_leave(self, reason: models.DisconnectReason, action: rtc.LeaveRequest.Action) -> None: ...

    def subscribe(self, publisher: SimParticipant, track: models.TrackInfo) -> None: ...

    def unsubscribe(self, track_sid: str) -> None: ...

    def send_data(self, payload: bytes, label: str) -> bool: ...

    @property
    def auto_subscribe(self) -> bool: ...


@dataclass(eq=False)
class SimParticipant:
    """One participant; ``info`` is the ParticipantInfo LiveKit would broadcast."""

    room: SimRoom
    info: models.ParticipantInfo
    grants: Grants | None = None  # None for simulated participants
    connection: Connection | None = None
    # sid -> a MediaStreamTrack-like source that subscribers can relay (synthetic or client-published)
    media_sources: dict[str, Any] = field(default_factory=dict)
    speaker_level: float = 0.0
    quality: models.ConnectionQuality = models.GOOD
    data_blobs: dict[str, bytes] = field(default_factory=dict)
    subscribed_by: dict[str, set[str]] = field(default_factory=dict)  # track sid -> subscriber identities
    # track sid -> identities that asked for it before its media arrived (subscribed once it does)
    awaiting_media: dict[str, set[str]] = field(default_factory=dict)
    closed: bool = False

    @property
    def identity(self) -> str:
        return self.info.identity

    @property
    def sid(self) -> str:
        return self.info.sid

    @property
    def hidden(self) -> bool:
        return self.info.permission.hidden

    @property
    def simulated(self) -> bool:
        return self.grants is None

    def track(self, sid: str) -> models.TrackInfo:
        for track in self.info.tracks:
            if track.sid == sid:
                return track
        raise NotFound(f"participant {self.identity!r} has no track {sid!r}")

    def deliver(self, response: rtc.SignalResponse) -> None:
        if self.connection is not None and not self.closed:
            self.connection.send(response)


ParticipantFilter = Callable[[SimParticipant], bool]


class SimRoom:
    """A room: its ``Room`` message, its participants and the broadcasts their changes cause."""

    def __init__(self, name: str, *, metadata: str = "", empty_timeout_s: int = 300) -> None:
        created = time.time()
        self.info = models.Room(
            sid=new_sid("RM_"),
            name=name,
            metadata=metadata,
            empty_timeout=empty_timeout_s,
            departure_timeout=20,
            creation_time=int(created),
            creation_time_ms=int(created * 1000),
            enabled_codecs=[
                models.Codec(mime="audio/opus"),
                models.Codec(mime="audio/red"),
                models.Codec(mime="video/VP8"),
                models.Codec(mime="video/H264"),
                models.Codec(mime="video/VP9"),
                models.Codec(mime="video/AV1"),
            ],
        )
        self.participants: dict[str, SimParticipant] = {}
        self.data_received: list[tuple[str, models.DataPacket, str]] = []  # (sender, packet, label)
        # Server-initiated RPCs in flight (RoomService.PerformRpc): request id -> takes the ack/response.
        self.rpc_replies: dict[str, Callable[[models.DataPacket], None]] = {}
        # Unpublished tracks' media sources go here; the server closes them on its event loop.
        self.on_source_removed: Callable[[Any], None] = lambda source: None
        self.closed = False

    @property
    def name(self) -> str:
        return self.info.name

    # ----------------------------------------------------------------- queries

    def __iter__(self) -> Iterator[SimParticipant]:
        return iter(list(self.participants.values()))

    def participant(self, identity: str) -> SimParticipant:
        try:
            return self.participants[identity]
        except KeyError:
            raise NotFound(f"room {self.name!r} has no participant {identity!r}") from None

    def by_sid(self, sid: str) -> SimParticipant | None:
        return next((p for p in self if p.sid == sid), None)

    def connected(self) -> list[SimParticipant]:
        return [p for p in self if p.connection is not None and not p.closed]

    def visible_infos(self, *, exclude: SimParticipant | None = None) -> list[models.ParticipantInfo]:
        return [p.info for p in self if p is not exclude and not p.hidden]

    def find_track(self, track_sid: str) -> tuple[SimParticipant, models.TrackInfo]:
        for p in self:
            for track in p.info.tracks:
                if track.sid == track_sid:
                    return p, track
        raise NotFound(f"room {self.name!r} has no track {track_sid!r}")

    # --------------------------------------------------------------- broadcast

    def broadcast(
        self,
        response: rtc.SignalResponse,
        *,
        exclude: SimParticipant | None = None,
        only: ParticipantFilter | None = None,
    ) -> None:
        for p in self.connected():
            if p is exclude or (only is not None and not only(p)):
                continue
            p.deliver(response)

    def broadcast_update(self, changed: Iterable[SimParticipant]) -> None:
        """Send a ParticipantUpdate: hidden participants are only told about themselves."""
        changed = list(changed)
        for receiver in self.connected():
            infos = [p.info for p in changed if not p.hidden or p is receiver]
            if infos:
                receiver.deliver(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=infos)))

    def _counts_changed(self) -> None:
        visible = [p for p in self if not p.hidden and not p.closed]
        self.info.num_participants = len(visible)
        self.info.num_publishers = sum(1 for p in visible if p.info.is_publisher)
        self.info.version.unix_micro = int(time.time() * 1_000_000)
        self.info.version.ticks += 1

    def bump(self, participant: SimParticipant) -> None:
        """Mark ``participant`` changed and tell everyone (including itself)."""
        participant.info.version += 1
        self.broadcast_update([participant])

    # --------------------------------------------------------------- lifecycle

    def add(
        self,
        identity: str,
        *,
        name: str = "",
        metadata: str = "",
        attributes: dict[str, str] | None = None,
        kind: models.ParticipantInfo.Kind = models.ParticipantInfo.STANDARD,
        grants: Grants | None = None,
        state: models.ParticipantInfo.State = models.ParticipantInfo.ACTIVE,
    ) -> SimParticipant:
        if not identity:
            raise BadRequest("participant identity is empty")
        if identity in self.participants:
            raise BadRequest(f"room {self.name!r} already has participant {identity!r}")
        joined = time.time()
        permission = models.ParticipantPermission(
            can_subscribe=True, can_publish=True, can_publish_data=True, can_update_metadata=False
        )
        if grants is not None:
            permission = models.ParticipantPermission(
                can_subscribe=grants.can_subscribe,
                can_publish=grants.can_publish,
                can_publish_data=grants.can_publish_data,
                can_update_metadata=grants.can_update_own_metadata,
                hidden=grants.hidden,
                recorder=grants.recorder,
                agent=grants.agent,
            )
        info = models.ParticipantInfo(
            sid=new_sid("PA_"),
            identity=identity,
            name=name,
            metadata=metadata,
            attributes=attributes or {},
            state=state,
            joined_at=int(joined),
            joined_at_ms=int(joined * 1000),
            version=1,
            permission=permission,
            region="sim",
            kind=kind,
        )
        participant = SimParticipant(room=self, info=info, grants=grants)
        self.participants[identity] = participant
        self._counts_changed()
        if state != models.ParticipantInfo.JOINING:
            self.broadcast_update([participant])
        return participant

    def remove(self, participant: SimParticipant, reason: models.DisconnectReason) -> None:
        """Take ``participant`` out of the room and tell the others it is DISCONNECTED."""
        if self.participants.get(participant.identity) is not participant:
            return
        del self.participants[participant.identity]
        participant.closed = True
        participant.info.state = models.ParticipantInfo.DISCONNECTED
        participant.info.disconnect_reason = reason
        participant.info.version += 1
        for other in self:
            for subscribers in other.subscribed_by.values():
                subscribers.discard(participant.identity)
        self._counts_changed()
        if not participant.hidden:
            self.broadcast_update([participant])
        log.info(
            "participant left room=%s identity=%s reason=%s",
            self.name,
            participant.identity,
            models.DisconnectReason.Name(reason),
        )

    def set_metadata(self, metadata: str) -> None:
        self.info.metadata = metadata
        self._counts_changed()
        self.broadcast(rtc.SignalResponse(room_update=rtc.RoomUpdate(room=self.info)))

    # ------------------------------------------------------------------ tracks

    def add_track(self, participant: SimParticipant, track: models.TrackInfo, source: Any | None) -> None:
        participant.info.tracks.append(track)
        participant.info.is_publisher = True
        if source is not None:
            participant.media_sources[track.sid] = source
        self._counts_changed()
        self.bump(participant)
        self.auto_subscribe(participant, track)

    def attach_source(self, participant: SimParticipant, track_sid: str, source: Any) -> None:
        """Media for an announced track arrived: auto-subscribers receive it from now on."""
        participant.media_sources[track_sid] = source
        track = participant.track(track_sid)
        self.auto_subscribe(participant, track)
        for identity in participant.awaiting_media.pop(track_sid, set()):
            subscriber = self.participants.get(identity)
            if subscriber is not None and subscriber.connection is not None:
                subscriber.connection.subscribe(participant, track)

    def auto_subscribe(self, publisher: SimParticipant, track: models.TrackInfo) -> None:
        if track.sid not in publisher.media_sources:
            return  # announced, but no media yet: subscribed once it arrives
        for p in self.connected():
            if p is not publisher and p.connection is not None and p.connection.auto_subscribe:
                p.connection.subscribe(publisher, track)

    def remove_track(self, participant: SimParticipant, track_sid: str) -> models.TrackInfo:
        track = participant.track(track_sid)
        for p in self.connected():
            if p.connection is not None and p.identity in participant.subscribed_by.get(track_sid, ()):
                p.connection.unsubscribe(track_sid)
        participant.info.tracks.remove(track)
        source = participant.media_sources.pop(track_sid, None)
        if source is not None:
            self.on_source_removed(source)
        participant.subscribed_by.pop(track_sid, None)
        if not participant.info.tracks:
            participant.info.is_publisher = False
        self._counts_changed()
        self.bump(participant)
        return track

    def set_muted(self, participant: SimParticipant, track_sid: str, muted: bool) -> None:
        participant.track(track_sid).muted = muted
        self.bump(participant)

    def close(self) -> None:
        self.closed = True
