"""Process-wide tuning so one process can hold ~1,000 mostly idle rooms (research ``pc-scaling.md``).

:func:`apply_scaling_knobs` is called once at start-up (``run_service``, and the simulator). It is
idempotent, and every knob is independent and guarded: when a private name it relies on is missing
(an aiortc/aioice/CPython upgrade), it logs one warning and skips that knob; it never raises.

Knobs, numbered as in the research (its figures are for N=1000 on a 2-vCPU VM):

1. ``consent_tick``: aioice runs an RFC 7675 consent check per PeerConnection every 5 s +/-20%, each
   with its own timer, so 1,000 PCs wake the loop ~200 times a second (6.7-7.2% of a core). The
   replacement of the private ``aioice.ice.Connection.query_consent`` keeps the interval (still
   ``CONSENT_INTERVAL`` * 0.8..1.2, read at call time), the jitter, ``CONSENT_FAILURES`` and the
   close-on-expiry, but lands every wake-up on a whole second of loop time, so the checks of all PCs
   share ~1 wake-up per second (1.95%). Written against aioice 0.13; other versions are skipped until
   re-verified (:data:`CONSENT_VERIFIED_AIOICE`).
3. ``tls_read_buffer``: CPython allocates ``asyncio.sslproto.SSLProtocol.max_size`` (256 KiB) as the
   read buffer of every TLS connection; TLS records are <= 16 KiB, so 32 KiB is plenty
   (wss: 349 -> 126 KB per connection).
4. ``shared_dtls_certificate``: aiortc generates a key + certificate per PeerConnection and an
   ``SSL.Context`` per DTLS transport. One certificate per process (regenerated after
   :data:`CERTIFICATE_MAX_AGE_S`, far from aiortc's 30-day validity) and one context per certificate,
   with ``SSL.MODE_RELEASE_BUFFERS`` so idle connections drop their record buffers (155 -> 115 KB per
   PC). Sharing is safe: the fingerprint travels per session over the authenticated signaling channel.
6. ``nofile_limit``: each room holds >= 2 fds (UDP + TCP); containers often default to a soft limit of
   1024. The soft ``RLIMIT_NOFILE`` is raised towards the hard limit (at least :data:`MIN_NOFILE` when
   the hard limit allows).

7. ``udp_receive_buffer``: all of a PeerConnection's media and data arrive on one bundled UDP socket
   with the kernel's default receive buffer (``net.core.rmem_default``, 208 KiB here): 15-20 ms of a
   few hundred audio tracks, or one video keyframe burst, while the event loop is busy elsewhere. Beyond
   it the kernel drops packets (measured: loss began at 250 relayed opus tracks before the CPU ran
   out). Each ICE socket asks for :data:`UDP_RECEIVE_BUFFER_BYTES`; the kernel caps it at
   ``net.core.rmem_max``, and the memory is used only while packets wait.

``BRIDGE_SCALING_KNOBS=0`` (also ``false``/``no``/``off``) disables all of them, for comparisons.
:func:`restore_scaling_knobs` undoes the patches (tests).
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

log = logging.getLogger(__name__)

__all__ = [
    "CERTIFICATE_MAX_AGE_S",
    "CONSENT_TICK_S",
    "ENV_VAR",
    "MIN_NOFILE",
    "TLS_READ_BUFFER_BYTES",
    "UDP_RECEIVE_BUFFER_BYTES",
    "apply_scaling_knobs",
    "consent_wakeup",
    "restore_scaling_knobs",
]

ENV_VAR: Final = "BRIDGE_SCALING_KNOBS"
CONSENT_TICK_S: float = 1.0  # not Final: tests shrink it to exercise the loop quickly
CONSENT_VERIFIED_AIOICE: Final = ("0.13.",)  # query_consent re-checked against these versions
TLS_READ_BUFFER_BYTES: Final = 32 * 1024
CERTIFICATE_MAX_AGE_S: Final = 24 * 3600.0
UDP_RECEIVE_BUFFER_BYTES: Final = 1024 * 1024
MIN_NOFILE: Final = 8192
_NOFILE_IF_UNLIMITED: Final = 65536  # setrlimit refuses RLIM_INFINITY for NOFILE (nr_open caps it)
_OFF: Final = frozenset({"0", "false", "no", "off"})

# Knob name -> "applied" or why it was skipped. Applied knobs are not applied again.
_status: dict[str, str] = {}
# (owner, attribute, original value as found in owner.__dict__) to undo, in application order.
_saved: list[tuple[Any, str, Any]] = []
_saved_nofile: list[tuple[int, int]] = []  # the (soft, hard) found before raising it


class _Skip(Exception):
    """A knob cannot be applied here; the message says why."""


def apply_scaling_knobs(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Apply every knob not applied yet; returns knob name -> "applied" / "skipped: <why>" / "disabled"."""
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR, "1").strip().lower() in _OFF:
        if not _status:
            log.info("scaling knobs disabled by %s", ENV_VAR)
        return {name: _status.get(name, "disabled") for name, _ in _KNOBS}
    for name, knob in _KNOBS:
        if _status.get(name) == "applied":
            continue
        try:
            knob()
        except Exception as exc:  # noqa: BLE001 (a tuning knob must never stop the service)
            why = str(exc) if isinstance(exc, _Skip) else f"{type(exc).__name__}: {exc}"
            if _status.get(name) != f"skipped: {why}":  # one warning per cause, however often called
                log.warning("scaling knob %s skipped: %s", name, why)
            _status[name] = f"skipped: {why}"
        else:
            _status[name] = "applied"
    log.info("scaling knobs: %s", ", ".join(f"{k}={v}" for k, v in _status.items()))
    return dict(_status)


