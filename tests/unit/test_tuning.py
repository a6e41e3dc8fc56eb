"""The scaling knobs of :mod:`bridge.media.tuning`: each takes effect, and each degrades to a warning."""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import logging
import math
import resource
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aioice
import aioice.ice
import aioice.stun
import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import SRTP_PROFILES, RTCCertificate
from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL

from bridge.media import tuning
from bridge.media.tuning import apply_scaling_knobs, consent_wakeup, restore_scaling_knobs

ORIGINAL_QUERY_CONSENT = aioice.ice.Connection.query_consent
ORIGINAL_GENERATE = RTCCertificate.__dict__["generateCertificate"]


@pytest.fixture(autouse=True)
def _restored() -> Iterator[None]:
    """Every test starts and ends with stock aiortc/aioice/asyncio (the knobs are process-wide)."""
    restore_scaling_knobs()
    yield
    restore_scaling_knobs()
    assert aioice.ice.Connection.query_consent is ORIGINAL_QUERY_CONSENT
    assert RTCCertificate.__dict__["generateCertificate"] is ORIGINAL_GENERATE


def test_all_knobs_apply_and_are_idempotent(caplog: pytest.LogCaptureFixture) -> None:
    first = apply_scaling_knobs({})
    assert first == {
        "consent_tick": "applied",
        "tls_read_buffer": "applied",
        "shared_dtls_certificate": "applied",
        "nofile_limit": "applied",
        "udp_receive_buffer": "applied",
    }
    patched = aioice.ice.Connection.query_consent
    generate = RTCCertificate.generateCertificate()
    with caplog.at_level(logging.WARNING, logger="bridge.media.tuning"):
        assert apply_scaling_knobs({}) == first
    assert aioice.ice.Connection.query_consent is patched
    assert RTCCertificate.generateCertificate() is generate
    assert not caplog.records
    # Applied once, so one restore brings back the originals (checked by the fixture).
    assert len(tuning._saved) == 5


def test_env_var_disables_every_knob() -> None:
    assert set(apply_scaling_knobs({"BRIDGE_SCALING_KNOBS": "0"}).values()) == {"disabled"}
    assert aioice.ice.Connection.query_consent is ORIGINAL_QUERY_CONSENT
    assert asyncio.sslproto.SSLProtocol.max_size == 256 * 1024


# ------------------------------------------------------------------------------- knob 1: consent


