"""Composition root: settings in, the running service out, and the written shutdown order.

Start: the bus publishers (each may be down: its outbox buffers and retries), one bounded outbox per
bus behind a fan-out, the room supervisor, which joins the configured rooms, then the command sources
(one per bus) feeding the command runner. The HTTP listener (/livez /readyz /metrics /webhook) starts
after the publishers, room discovery after the static joins.
Stop (SIGTERM/SIGINT), in this order:
  0. report not ready and stop discovering rooms (no webhook or ListRooms join from here on);
  1. stop taking commands: the sources, together, stop fetching, let the commands they handed over
     finish within ``COMMAND_DRAIN_S`` (a Kafka command finishes once its result is published: the
     outboxes still run) and commit what finished; nothing may reach a room that is leaving;
  2. leave every room with CLIENT_INITIATED within ``livekit.leave_deadline_s``;
  3. flush what the rooms produced to the buses, within ``FLUSH_DEADLINE_S``;
  4. stop the HTTP listener;
  5. close the bus clients.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Sequence
from typing import Final

from bridge.bus.base import Publisher
from bridge.bus.command_source import CommandSource
from bridge.bus.outbox import EventFanout, Outbox
from bridge.config import Settings
from bridge.errors import BusError
from bridge.events.cloudevent import CloudEvent
from bridge.media.tuning import apply_scaling_knobs
from bridge.ops.health import Readiness
from bridge.ops.metrics import BridgeMetrics
from bridge.ops.server import OpsServer
from bridge.rooms.commands import CommandRunner, ServerApiPort
from bridge.rooms.discovery import RoomDiscovery
from bridge.rooms.room_events import RoomEvents
from bridge.rooms.server_api import ServerApi
from bridge.rooms.session import RoomSession
from bridge.rooms.sharding import AssignmentCallback, build_ownership
from bridge.rooms.supervisor import RoomSupervisor
from bridge.rooms.webhook import WebhookVerifier
from bridge.signaling.protocol import Event

log = logging.getLogger(__name__)

FLUSH_DEADLINE_S: Final = 5.0
COMMAND_DRAIN_S: Final = 5.0


def build_command_sources(
    settings: Settings, runner: CommandRunner, *, on_assignment: AssignmentCallback | None = None
) -> list[CommandSource]:
    """One command consumer per configured bus (none when ``commands.enabled`` is false)."""
    if not settings.commands.enabled:
        return []
    sources: list[CommandSource] = []
    limit = settings.commands.max_in_flight
    # ownership.mode nats: Kafka's command partitions do not follow the leases, so commands come from
    # NATS only (Bridge.start logs it).
    if settings.kafka is not None and settings.ownership.mode != "nats":
        from bridge.bus.kafka_commands import KafkaCommandSource

        sources.append(
            KafkaCommandSource(
                settings.kafka,
                max_in_flight=limit,
                on_recovered=runner.remember,
                on_assignment=on_assignment,
                session_timeout_s=settings.kafka.session_timeout_s,
            )
        )
    if settings.nats is not None:
        from bridge.bus.nats_commands import NatsCommandSource

        sources.append(NatsCommandSource(settings.nats, max_in_flight=limit))
    return sources


def build_publishers(settings: Settings) -> list[Publisher]:
    """One publisher per configured bus (none configured: events are counted and discarded)."""
    publishers: list[Publisher] = []
    if settings.kafka is not None:
        from bridge.bus.kafka import KafkaPublisher

        publishers.append(KafkaPublisher(settings.kafka))
    if settings.nats is not None:
        from bridge.bus.nats import NatsPublisher

        publishers.append(NatsPublisher(settings.nats))
    return publishers


def _batch_interval_s(settings: Settings, publisher: Publisher) -> float:
    """How often batches to ``publisher`` may start: Kafka's ``linger_s`` is spent here, gathering."""
    interval = settings.outbox.batch_interval_s
    if publisher.name == "kafka" and settings.kafka is not None:
        interval = max(interval, settings.kafka.linger_s)
    return interval


