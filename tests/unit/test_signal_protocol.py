"""SignalProtocol driven through its whole transition table with bytes and fake time, no sockets."""

from __future__ import annotations

import itertools

import pytest
from livekit.protocol import models, rtc

from bridge.errors import InvalidState
from bridge.signaling import codec
from bridge.signaling.protocol import (
    TRANSITIONS,
    CloseSocket,
    ConnectionLost,
    Ended,
    Joined,
    OpenSocket,
    Received,
    Resumed,
    SessionState,
    SignalProtocol,
    Trigger,
)


def frame(**message: object) -> bytes:
    encoded = codec.encode(rtc.SignalResponse(**message))  # type: ignore[arg-type]
    assert isinstance(encoded, bytes)
    return encoded


def join_frame(sid: str = "PA_1", room: str = "r") -> bytes:
    return frame(
        join=rtc.JoinResponse(
            participant=models.ParticipantInfo(sid=sid, identity="bridge"),
            room=models.Room(name=room),
            ping_interval=5,
            ping_timeout=15,
        )
    )


def leave_frame(reason: int, action: int) -> bytes:
    return frame(leave=rtc.LeaveRequest(reason=reason, action=action))  # type: ignore[arg-type]


def state_of(p: SignalProtocol) -> SessionState:
    return p.state  # a call, so mypy does not narrow the state across transitions


def sent(p: SignalProtocol) -> list[str]:
    return [codec.decode_request(f).WhichOneof("message") or "" for f in p.data_to_send()]


def joined(now: float = 0.0) -> SignalProtocol:
    p = SignalProtocol(token="t0")
    p.start(now)
    assert p.actions() == [OpenSocket("t0", resume=False)]
    p.socket_opened(now)
    p.receive_data(join_frame(), now)
    events = p.events_received()
    assert isinstance(events[0], Received)
    assert isinstance(events[1], Joined)
    assert not events[1].rejoin
    assert state_of(p) is SessionState.JOINED
    return p


def test_join_then_ping_every_interval() -> None:
    p = joined()
    assert p.participant_sid == "PA_1"
    assert p.next_deadline() == 5.0
    p.handle_timeout(5.0)
    assert sent(p) == ["ping_req"]
    assert p.next_deadline() == 10.0


def test_any_message_resets_liveness_but_sending_does_not() -> None:
    p = joined()
    for t in (5.0, 10.0):
        p.handle_timeout(t)  # pings go out...
    p.receive_data(frame(pong_resp=rtc.Pong(last_ping_timestamp=10_000, timestamp=1)), 10.05)
    assert p.rtt_ms == 50
    p.receive_data(frame(room_update=rtc.RoomUpdate()), 20.0)
    p.handle_timeout(34.0)
    assert state_of(p) is SessionState.JOINED  # 14 s after the last message: still alive
    p.data_to_send()
    p.handle_timeout(35.0)  # ...but 15 s of silence is the end, however many pings we sent
    assert state_of(p) is SessionState.RESUMING
    assert isinstance(p.events_received()[-1], ConnectionLost)
    assert p.actions() == [CloseSocket(), OpenSocket("t0", True, "PA_1", models.RR_SIGNAL_DISCONNECTED)]


def test_resume_holds_requests_then_flushes_them() -> None:
    p = joined()
    p.socket_closed(1.0)
    assert state_of(p) is SessionState.RESUMING
    p.events_received()
    p.actions()
    mute = rtc.SignalRequest(mute=rtc.MuteTrackRequest(sid="TR_1", muted=True))
    assert p.send_request(mute)
    assert p.send_request(rtc.SignalRequest(answer=rtc.SessionDescription(type="answer")))
    assert sent(p) == ["answer"]  # transport requests pass through while resuming
    p.socket_opened(1.5)
    p.receive_data(frame(reconnect=rtc.ReconnectResponse()), 1.6)
    assert isinstance(p.events_received()[-1], Resumed)
    assert state_of(p) is SessionState.JOINED
    assert sent(p) == ["mute"]


def test_refused_resume_falls_back_to_a_full_rejoin_with_the_newest_token() -> None:
    p = joined()
    p.receive_data(frame(refresh_token="t1"), 1.0)
    p.socket_closed(2.0)
    p.actions()
    p.socket_opened(2.1)
    p.receive_data(leave_frame(models.STATE_MISMATCH, rtc.LeaveRequest.RECONNECT), 2.2)
    assert state_of(p) is SessionState.CONNECTING
    assert p.actions() == [CloseSocket(), OpenSocket("t1", resume=False)]
    p.socket_opened(2.3)
    p.receive_data(join_frame(sid="PA_2"), 2.4)
    joins = [e for e in p.events_received() if isinstance(e, Joined)]
    assert joins
    assert joins[0].rejoin
    assert p.participant_sid == "PA_2"


@pytest.mark.parametrize(
    ("action", "state", "opens"),
    [
        (
            rtc.LeaveRequest.RESUME,
            SessionState.RESUMING,
            OpenSocket("t0", True, "PA_1", models.RR_SIGNAL_DISCONNECTED),
        ),
        (rtc.LeaveRequest.RECONNECT, SessionState.CONNECTING, OpenSocket("t0", resume=False)),
    ],
)
def test_server_leave_resume_and_reconnect(action: int, state: SessionState, opens: OpenSocket) -> None:
    p = joined()
    p.receive_data(leave_frame(models.SERVER_SHUTDOWN, action), 1.0)
    assert state_of(p) is state
    assert p.actions() == [CloseSocket(), opens]


