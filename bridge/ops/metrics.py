"""Every metric the bridge exports, in Prometheus' text format (0.0.4), read from live objects at scrape time.

Nothing here runs per event: the outboxes, the command runner, the supervisor and discovery already count,
and :meth:`BridgeMetrics.render` reads those counters when ``/metrics`` is scraped.

Rules, enforced by :class:`Exposition` as families are added:

- names start with ``bridge_``; counters end in ``_total``, histograms in ``_seconds`` or ``_bytes``;
- labels come from :data:`LABELS` only (bounded values: bus, outcome, state, reason, webhook event,
  media kind), never a room name, participant, track sid or id, whose values are unbounded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final, Literal

from bridge import __version__
from bridge.bus.base import Publisher
from bridge.bus.command_source import CommandSource
from bridge.bus.outbox import LatencyHistogram, Outbox
from bridge.rooms.commands import CommandRunner
from bridge.rooms.discovery import RoomDiscovery
from bridge.rooms.supervisor import RoomSupervisor
from bridge.rooms.webhook import REFUSALS, WEBHOOK_EVENTS, WebhookVerifier
from bridge.signaling.protocol import SessionState

__all__ = ["CONTENT_TYPE", "LABELS", "LATENCY_BOUNDS_S", "BridgeMetrics", "Exposition"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
LABELS: Final = frozenset({"bus", "outcome", "state", "reason", "event", "version", "kind"})
MEDIA_KINDS: Final = ("audio", "video")
# Upper bounds (``le``) of the latency histograms, seconds: 0.5 ms .. 10 s.
LATENCY_BOUNDS_S: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

Kind = Literal["counter", "gauge", "histogram"]
Labels = tuple[tuple[str, str], ...]


def _number(value: float) -> str:
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


class Exposition:
    """Builds one scrape: families in the order they are first added, each with HELP and TYPE once."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[Kind, str, list[str]]] = {}

    def _family(self, kind: Kind, name: str, help_text: str, labels: Labels) -> list[str]:
        if not name.startswith("bridge_"):
            raise ValueError(f"{name}: metric names start with bridge_")
        if kind == "counter" and not name.endswith("_total"):
            raise ValueError(f"{name}: counter names end in _total")
        if kind == "histogram" and not name.endswith(("_seconds", "_bytes")):
            raise ValueError(f"{name}: histogram names end in their unit (_seconds, _bytes)")
        if kind != "counter" and name.endswith("_total"):
            raise ValueError(f"{name}: only counters end in _total")
        if unknown := {k for k, _ in labels} - LABELS:
            raise ValueError(f"{name}: label(s) {sorted(unknown)} are not bounded labels")
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = (kind, help_text, [])
        elif family[0] != kind:
            raise ValueError(f"{name}: added as {family[0]} and as {kind}")
        return family[2]

    def counter(self, name: str, help_text: str, value: float, labels: Labels = ()) -> None:
        self._family("counter", name, help_text, labels).append(f"{name}{_labels(labels)} {_number(value)}")

    def gauge(self, name: str, help_text: str, value: float, labels: Labels = ()) -> None:
        self._family("gauge", name, help_text, labels).append(f"{name}{_labels(labels)} {_number(value)}")

    def histogram(
        self,
        name: str,
        help_text: str,
        histogram: LatencyHistogram,
        labels: Labels = (),
        bounds: Sequence[float] = LATENCY_BOUNDS_S,
    ) -> None:
        lines = self._family("histogram", name, help_text, labels)
        for bound, count in zip(bounds, histogram.cumulative(bounds), strict=True):
            lines.append(f"{name}_bucket{_labels((*labels, ('le', _number(bound))))} {count}")
        lines.append(f"{name}_bucket{_labels((*labels, ('le', '+Inf')))} {histogram.count}")
        lines.append(f"{name}_sum{_labels(labels)} {_number(histogram.total_s)}")
        lines.append(f"{name}_count{_labels(labels)} {histogram.count}")

    def render(self) -> str:
        out: list[str] = []
        for name, (kind, help_text, lines) in self._families.items():
            out.append(f"# HELP {name} {help_text.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(lines)
        return "\n".join(out) + "\n"


class BridgeMetrics:
    """Reads the running bridge's counters into an exposition. One instance per bridge (it remembers the
    resume/rejoin counts of sessions that were replaced, so those counters never go down)."""

    def __init__(
        self,
        *,
        publishers: Sequence[Publisher],
        outboxes: Sequence[Outbox],
        supervisor: RoomSupervisor,
        commands: CommandRunner,
        command_sources: Sequence[CommandSource],
        discovery: RoomDiscovery | None = None,
        webhook: WebhookVerifier | None = None,
    ) -> None:
        self._publishers = publishers
        self._outboxes = outboxes
        self._supervisor = supervisor
        self._commands = commands
        self._sources = command_sources
        self._discovery = discovery
        self._webhook = webhook
        # session id -> (resumes, rejoins) at the last scrape; counts of sessions gone since are kept in
        # _retired. (Increments between a session's last scrape and its replacement are not seen.)
        self._seen: dict[str, tuple[int, int]] = {}
        self._retired = (0, 0)
        # The same for the media and data counters of sessions: session id -> counter key -> value.
        self._media_seen: dict[str, dict[str, int]] = {}
        self._media_retired: dict[str, int] = {}

    def render(self) -> str:
        out = Exposition()
        out.gauge("bridge_build_info", "The running bridge's version.", 1, (("version", __version__),))
        self._rooms(out)
        self._media(out)
        self._buses(out)
        self._commands_metrics(out)
        self._discovery_metrics(out)
        return out.render()

    def _rooms(self, out: Exposition) -> None:
        sessions = list(self._supervisor.sessions.values())
        live = [s for s in sessions if s.ended is None]
        out.gauge(
            "bridge_rooms", "Rooms with a running session (joined, connecting or recovering).", len(live)
        )
        for state in SessionState:
            n = sum(1 for s in live if s.state is state)
            out.gauge(
                "bridge_rooms_by_state", "Running room sessions by state.", n, (("state", state.value),)
            )
        out.counter(
            "bridge_room_session_crashes_total",
            "Room sessions that failed with an unexpected error.",
            self._supervisor.crashes,
        )
        now = {s.session_id: (s.resumes, s.rejoins) for s in sessions}
        resumes, rejoins = self._retired
        for sid, (r, j) in self._seen.items():
            if sid not in now:
                resumes, rejoins = resumes + r, rejoins + j
        self._retired, self._seen = (resumes, rejoins), now
        out.counter(
            "bridge_room_resumes_total",
            "Signaling connections resumed (same session).",
            resumes + sum(r for r, _ in now.values()),
        )
        out.counter(
            "bridge_room_rejoins_total",
            "Full rejoins after LiveKit refused a resume.",
            rejoins + sum(j for _, j in now.values()),
        )

    def _media(self, out: Exposition) -> None:
        sessions = list(self._supervisor.sessions.values())
        now: dict[str, dict[str, int]] = {}
        for session in sessions:
            media, counts = session.media.stats, {}
            for kind in MEDIA_KINDS:
                counts[f"frames:{kind}"] = media.frames_by_kind.get(kind, 0)
                counts[f"bytes:{kind}"] = media.bytes_by_kind.get(kind, 0)
                counts[f"dropped:{kind}"] = media.dropped_by_kind.get(kind, 0)
                forwards = session.forwarder.stats
                counts[f"fwd_frames:{kind}"] = forwards.frames_by_kind.get(kind, 0)
                counts[f"fwd_packets:{kind}"] = forwards.packets_by_kind.get(kind, 0)
                counts[f"fwd_bytes:{kind}"] = forwards.bytes_by_kind.get(kind, 0)
                counts[f"fwd_dropped:{kind}"] = forwards.dropped_by_kind.get(kind, 0)
            counts["data_received"] = media.data_messages
            counts["data_sent"] = session.publisher.stats.data_sent
            counts["side_dropped"] = session.side_dropped
            streams = session.text_streams.stats if session.text_streams is not None else None
            for outcome in ("completed", "truncated", "evicted", "orphans"):
                counts[f"streams:{outcome}"] = getattr(streams, outcome, 0)
            now[session.session_id] = counts
        retired = self._media_retired
        for sid, counts in self._media_seen.items():
            if sid not in now:
                for key, value in counts.items():
                    retired[key] = retired.get(key, 0) + value
        self._media_seen = now

        def total(key: str) -> int:
            return retired.get(key, 0) + sum(c.get(key, 0) for c in now.values())

        live = [s for s in sessions if s.ended is None]
        for kind in MEDIA_KINDS:
            labels = (("kind", kind),)
            out.gauge(
                "bridge_media_tracks_receiving",
                "Remote tracks the rooms receive, by kind.",
                sum(1 for s in live for t in s.media.tracks() if t.kind == kind),
                labels,
            )
            out.counter(
                "bridge_media_frames_received_total",
                "Encoded frames received, by kind.",
                total(f"frames:{kind}"),
                labels,
            )
            out.counter(
                "bridge_media_received_bytes_total",
                "Encoded media bytes received (RTP payloads), by kind.",
                total(f"bytes:{kind}"),
                labels,
            )
            out.counter(
                "bridge_media_frames_dropped_total",
                "Received frames a sink (a recording) dropped because its bounded queue was full, by kind.",
                total(f"dropped:{kind}"),
                labels,
            )
            out.gauge(
                "bridge_forwards_active",
                "Track forwards (RTP over UDP) running, by kind.",
                sum(1 for s in live for f in s.forwarder.forwards.values() if f.kind == kind),
                labels,
            )
            out.counter(
                "bridge_forward_frames_total",
                "Encoded frames forwarded as RTP over UDP, by kind.",
                total(f"fwd_frames:{kind}"),
                labels,
            )
            out.counter(
                "bridge_forward_packets_total",
                "RTP packets forwarded over UDP, by kind.",
                total(f"fwd_packets:{kind}"),
                labels,
            )
            out.counter(
                "bridge_forward_sent_bytes_total",
                "Bytes of the RTP packets forwarded over UDP (headers included), by kind.",
                total(f"fwd_bytes:{kind}"),
                labels,
            )
            out.counter(
                "bridge_forward_packets_dropped_total",
                "RTP packets a forward dropped because its bounded queue was full, by kind.",
                total(f"fwd_dropped:{kind}"),
                labels,
            )
        out.gauge(
            "bridge_recordings_active",
            "Track recordings running.",
            sum(len(s.recorder.recordings) for s in live),
        )
        out.counter(
            "bridge_data_packets_received_total",
            "Messages received on data channels.",
            total("data_received"),
        )
        out.counter(
            "bridge_data_packets_sent_total",
            "Data packets sent on the bridge's own data channel.",
            total("data_sent"),
        )
        out.counter(
            "bridge_data_events_dropped_total",
            "Data packets and gap reports dropped because a room's bounded side queue was full.",
            total("side_dropped"),
        )
        for outcome in ("completed", "truncated", "evicted", "orphans"):
            out.counter(
                "bridge_text_streams_total",
                "Text streams assembled (completed, of which truncated) or lost (evicted unfinished, orphan "
                "pieces without a header).",
                total(f"streams:{outcome}"),
                (("outcome", outcome),),
            )

    def _buses(self, out: Exposition) -> None:
        for publisher in self._publishers:
            out.gauge(
                "bridge_bus_connected",
                "1 while the bus client believes it can reach the broker.",
                int(publisher.connected),
                (("bus", publisher.name),),
            )
        for box in self._outboxes:
            bus = (("bus", box.bus),)
            out.counter("bridge_events_published_total", "Events the broker confirmed.", box.published, bus)
            out.counter(
                "bridge_events_dropped_total",
                "Events dropped: outbox overflow (drop_oldest), refused by the broker, or unflushed at exit.",
                box.dropped,
                bus,
            )
            out.gauge(
                "bridge_outbox_events",
                "Events waiting in the outbox (incl. the batch in flight).",
                box.size,
                bus,
            )
            out.gauge("bridge_outbox_capacity_events", "Outbox capacity.", box.capacity, bus)
            out.counter("bridge_publish_batches_total", "Batches the broker confirmed.", box.batches, bus)
            out.counter(
                "bridge_publish_failed_batches_total",
                "publish_batch calls that failed.",
                box.failed_batches,
                bus,
            )
            out.counter(
                "bridge_publish_retries_total", "Batches retried after a retriable failure.", box.retries, bus
            )
            out.gauge(
                "bridge_bus_outage", "1 while the outbox cannot publish and retries.", int(box.outage), bus
            )
            out.histogram(
                "bridge_publish_latency_seconds",
                "Added latency per event: handed to the outbox -> confirmed by the broker.",
                box.latency,
                bus,
            )

    def _commands_metrics(self, out: Exposition) -> None:
        st = self._commands.stats
        for source in self._sources:
            out.gauge(
                "bridge_command_source_ready",
                "1 while the command consumer is subscribed.",
                int(source.ready),
                (("bus", source.name),),
            )
        out.counter("bridge_commands_received_total", "Commands taken from the buses.", st.received)
        for outcome, n in (("applied", st.applied), ("rejected", st.rejected), ("failed", st.failed)):
            out.counter(
                "bridge_commands_completed_total",
                "Commands answered with a command_result, by status.",
                n,
                (("outcome", outcome),),
            )
        out.counter(
            "bridge_commands_dead_lettered_total",
            "Commands that could not be parsed or validated.",
            st.dead_lettered,
        )
        out.counter("bridge_commands_duplicates_total", "Redelivered commands ignored by id.", st.duplicates)
        out.counter(
            "bridge_commands_send_data_fallbacks_total",
            "send_data commands sent through the server API because the bridge's data channel failed.",
            st.send_data_fallbacks,
        )
        out.histogram(
            "bridge_command_apply_latency_seconds",
            "Command received -> on the wire to LiveKit.",
            st.apply_latency,
        )

    def _discovery_metrics(self, out: Exposition) -> None:
        if self._webhook is not None:
            accepted = self._webhook.accepted
            for event in (*WEBHOOK_EVENTS, "other"):
                out.counter(
                    "bridge_webhooks_accepted_total",
                    "LiveKit webhooks with a valid signature, by event.",
                    accepted[event],
                    (("event", event),),
                )
            for reason in REFUSALS:
                out.counter(
                    "bridge_webhooks_refused_total",
                    "Webhooks refused with 401, by reason.",
                    self._webhook.refused[reason],
                    (("reason", reason),),
                )
        if self._discovery is not None:
            st = self._discovery.stats
            for outcome, n in (("ok", st.reconciliations), ("failed", st.reconcile_failures)):
                out.counter(
                    "bridge_discovery_reconciliations_total",
                    "ListRooms reconciliations, by outcome.",
                    n,
                    (("outcome", outcome),),
                )
            out.counter("bridge_discovery_joins_total", "Rooms joined by discovery.", st.joins)
            out.counter("bridge_discovery_leaves_total", "Rooms left by discovery.", st.leaves)