def restore_scaling_knobs() -> None:
    """Undo every patch (and the fd limit), so a test leaves the process as it found it."""
    for owner, name, original in reversed(_saved):
        setattr(owner, name, original)
    _saved.clear()
    if _saved_nofile:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, _saved_nofile.pop())
    _certificates.clear()
    _status.clear()


def _patch(owner: Any, name: str, value: Any) -> None:
    # owner.__dict__ keeps the classmethod wrapper (getattr would unwrap it), so restore is exact.
    _saved.append((owner, name, owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)))
    setattr(owner, name, value)


def _require(owner: Any, *names: str) -> None:
    for name in names:
        if not hasattr(owner, name):
            raise _Skip(
                f"{getattr(owner, '__qualname__', getattr(owner, '__name__', owner))}.{name} is missing"
            )


# ------------------------------------------------------------------------- knob 1: consent on a tick


def consent_wakeup(now: float, *, interval: float, jitter: float, tick: float = 1.0) -> float:
    """The loop time of the next consent check: aioice's ``interval * (0.8 + 0.4 * jitter)`` from
    ``now`` (``jitter`` in [0, 1)), rounded to the nearest multiple of ``tick``, always after ``now``.

    Rounding moves a check by at most ``tick / 2``, so with 5 s and a 1 s tick checks stay 3.5-6.5 s
    apart: far inside LiveKit's 10 s disconnect timeout.
    """
    target = round((now + interval * (0.8 + 0.4 * jitter)) / tick) * tick
    while target <= now:
        target += tick
    return float(target)


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    # call_at on the exact grid time (asyncio.sleep adds the few microseconds spent since `now`),
    # so every PC's check falls into the same loop iteration.
    waiter: asyncio.Future[None] = loop.create_future()
    handle = loop.call_at(when, _wake, waiter)
    try:
        await waiter
    finally:
        handle.cancel()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _query_consent_on_tick(self: Any) -> None:
    """aioice 0.13 ``Connection.query_consent`` with only the sleep changed (see knob 1)."""
    import aioice.ice
    import aioice.stun

    # Consent checks only start once connect() has the remote password (as in aioice).
    assert self.remote_password is not None
    loop = asyncio.get_running_loop()
    failures = 0
    while True:
        # Module globals are read each round, like aioice does, so their overrides still apply.
        jitter = random.random()  # noqa: S311 (timing jitter, not a secret)
        when = consent_wakeup(
            loop.time(), interval=aioice.ice.CONSENT_INTERVAL, jitter=jitter, tick=CONSENT_TICK_S
        )
        await _sleep_until(loop, when)

        for pair in self._nominated.values():
            request = self.build_request(pair, nominate=False)
            try:
                await pair.protocol.request(
                    request,
                    pair.remote_addr,
                    integrity_key=self.remote_password.encode("utf8"),
                    retransmissions=0,
                )
                failures = 0
            except aioice.stun.TransactionError:
                failures += 1
            if failures >= aioice.ice.CONSENT_FAILURES:
                aioice.ice.logger.info("%s Consent to send expired", self)
                # Cleared first so close() does not cancel (and await) this very task.
                self._query_consent_task = None
                await self.close()
                return


def _consent_tick() -> None:
    try:
        import aioice
        import aioice.ice
        import aioice.stun
    except ImportError as exc:
        raise _Skip(f"aioice not importable: {exc}") from None
    version = str(getattr(aioice, "__version__", "?"))
    if not version.startswith(CONSENT_VERIFIED_AIOICE):
        raise _Skip(f"aioice {version}: query_consent not verified for this version (re-check it)")
    _require(aioice.ice, "Connection", "CONSENT_INTERVAL", "CONSENT_FAILURES", "logger")
    _require(aioice.ice.Connection, "query_consent", "build_request", "close")
    _require(aioice.stun, "TransactionError")
    if aioice.ice.Connection.query_consent is not _query_consent_on_tick:
        _patch(aioice.ice.Connection, "query_consent", _query_consent_on_tick)


# ------------------------------------------------------------------------- knob 3: TLS read buffer