def test_leave_disconnect_ends_and_duplicate_identity_means_ownership_lost() -> None:
    p = joined()
    p.receive_data(leave_frame(models.PARTICIPANT_REMOVED, rtc.LeaveRequest.DISCONNECT), 1.0)
    assert state_of(p) is SessionState.CLOSED
    assert p.events_received()[-1] == Ended("PARTICIPANT_REMOVED")
    assert p.next_deadline() is None
    q = joined()
    q.receive_data(leave_frame(models.DUPLICATE_IDENTITY, rtc.LeaveRequest.DISCONNECT), 1.0)
    end = q.events_received()[-1]
    assert isinstance(end, Ended)
    assert end.ownership_lost
    assert q.actions() == [CloseSocket()]  # and never an OpenSocket


def test_permanent_refusal_does_not_retry() -> None:
    p = SignalProtocol(token="t")
    p.start(0.0)
    p.actions()
    p.connect_failed(0.1, reason="401 invalid API key", permanent=True)
    assert state_of(p) is SessionState.CLOSED
    assert p.events_received() == [Ended("401 invalid API key")]
    assert p.next_deadline() is None


def test_transient_failures_back_off_exponentially_with_jitter_and_a_cap() -> None:
    jitter = itertools.cycle([0.0, 1.0])  # the extremes of the jitter source
    p = SignalProtocol(token="t", backoff_initial_s=1.0, backoff_max_s=8.0, random=lambda: next(jitter))
    p.start(0.0)
    now, delays = 0.0, []
    for _ in range(6):
        p.actions()
        p.connect_failed(now, reason="connection refused", permanent=False)
        assert state_of(p) is SessionState.BACKOFF
        deadline = p.next_deadline()
        assert deadline is not None
        delays.append(round(deadline - now, 3))
        now = deadline
        p.handle_timeout(now)
        assert p.actions() == [OpenSocket("t", resume=False)]
    # base 1, 2, 4, 8, 8, 8 with jitter factor in [0.5, 1)
    assert delays == [0.5, 2.0, 2.0, 8.0, 4.0, 8.0]


def test_resume_that_keeps_failing_becomes_a_full_join() -> None:
    p = joined()
    p.socket_closed(1.0)
    now = 1.0
    opens = []
    for _ in range(4):
        for action in p.actions():
            if isinstance(action, OpenSocket):
                opens.append(action.resume)
        p.socket_closed(now)  # the resume attempt's socket dies too
        deadline = p.next_deadline()
        assert deadline is not None
        now = deadline
        p.handle_timeout(now)
    assert opens[:3] == [True, True, True]
    assert opens[-1] is False


def test_room_moved_adopts_room_sid_and_token() -> None:
    p = joined()
    p.receive_data(
        frame(
            room_moved=rtc.RoomMovedResponse(
                room=models.Room(name="r2"), token="t2", participant=models.ParticipantInfo(sid="PA_9")
            )
        ),
        1.0,
    )
    assert (p.room_name, p.participant_sid, p.token) == ("r2", "PA_9", "t2")


def test_client_leave_sends_client_initiated_then_ends_when_confirmed() -> None:
    p = joined()
    p.leave(1.0)
    request = codec.decode_request(p.data_to_send()[0])
    assert request.leave.reason == models.CLIENT_INITIATED
    assert state_of(p) is SessionState.LEAVING
    p.receive_data(frame(speakers_changed=rtc.SpeakersChanged()), 1.05)  # still passed on
    p.receive_data(leave_frame(models.CLIENT_INITIATED, rtc.LeaveRequest.DISCONNECT), 1.1)
    assert state_of(p) is SessionState.CLOSED
    assert p.actions() == [CloseSocket()]
    assert p.events_received()[-1] == Ended("CLIENT_INITIATED")


@pytest.mark.parametrize("how", ["socket_closed", "deadline"])
def test_client_leave_ends_without_confirmation(how: str) -> None:
    p = joined()
    p.leave(1.0, deadline_s=2.0)
    if how == "socket_closed":
        p.socket_closed(1.5)
    else:
        assert p.next_deadline() == 3.0
        p.handle_timeout(3.0)
    assert state_of(p) is SessionState.CLOSED
    assert p.events_received()[-1] == Ended("CLIENT_INITIATED")


def test_every_message_is_passed_on_in_order() -> None:
    p = joined()
    kinds = ["speakers_changed", "update", "connection_quality"]
    p.receive_data(frame(speakers_changed=rtc.SpeakersChanged()), 1.0)
    p.receive_data(frame(update=rtc.ParticipantUpdate()), 1.0)
    p.receive_data(frame(connection_quality=rtc.ConnectionQualityUpdate()), 1.0)
    got = [e.response.WhichOneof("message") for e in p.events_received() if isinstance(e, Received)]
    assert got == kinds


@pytest.mark.parametrize(("state", "trigger"), list(itertools.product(SessionState, Trigger)))
def test_transition_table_is_the_only_way(state: SessionState, trigger: Trigger) -> None:
    p = SignalProtocol(token="t", state=state)
    target = TRANSITIONS.get((state, trigger))
    if target is None:
        with pytest.raises(InvalidState):
            p._go(trigger)
    else:
        p._go(trigger)
        assert state_of(p) is target


def test_every_state_is_reachable_from_idle() -> None:
    reached = {SessionState.IDLE}
    frontier = [SessionState.IDLE]
    while frontier:
        state = frontier.pop()
        for (source, _), target in TRANSITIONS.items():
            if source is state and target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(SessionState)


def test_leave_after_the_end_is_a_no_op() -> None:
    p = joined()
    p.receive_data(leave_frame(models.PARTICIPANT_REMOVED, rtc.LeaveRequest.DISCONNECT), 1.0)
    p.events_received()
    p.actions()
    p.leave(2.0)
    assert state_of(p) is SessionState.CLOSED
    assert p.events_received() == []
    assert p.data_to_send() == []
