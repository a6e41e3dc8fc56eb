"""``livekit-bridge demo``: one command, no setup, the whole path from LiveKit to the bus and back out.

What runs, all on 127.0.0.1 and all stopped at the end:

1. the LiveKit-protocol simulator, in-process, with an API secret made for this run;
2. an embedded ``nats-server`` (JetStream on, store in a temporary directory; stopped by PID), or, when
   the binary is not installed, the in-memory bus (said in one line); with ``--kafka`` also ``tansu``;
3. the real bridge (:class:`bridge.app.Bridge`), settings built in code, owning the scripted room;
4. a real subscriber on the bus (NATS; Kafka with ``--kafka``) printing every CloudEvent as it arrives,
   with the same one-line format as ``livekit-bridge tail``;

while the simulator plays ``bridge/sim/scenarios/demo.yaml``: joins, tracks, speakers, quality, metadata,
data messages (``io.livekit.data.*``, over the bridge's data channel) and a room metadata change. At the
end: how many events of each type, exit 0 when every event the bridge emitted was seen on the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, Final, TextIO

import yaml
from livekit.protocol import models
from livekit.protocol.rtc import UpdateParticipantMetadata

from bridge._proto.events_pb2 import CommandResult
from bridge.app import Bridge
from bridge.bus.bindings import room_token
from bridge.bus.memory import InMemoryBus
from bridge.bus.memory_commands import MemoryCommandSource
from bridge.config import Settings
from bridge.demo_services import (
    EmbeddedNats,
    EmbeddedTansu,
    ServiceNotFound,
    ServiceProcess,
    ServiceStartError,
    find_nats_server,
    find_tansu,
)
from bridge.errors import BridgeError
from bridge.send import decode_result, envelope, send_kafka, send_nats
from bridge.sim.scenario import Scenario
from bridge.sim.server import SimConfig, SimServer
from bridge.tail import KafkaSource, NatsSource, Source, format_line, output_width, pump, short_type

__all__ = ["run_demo"]

API_KEY: Final = "demo"
IDENTITY: Final = "livekit-bridge"
PREFIX: Final = "livekit"
TOPIC: Final = "livekit.events"
COMMANDS_TOPIC: Final = "livekit.commands"
STATE_TOPIC: Final = "livekit.commands.state"
DLQ_TOPIC: Final = "livekit.commands.dlq"
JOIN_DEADLINE_S: Final = 10.0
SCENARIO_DEADLINE_S: Final = 20.0
DRAIN_DEADLINE_S: Final = 5.0
_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


class _MemorySource:
    """The in-memory bus as a tail source (the fallback when nats-server is not installed)."""

    description = "the in-memory bus"

    def __init__(self, bus: InMemoryBus) -> None:
        self._sub = bus.subscribe()

    async def start(self) -> None:
        """Subscribed in the constructor already."""

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        async for event in self._sub:
            yield {**event.attributes(), "data": event.data}

    async def aclose(self) -> None:
        self._sub.close()


def _bundled_scenario() -> Path:
    return Path(str(resources.files("bridge.sim") / "scenarios" / "demo.yaml"))


def _scenario_room(path: Path) -> str:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    room = doc.get("room") if isinstance(doc, dict) else None
    return str(room) if room else "demo"


async def _start_service(
    make: Callable[[], ServiceProcess], out: TextIO, what: str, fallback: str
) -> ServiceProcess | None:
    """Start a broker, or say in one line why not and what the demo does instead."""
    try:
        service = make()
    except ServiceNotFound as exc:
        print(f"{exc}; {fallback}", file=out, flush=True)
        return None
    try:
        return await asyncio.to_thread(service.start)
    except ServiceStartError as exc:
        print(f"{what} did not start ({exc}); {fallback}", file=out, flush=True)
        return None


async def _create_topic(bootstrap: str, topic: str) -> None:
    """One partition is plenty for one room, and the printing consumer can assign it at once."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


def _bridge_active(server: SimServer, room: str) -> bool:
    r = server.rooms.get(room)
    p = r.participants.get(IDENTITY) if r else None
    return p is not None and p.info.state == models.ParticipantInfo.ACTIVE