class Bridge:
    """The running service: publishers, outboxes, fan-out and rooms. ``start()`` then ``aclose()``."""

    def __init__(
        self,
        settings: Settings,
        *,
        publishers: Sequence[Publisher] | None = None,
        command_sources: Sequence[CommandSource] | None = None,
        server_api: ServerApiPort | None = None,
    ) -> None:
        self.settings = settings
        self.publishers = list(build_publishers(settings) if publishers is None else publishers)
        self.outboxes = [
            Outbox(
                p,
                capacity=settings.outbox.capacity,
                overflow=settings.outbox.overflow,
                batch_interval_s=_batch_interval_s(settings, p),
                max_in_flight=settings.outbox.max_in_flight,
                on_drop=self._dropped,
                on_recover=self._recovered,
            )
            for p in self.publishers
        ]
        # Dropped events per (session, bus): [count, first sequence, last sequence], reported as one
        # gap event per session once that bus has room again (reporting while full would drop more).
        self._gaps: dict[tuple[str, str], list[int]] = {}
        self.fanout = EventFanout(self.outboxes)
        sink = self.fanout if self.outboxes else None
        self.supervisor = RoomSupervisor(
            settings.livekit,
            sink=sink,
            events=settings.events,
            on_event=self._session_event,
            media=settings.media,
        )
        # Which rooms are ours (ownership.mode): every room, or the Kafka assignment's, or NATS leases'.
        # Command results and ownership changes about a room with no session here share the room's one
        # pseudo-session, so those events form a single gap-free sequence per room.
        self.room_events = RoomEvents(livekit_url=settings.livekit.url, sink=sink)
        self.ownership = build_ownership(settings, self.supervisor, events=self.room_events)
        self._own_server_api: ServerApi | None = None
        if server_api is None and settings.commands.enabled:
            server_api = self._own_server_api = ServerApi(settings.livekit)
        self.commands = CommandRunner(
            commands=settings.commands,
            livekit=settings.livekit,
            supervisor=self.supervisor,
            sink=sink,
            server_api=server_api,
            room_events=self.room_events,
            settled=self.fanout.settled if self.outboxes else None,
        )
        self.commands.owns = self.ownership.owns
        # join_room makes its room a candidate; with leases, the replica that claims it joins it.
        self.commands.consider = self.ownership.consider
        self.commands.joins_follow_claims = settings.ownership.mode == "nats"
        self.command_sources = list(
            build_command_sources(settings, self.commands, on_assignment=self.ownership.assignment_handler)
            if command_sources is None
            else command_sources
        )
        if settings.ownership.mode == "nats":
            # Commands reach any replica of the queue group: each forwards what the lease holder owns.
            from bridge.bus.nats_commands import NatsCommandSource

            for source in self.command_sources:
                if isinstance(source, NatsCommandSource):
                    source.forward_to_owners(self.ownership.replica, self.ownership.owner_of)
        # Room discovery (webhooks, ListRooms) and the HTTP listener that serves ops and the webhook.
        self.discovery = RoomDiscovery(
            settings.discovery, self.supervisor, livekit=settings.livekit, owns=self.ownership.consider
        )
        webhook = WebhookVerifier(settings.livekit) if settings.discovery.webhook else None
        self.ops = OpsServer(
            settings.http,
            readiness=Readiness(
                publishers=self.publishers,
                command_sources=self.command_sources,
                supervisor=self.supervisor,
                static_rooms=settings.rooms.static if settings.ownership.mode == "static" else (),
                ownership=self.ownership,
            ),
            metrics=BridgeMetrics(
                publishers=self.publishers,
                outboxes=self.outboxes,
                supervisor=self.supervisor,
                commands=self.commands,
                command_sources=self.command_sources,
                discovery=self.discovery,
                webhook=webhook,
            ),
            webhook=webhook,
            on_webhook=self.discovery.on_webhook,
            rooms=self.ownership.report,
        )

    def _session_event(self, session: RoomSession, event: Event) -> None:
        self.commands.on_session_event(session, event)

    def _dropped(self, bus: str, events: list[CloudEvent]) -> None:
        for event in events:
            gap = self._gaps.get((event.ctx.session, bus))
            if gap is None:
                self._gaps[(event.ctx.session, bus)] = [1, event.sequence, event.sequence]
            else:
                gap[0] += 1
                gap[1] = min(gap[1], event.sequence)
                gap[2] = max(gap[2], event.sequence)

    def _recovered(self, bus: str) -> None:
        for key in [k for k in self._gaps if k[1] == bus]:
            count, first, last = self._gaps.pop(key)
            self.supervisor.report_gap(key[0], bus, count, first, last)

    async def start(self) -> None:
        apply_scaling_knobs()  # before the first PC/TLS socket exists; idempotent
        if not self.publishers:
            log.warning("no bus configured (kafka, nats): rooms are joined but their events go nowhere")
        for publisher in self.publishers:
            try:
                await publisher.start()
            except BusError as exc:
                log.warning(
                    "%s: not reachable at start (%s); its outbox buffers and retries", publisher.name, exc
                )
        await self.ops.start()
        self.fanout.start()
        if self.settings.ownership.mode == "static":
            for room in self.settings.rooms.static:
                self.supervisor.join(room)
        self.ownership.start()  # sharded: the owned share of rooms.static is joined as ownership settles
        if self.settings.ownership.mode == "nats" and self.settings.kafka and self.settings.commands.enabled:
            log.info("ownership.mode nats: commands are taken from NATS only")
        for source in self.command_sources:
            await source.start(self.commands.handle)
        self.discovery.start()
        log.info(
            "bridge started: %d rooms, identity=%s, livekit=%s, buses=%s",
            len(self.settings.rooms.static),
            self.settings.livekit.identity,
            self.settings.livekit.url,
            ",".join(p.name for p in self.publishers) or "none",
        )

    async def aclose(self) -> None:
        """The shutdown order of the module docstring."""
        self.ops.readiness.stopping = True
        await self.discovery.aclose()
        leaving = sum(1 for s in self.supervisor.sessions.values() if s.ended is None)
        log.info("bridge stopping: leaving %d rooms", leaving)
        # Concurrently: each waits up to COMMAND_DRAIN_S for its deliveries to settle, and a Kafka one's wait
        # for results still held by a slow bus should not add to the others'.
        await asyncio.gather(*(source.aclose(COMMAND_DRAIN_S) for source in self.command_sources))
        await self.commands.aclose()
        await self.ownership.handover()  # sharded: rooms go to other replicas before we leave them
        cs = self.commands.stats
        if cs.received:
            log.info(
                "commands: %d received, %d applied, %d rejected, %d failed, %d dead-lettered, "
                "%d duplicates; received -> on the wire p50 %.3f ms p99 %.3f ms",
                cs.received,
                cs.applied,
                cs.rejected,
                cs.failed,
                cs.dead_lettered,
                cs.duplicates,
                cs.apply_latency.percentile(50) * 1000,
                cs.apply_latency.percentile(99) * 1000,
            )
        await self.supervisor.aclose()
        await self.ownership.aclose()
        if self._own_server_api is not None:
            await self._own_server_api.aclose()
        await self.fanout.aclose(FLUSH_DEADLINE_S)
        for st in (o.stats() for o in self.outboxes):
            log.info(
                "bus %s: %d events published in %d batches, %d dropped; added latency (put -> confirmed) "
                "p50 %.3f ms p99 %.3f ms max %.3f ms over %d events",
                st.bus,
                st.published,
                st.batches,
                st.dropped,
                st.latency_p50_ms,
                st.latency_p99_ms,
                st.latency_max_ms,
                st.latency_count,
            )
        await self.ops.aclose()
        for publisher in self.publishers:
            await publisher.aclose()
        log.info("bridge stopped")


async def run_service(settings: Settings, *, stop: asyncio.Event | None = None) -> int:
    """Run until ``stop`` is set (SIGTERM/SIGINT when not given) or every room has ended."""
    stop = stop or _signal_event()
    bridge = Bridge(settings)
    await bridge.start()
    _freeze_startup_heap()
    stopping = asyncio.create_task(stop.wait())
    rooms_done = asyncio.create_task(bridge.supervisor.wait())
    # Sharded, a replica with no rooms now may be given some later: only a stop ends it.
    waits = {stopping, rooms_done} if settings.ownership.mode == "static" else {stopping}
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    rooms_done.cancel()
    await bridge.aclose()
    gc.unfreeze()  # a caller that goes on (tests, the demo) gets its heap back
    return 1 if bridge.supervisor.crashes else 0


def _freeze_startup_heap() -> None:
    """Take what startup left alive (modules, protobuf classes, clients, settings) out of the collector.

    Those objects live as long as the process, yet every full collection walks them all: 48-65 ms pauses
    of the event loop at 5,000 events/s, a p99 of their own. Frozen, a full collection took 9 ms there.
    """
    gc.collect()
    gc.freeze()


def _signal_event() -> asyncio.Event:
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    return event