def _tls_read_buffer() -> None:
    protocol = asyncio.sslproto.SSLProtocol
    _require(protocol, "max_size")
    if protocol.max_size > TLS_READ_BUFFER_BYTES:
        _patch(protocol, "max_size", TLS_READ_BUFFER_BYTES)


# ------------------------------------------------------------------------- knob 4: shared DTLS cert


class _CertificateCache:
    """One ``RTCCertificate`` per process, replaced once it is ``max_age_s`` old (monotonic clock)."""

    def __init__(self, *, max_age_s: float = CERTIFICATE_MAX_AGE_S, clock: Callable[[], float]) -> None:
        self.max_age_s = max_age_s
        self.clock = clock
        self._generate: Callable[[], Any] | None = None
        self._cert: Any | None = None
        self._born = 0.0

    def install(self, generate: Callable[[], Any]) -> None:
        self._generate = generate
        self.clear()

    def clear(self) -> None:
        self._cert = None

    def get(self) -> Any:
        assert self._generate is not None
        now = self.clock()
        if self._cert is None or now - self._born >= self.max_age_s:
            # PCs created earlier keep the old certificate; only new PCs get the fresh one.
            self._cert, self._born = self._generate(), now
        return self._cert


_certificates = _CertificateCache(clock=time.monotonic)


def _shared_dtls_certificate() -> None:
    try:
        from aiortc.rtcdtlstransport import RTCCertificate
        from OpenSSL import SSL
    except ImportError as exc:
        raise _Skip(f"aiortc/pyOpenSSL not importable: {exc}") from None
    _require(RTCCertificate, "generateCertificate", "_create_ssl_context")
    _require(SSL, "MODE_RELEASE_BUFFERS")
    _require(SSL.Context, "set_mode")
    generate = RTCCertificate.__dict__["generateCertificate"]
    create_context = RTCCertificate.__dict__["_create_ssl_context"]
    if not isinstance(generate, classmethod) or not callable(create_context):
        raise _Skip("RTCCertificate.generateCertificate / _create_ssl_context changed shape")
    if getattr(create_context, "_bridge_shared", False):
        return  # already ours
    original_generate: Callable[[type[Any]], Any] = generate.__func__
    _certificates.install(lambda: original_generate(RTCCertificate))

    def generate_certificate(cls: type[Any]) -> Any:
        # Subclasses (somebody else's certificate type) keep aiortc's behaviour.
        return _certificates.get() if cls is RTCCertificate else original_generate(cls)

    def create_ssl_context(self: Any, srtp_profiles: list[Any]) -> Any:
        # One SSL.Context per certificate and SRTP profile list, kept on the certificate so it goes
        # away with it when the certificate is regenerated.
        key = tuple(getattr(p, "openssl_profile", p) for p in srtp_profiles)
        contexts: dict[tuple[Any, ...], Any] = self.__dict__.setdefault("_bridge_ssl_contexts", {})
        ctx = contexts.get(key)
        if ctx is None:
            ctx = create_context(self, srtp_profiles)
            ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)  # idle connections drop their record buffers
            contexts[key] = ctx
        return ctx

    create_ssl_context._bridge_shared = True  # type: ignore[attr-defined]
    _patch(RTCCertificate, "generateCertificate", classmethod(generate_certificate))
    _patch(RTCCertificate, "_create_ssl_context", create_ssl_context)


# ------------------------------------------------------------------------- knob 6: fd limit


def _nofile_limit() -> None:
    try:
        import resource
    except ImportError:
        raise _Skip("no resource module on this platform") from None
    _require(resource, "RLIMIT_NOFILE", "getrlimit", "setrlimit")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _NOFILE_IF_UNLIMITED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if not _saved_nofile:
            _saved_nofile.append((soft, hard))
        log.info("RLIMIT_NOFILE soft limit raised %d -> %d", soft, target)
    if target < MIN_NOFILE:
        # Applied as far as allowed; say that 1,000 rooms may run out of fds.
        log.warning(
            "RLIMIT_NOFILE hard limit %d is below %d: ~1,000 rooms need ~2,000+ fds", hard, MIN_NOFILE
        )


# ------------------------------------------------------------------------- knob 7: UDP receive buffer


def _udp_receive_buffer() -> None:
    import socket

    import aioice.ice

    _require(aioice.ice.StunProtocol, "connection_made")
    original = aioice.ice.StunProtocol.connection_made

    def connection_made(self: Any, transport: Any) -> None:
        original(self, transport)
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < UDP_RECEIVE_BUFFER_BYTES:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER_BYTES)
        except OSError:  # a socket without the option: keep the default, never fail the connection
            pass

    _patch(aioice.ice.StunProtocol, "connection_made", connection_made)


_KNOBS: Final[tuple[tuple[str, Callable[[], None]], ...]] = (
    ("consent_tick", _consent_tick),
    ("tls_read_buffer", _tls_read_buffer),
    ("shared_dtls_certificate", _shared_dtls_certificate),
    ("nofile_limit", _nofile_limit),
    ("udp_receive_buffer", _udp_receive_buffer),
)
