"""A real Bridge on the simulator with an in-memory bus, for media tests; and UDP port helpers."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import Message

from bridge._proto import events_pb2
from bridge.app import Bridge
from bridge.bus.memory import InMemoryBus
from bridge.bus.memory_commands import MemoryCommandSource
from bridge.config import MediaSettings, load_settings
from bridge.events.cloudevent import CloudEvent
from bridge.rooms.session import RoomSession
from bridge.sim.scenario import Scenario
from bridge.sim.server import SimServer
from support.bridge import bridge_environ
from support.commands import memory_command_result
from support.simulator import running_sim
from support.waiting import eventually


@dataclass
class MediaBridge:
    """What :func:`media_bridge` yields."""

    room: str
    server: SimServer
    scenario: Scenario
    bridge: Bridge
    source: MemoryCommandSource
    bus: InMemoryBus

    @property
    def session(self) -> RoomSession:
        return self.bridge.supervisor.sessions[self.room]

    async def command(self, name: str, message: Message, cid: str) -> events_pb2.CommandResult:
        result: events_pb2.CommandResult = await memory_command_result(
            self.source, self.bus, self.room, name, message, cid
        )
        return result

    def events(self, etype: str) -> list[CloudEvent]:
        return [e for e in self.bus.events if e.type == etype]


@contextlib.asynccontextmanager
async def media_bridge(
    room: str, media: MediaSettings, *, within: float = 20.0, can_publish: bool = False
) -> AsyncIterator[MediaBridge]:
    """A simulator with ``alice`` in ``room`` and a bridge in it whose subscriber PC is connected
    (``can_publish``: its token lets it publish media, for ``bridge.publish_track``)."""
    async with running_sim(ice_servers=()) as (server, scenario):
        scenario.join(room, "alice")
        bus = InMemoryBus()
        source = MemoryCommandSource()
        environ = bridge_environ(server, room)
        if can_publish:
            environ["BRIDGE_LIVEKIT__CAN_PUBLISH"] = "true"
        settings = load_settings(None, environ).model_copy(update={"media": media})
        bridge = Bridge(settings, publishers=[bus], command_sources=[source])
        await bridge.start()
        try:
            setup = MediaBridge(room, server, scenario, bridge, source, bus)
            await eventually(
                lambda: setup.session.media.connected, within=within, what="the bridge's subscriber PC"
            )
            yield setup
        finally:
            await bridge.aclose()


def free_udp_port_pair(host: str = "127.0.0.1") -> int:
    """An even UDP port that is free together with the next one (RTP, and RTCP on port + 1, which
    libavformat binds too when it opens an SDP)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if port % 2 or port >= 65535:
            continue
        with contextlib.ExitStack() as stack:
            try:
                for p in (port, port + 1):
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                    sock.bind((host, p))
            except OSError:
                continue
        return port
    raise RuntimeError("no free UDP port pair")


def udp_port_bound(port: int, proc: Path = Path("/proc/net/udp")) -> bool:
    """Whether some socket of this host listens on UDP ``port`` (IPv4), read from ``/proc/net/udp``.

    Reading the kernel's table, rather than trying to bind the port, cannot take it from the process
    about to bind it.
    """
    suffix = f":{port:04X}"
    for line in proc.read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 1 and fields[1].endswith(suffix):
            return True
    return False
