"""What the bridge knows about a room, kept from the messages LiveKit sends. Pure.

LiveKit does not replay what happened while the bridge was away. After every join, rejoin, resume
or move the bridge publishes a snapshot of this state, so a consumer can rebuild its view after a
gap. Updates apply LiveKit's rule: a participant's info is replaced only by a version at least as new;
participants are keyed by identity (protocol > 11), and DISCONNECTED ones are removed.
"""

from __future__ import annotations

from livekit.protocol import models, rtc


class RoomState:
    def __init__(self) -> None:
        self.room = models.Room()
        self.participants: dict[str, models.ParticipantInfo] = {}
        self.self_sid = ""

    def reset(self, room: models.Room, others: list[models.ParticipantInfo], self_sid: str) -> None:
        self.room = models.Room()
        self.room.CopyFrom(room)
        self.participants = {}
        self.self_sid = self_sid
        for info in others:
            self._put(info)

    def apply(self, response: rtc.SignalResponse) -> bool:
        """Apply one message; True when it changed the room or its participants."""
        kind = response.WhichOneof("message")
        if kind == "join":
            join = response.join
            self.reset(join.room, list(join.other_participants), join.participant.sid)
            return True
        if kind == "update":
            changed = False
            for info in response.update.participants:
                changed |= self._merge(info)
            return changed
        if kind == "room_update":
            self.room.CopyFrom(response.room_update.room)
            return True
        if kind == "room_moved":
            moved = response.room_moved
            self.reset(moved.room, list(moved.other_participants), moved.participant.sid)
            return True
        return False

    def _merge(self, info: models.ParticipantInfo) -> bool:
        if info.sid == self.self_sid:
            return False  # the bridge itself is hidden; never part of the room's view
        current = self.participants.get(info.identity)
        if current is not None and current.sid == info.sid and info.version < current.version:
            return False  # stale
        if info.state == models.ParticipantInfo.DISCONNECTED:
            if current is not None and current.sid == info.sid:
                del self.participants[info.identity]
                return True
            return False
        self._put(info)
        return True

    def _put(self, info: models.ParticipantInfo) -> None:
        copy = models.ParticipantInfo()
        copy.CopyFrom(info)
        self.participants[info.identity] = copy