@given(
    now=st.floats(min_value=0, max_value=1e7, allow_nan=False),
    jitter=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_consent_wakeups_land_on_whole_seconds_within_the_interval(now: float, jitter: float) -> None:
    when = consent_wakeup(now, interval=5, jitter=jitter)
    assert when == math.floor(when)  # a whole second of loop time: every PC shares that wake-up
    assert when > now
    # aioice's 5 s * 0.8..1.2, moved by at most half a tick.
    assert 4.0 - 0.5 <= when - now <= 6.0 + 0.5


def test_consent_wakeup_follows_the_jitter_and_tick() -> None:
    assert consent_wakeup(100.2, interval=5, jitter=0.0) == 104  # 104.2 -> 104
    assert consent_wakeup(100.2, interval=5, jitter=0.999) == 106  # 106.19 -> 106
    assert consent_wakeup(100.6, interval=5, jitter=0.5) == 106  # 105.6 -> 106
    assert consent_wakeup(10.0, interval=0.0, jitter=0.0) == 11  # never "now" itself
    assert consent_wakeup(10.03, interval=0.05, jitter=0.5, tick=0.01) == pytest.approx(10.08)


class _FakePair:
    def __init__(self, outcomes: list[bool]) -> None:
        self.outcomes = outcomes
        self.remote_addr = ("127.0.0.1", 9)
        self.protocol = self
        self.requests: list[tuple[float, dict[str, Any]]] = []

    async def request(self, request: object, addr: tuple[str, int], **kwargs: Any) -> None:
        self.requests.append((asyncio.get_running_loop().time(), kwargs))
        if not (self.outcomes.pop(0) if self.outcomes else False):
            raise aioice.stun.TransactionError()


class _FakeConnection:
    """The slice of ``aioice.ice.Connection`` that ``query_consent`` touches."""

    def __init__(self, pair: _FakePair) -> None:
        self.remote_password = "secret"
        self._nominated = {1: pair}
        self._query_consent_task: asyncio.Task[None] | None = None
        self.closed_with_task: list[object] = []

    def build_request(self, pair: _FakePair, nominate: bool) -> object:
        assert nominate is False
        return object()

    async def close(self) -> None:
        self.closed_with_task.append(self._query_consent_task)


async def test_consent_loop_keeps_aioice_failures_and_close(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fast grid and interval so the whole loop runs in well under a second.
    monkeypatch.setattr(tuning, "CONSENT_TICK_S", 0.05)
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.1)
    monkeypatch.setattr(aioice.ice, "CONSENT_FAILURES", 3)
    # 2 failures, a success (resets the count), then 3 failures: closed after request 6, not 3.
    pair = _FakePair([False, False, True, False, False, False, True])
    connection = _FakeConnection(pair)
    apply_scaling_knobs({})
    query_consent: Any = aioice.ice.Connection.query_consent
    assert query_consent is tuning._query_consent_on_tick

    await asyncio.wait_for(query_consent(connection), timeout=5)

    assert len(pair.requests) == 6
    assert connection.closed_with_task == [None]  # cleared first, so close() does not cancel itself
    for at, kwargs in pair.requests:
        assert kwargs == {"integrity_key": b"secret", "retransmissions": 0}
        # Woke on the 0.05 s grid (within 15 ms), not at an arbitrary "now + delay".
        assert abs(at / 0.05 - round(at / 0.05)) < 0.3


async def test_consent_loop_sleeps_on_the_loop_grid() -> None:
    # The real wait primitive: wakes at the exact grid time it was given, not "now + delay".
    loop = asyncio.get_running_loop()
    when = consent_wakeup(loop.time(), interval=0.05, jitter=0.5, tick=0.02)
    await tuning._sleep_until(loop, when)
    assert loop.time() >= when
    assert loop.time() - when < 0.05


# ------------------------------------------------------------------------------- knob 3: TLS buffer


def test_tls_read_buffer_is_32_kib() -> None:
    apply_scaling_knobs({})
    assert asyncio.sslproto.SSLProtocol.max_size == 32 * 1024
    restore_scaling_knobs()
    assert asyncio.sslproto.SSLProtocol.max_size == 256 * 1024


# ------------------------------------------------------------------------------- knob 4: certificate


def _certificate(pc: Any) -> Any:
    # aiortc keeps the PC's certificates private (RTCConfiguration has no certificates field).
    return pc._RTCPeerConnection__certificates[0]


async def test_peer_connections_share_one_certificate_and_ssl_context() -> None:
    apply_scaling_knobs({})
    first, second = RTCPeerConnection(), RTCPeerConnection()
    try:
        cert_a = _certificate(first)
        cert_b = _certificate(second)
        assert cert_a is cert_b
        ctx = cert_a._create_ssl_context(srtp_profiles=SRTP_PROFILES)
        assert cert_a._create_ssl_context(srtp_profiles=SRTP_PROFILES) is ctx
        assert ctx.set_mode(0) & SSL.MODE_RELEASE_BUFFERS  # set_mode(0) reports the current mode
    finally:
        await first.close()
        await second.close()


async def test_stock_peer_connections_have_their_own_certificate() -> None:
    first, second = RTCPeerConnection(), RTCPeerConnection()
    try:
        assert _certificate(first) is not _certificate(second)
    finally:
        await first.close()
        await second.close()


def test_shared_certificate_is_regenerated_after_its_max_age(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    apply_scaling_knobs({})
    monkeypatch.setattr(tuning._certificates, "clock", lambda: now[0])
    tuning._certificates.clear()
    first = RTCCertificate.generateCertificate()
    now[0] += tuning.CERTIFICATE_MAX_AGE_S - 1
    assert RTCCertificate.generateCertificate() is first
    now[0] += 1
    fresh = RTCCertificate.generateCertificate()
    assert fresh is not first
    assert RTCCertificate.generateCertificate() is fresh
    # Regenerated daily, far from the 30-day validity of aiortc's certificates.
    assert tuning.CERTIFICATE_MAX_AGE_S <= 7 * 24 * 3600


def test_certificate_subclasses_are_not_shared() -> None:
    class Custom(RTCCertificate):
        pass

    apply_scaling_knobs({})
    assert Custom.generateCertificate() is not Custom.generateCertificate()
    assert isinstance(Custom.generateCertificate(), Custom)


# ------------------------------------------------------------------------------- knob 6: fd limit


def test_fd_soft_limit_is_raised_towards_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(1024, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        apply_scaling_knobs({})
        new_soft, new_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert new_hard == hard
        expected = 65536 if hard == resource.RLIM_INFINITY else hard
        assert new_soft == expected
        if hard == resource.RLIM_INFINITY or hard >= tuning.MIN_NOFILE:
            assert new_soft >= tuning.MIN_NOFILE
        restore_scaling_knobs()
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (lowered, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ------------------------------------------------------------------------------- guards


@pytest.mark.parametrize(
    ("owner", "name", "knob"),
    [
        (aioice.ice.Connection, "query_consent", "consent_tick"),
        (aioice.ice, "CONSENT_FAILURES", "consent_tick"),
        (asyncio.sslproto.SSLProtocol, "max_size", "tls_read_buffer"),
        (RTCCertificate, "_create_ssl_context", "shared_dtls_certificate"),
    ],
)
def test_a_missing_private_name_skips_that_knob_with_one_warning(
    owner: object, name: str, knob: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delattr(owner, name)
    with caplog.at_level(logging.WARNING, logger="bridge.media.tuning"):
        status = apply_scaling_knobs({})
        apply_scaling_knobs({})  # a second call does not warn again
    assert status[knob].startswith("skipped:")
    assert name in status[knob]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"scaling knob {knob} skipped: {status[knob].removeprefix('skipped: ')}"
    ]
    assert all(v == "applied" for k, v in status.items() if k != knob)  # the others still apply


def test_an_unverified_aioice_version_skips_the_consent_knob(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(aioice, "__version__", "0.14.0")
    with caplog.at_level(logging.WARNING, logger="bridge.media.tuning"):
        status = apply_scaling_knobs({})
    assert status["consent_tick"].startswith("skipped: aioice 0.14.0")
    assert aioice.ice.Connection.query_consent is ORIGINAL_QUERY_CONSENT
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_an_error_inside_a_knob_is_a_warning_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(tuning, "_KNOBS", (("broken", broken), *tuning._KNOBS[1:]))
    with caplog.at_level(logging.WARNING, logger="bridge.media.tuning"):
        status = apply_scaling_knobs({})
    assert status["broken"] == "skipped: RuntimeError: boom"
    assert status["tls_read_buffer"] == "applied"


# ------------------------------------------------------------------------- knob 7: UDP receive buffer


async def _ice_socket_buffer() -> int:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: aioice.ice.StunProtocol(None),  # type: ignore[arg-type]
        local_addr=("127.0.0.1", 0),
    )
    try:
        return int(transport.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    finally:
        transport.close()


def _rmem_max() -> int:
    limit = Path("/proc/sys/net/core/rmem_max")
    return int(limit.read_text()) if limit.exists() else 0


async def test_ice_sockets_get_a_larger_receive_buffer() -> None:
    stock = await _ice_socket_buffer()
    apply_scaling_knobs({})
    raised = await _ice_socket_buffer()
    rmem_max = _rmem_max()
    if rmem_max < tuning.UDP_RECEIVE_BUFFER_BYTES:
        pytest.skip(f"net.core.rmem_max is {rmem_max}: the kernel caps the buffer below the knob's size")
    assert stock < tuning.UDP_RECEIVE_BUFFER_BYTES <= raised  # Linux reports twice what was asked
    restore_scaling_knobs()
    assert await _ice_socket_buffer() == stock