async def _until(condition: Callable[[], bool], deadline_s: float) -> bool:
    """Poll ``condition`` until true (True) or the deadline (False)."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)  # poll interval inside a deadline loop
    return True


CommandSender = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


async def _command_round_trip(bridge: Bridge, room: str, send: CommandSender, out: TextIO) -> bool:
    """Send one command over the bus (as a user would) and print its result; False if none came."""
    if not await _until(lambda: all(s.ready for s in bridge.command_sources), JOIN_DEADLINE_S):
        print("the bridge is not consuming commands; no command round trip", file=out)
        return False
    message = UpdateParticipantMetadata(metadata='{"status": "recording"}')
    event = envelope(room, "io.livekit.command.update_metadata.v1", f"demo-{secrets.token_hex(4)}", message)
    try:
        doc = await send(room, event)
    except BridgeError as exc:
        print(f"command      no result: {exc}", file=out)
        return False
    result = decode_result(doc)
    status = CommandResult.Status.Name(result.status).removeprefix("STATUS_").lower()
    print(f"command      update_metadata -> {status} (result event id {doc.get('id')})", file=out, flush=True)
    return result.status == CommandResult.STATUS_APPLIED


async def _play(
    server: SimServer, bridge: Bridge, room: str, path: Path, out: TextIO, *, send: CommandSender
) -> bool:
    """Start the bridge, wait until it owns the room, play the script, send a command; False if the
    bridge never joined or the command got no result."""
    await bridge.start()
    session = bridge.supervisor.sessions[room]
    if not await _until(lambda: _bridge_active(server, room), JOIN_DEADLINE_S):
        print(f"the bridge did not join {room!r} within {JOIN_DEADLINE_S:g} s", file=out)
        return False
    # Data messages travel over the bridge's data channel: let it connect before the script runs.
    await session.media.wait_connected(JOIN_DEADLINE_S)
    async with asyncio.timeout(SCENARIO_DEADLINE_S):
        await Scenario(server).run_file(path)
    return await _command_round_trip(bridge, room, send, out)


async def run_demo(
    out: TextIO,
    *,
    scenario_file: Path | None = None,
    kafka: bool = False,
    use_nats: bool = True,
) -> int:
    """Run the demo, printing to ``out``; 0 when every event the bridge emitted was printed."""
    began = time.monotonic()
    path = scenario_file or _bundled_scenario()
    room = _scenario_room(path)
    # Made per run and never printed: the simulator and the bridge are the only ones who know it.
    api_secret = secrets.token_urlsafe(32)
    services: list[ServiceProcess] = []
    interrupted = _cancel_on_signals()
    try:
        nats_proc = None
        if use_nats:
            nats_proc = await _start_service(
                lambda: EmbeddedNats(find_nats_server()),
                out,
                "nats-server",
                "falling back to the in-memory bus",
            )
        if nats_proc is not None:
            services.append(nats_proc)
        tansu = None
        if kafka:
            tansu = await _start_service(
                lambda: EmbeddedTansu(find_tansu()), out, "tansu", "continuing without Kafka"
            )
        if tansu is not None:
            services.append(tansu)
        return await _run(
            out, path=path, room=room, api_secret=api_secret, nats_proc=nats_proc, tansu=tansu, began=began
        )
    except asyncio.CancelledError:
        if not interrupted:
            raise
        print("demo interrupted; stopping what it started", file=out, flush=True)
        return 130
    finally:
        _restore_signals()
        for service in reversed(services):
            service.stop()  # by PID, whatever happened above


def _cancel_on_signals() -> list[int]:
    """Ctrl-C and SIGTERM cancel the demo so the finally blocks stop the brokers (SIGTERM's default
    would kill the process and orphan them). Returns the list the received signal is appended to."""
    received: list[int] = []
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()

    def cancel(sig: int) -> None:
        received.append(sig)
        if task is not None:
            task.cancel()

    for sig in _SIGNALS:
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread
            loop.add_signal_handler(sig, cancel, sig)
    return received


def _restore_signals() -> None:
    loop = asyncio.get_running_loop()
    for sig in _SIGNALS:
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.remove_signal_handler(sig)


async def _run(
    out: TextIO,
    *,
    path: Path,
    room: str,
    api_secret: str,
    nats_proc: ServiceProcess | None,
    tansu: ServiceProcess | None,
    began: float,
) -> int:
    async with SimServer(SimConfig(keys={API_KEY: api_secret})) as server:
        settings_data: dict[str, Any] = {
            "livekit": {
                "url": server.url,
                "api_key": API_KEY,
                "api_secret": api_secret,
                "identity": IDENTITY,
                "reconnect_backoff_initial_s": 0.05,
                "reconnect_backoff_max_s": 0.5,
                "can_update_own_metadata": True,  # the command round trip updates it
            },
            "rooms": {"static": [room]},
            "http": {"listen": "127.0.0.1:0"},  # the demo needs no fixed port: any free loopback one
        }
        memory: InMemoryBus | None = None
        source: Source
        print(f"simulator    {server.url}  room {room!r}", file=out)
        if isinstance(nats_proc, EmbeddedNats):
            settings_data["nats"] = {"servers": [nats_proc.url], "subject_prefix": PREFIX}
            print(f"nats-server  {nats_proc.url}  pid {nats_proc.pid}, JetStream, temporary store", file=out)
        if isinstance(tansu, EmbeddedTansu):
            # tansu refuses InitProducerId, so no idempotent producer.
            settings_data["kafka"] = {
                "bootstrap_servers": [tansu.bootstrap],
                "events_topic": TOPIC,
                "enable_idempotence": False,
            }
            print(f"tansu        {tansu.bootstrap}  pid {tansu.pid}, Kafka protocol, in memory", file=out)
            for topic in (TOPIC, COMMANDS_TOPIC, STATE_TOPIC, DLQ_TOPIC):
                await _create_topic(tansu.bootstrap, topic)
            source = KafkaSource(tansu.bootstrap, topic=TOPIC, from_beginning=True, topic_wait_s=5.0)
        elif isinstance(nats_proc, EmbeddedNats):
            source = NatsSource(nats_proc.url, prefix=PREFIX)
        else:
            memory = InMemoryBus()
            source = _MemorySource(memory)
        settings = Settings.model_validate(settings_data)
        await source.start()  # subscribed before the bridge publishes its first event
        print(f"printing     CloudEvents from {source.description}", file=out, flush=True)

        counts: Counter[str] = Counter()
        width = output_width(out)

        def show(event: dict[str, Any]) -> None:
            counts[short_type(str(event.get("type", "?")))] += 1
            print(format_line(event, width=width), file=out, flush=True)

        stop_printing = asyncio.Event()
        printer = asyncio.create_task(pump(source, show, stop=stop_printing))
        send, memory_commands = _command_sender(nats_proc, tansu)
        try:
            bridge = Bridge(
                settings,
                publishers=[memory] if memory is not None else None,
                command_sources=[memory_commands] if memory_commands is not None else None,
            )
            try:
                played = await _play(server, bridge, room, path, out, send=send)
            finally:
                await bridge.aclose()  # leaves the room (session_ended) and flushes the outboxes
            emitted = sum(s.mapper.sequence for s in bridge.supervisor.sessions.values())
            await _until(lambda: sum(counts.values()) >= emitted, DRAIN_DEADLINE_S)
        finally:
            stop_printing.set()
            await asyncio.gather(printer, return_exceptions=True)
            await source.aclose()
        printer.result()  # a consumer that failed says so here
        if not played:
            return 1

    seen = sum(counts.values())
    print(f"demo done: {seen} CloudEvents in {time.monotonic() - began:.1f} s, by type:", file=out)
    for kind, n in sorted(counts.items()):
        print(f"  {n:4d}  {kind}", file=out)
    if seen < emitted:
        print(f"missing: the bridge emitted {emitted} events but {seen} arrived", file=out)
        return 1
    return 0 if seen else 1


async def _send_in_memory(source: MemoryCommandSource, room: str, event: dict[str, Any]) -> dict[str, Any]:
    """The in-memory bus's command path: the same parsing as NATS, answered like a NATS request."""
    subject = f"{PREFIX}.commands.{room_token(room)}"
    delivery = await source.submit_nats(subject, json.dumps(event).encode())
    await asyncio.wait_for(delivery.finished.wait(), 10)
    doc: dict[str, Any] = json.loads(delivery.reply_payload or b"{}")
    return doc


def _command_sender(
    nats_proc: ServiceProcess | None, tansu: ServiceProcess | None
) -> tuple[CommandSender, MemoryCommandSource | None]:
    """How the demo sends its command: a NATS request, a Kafka record, or the in-memory source."""
    if isinstance(nats_proc, EmbeddedNats):
        url = nats_proc.url
        return (lambda room, event: send_nats(url, PREFIX, room, event, timeout_s=10)), None
    if isinstance(tansu, EmbeddedTansu):
        bootstrap = tansu.bootstrap
        return (
            lambda room, event: send_kafka(bootstrap, COMMANDS_TOPIC, TOPIC, room, event, timeout_s=20)
        ), None
    source = MemoryCommandSource(prefix=PREFIX)
    return partial(_send_in_memory, source), source
