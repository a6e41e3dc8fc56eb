"""The Prometheus exposition: valid text format, the naming rule, bounded labels, histograms that add up."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from bridge.app import Bridge
from bridge.bus.memory import InMemoryBus
from bridge.bus.memory_commands import MemoryCommandSource
from bridge.bus.outbox import LatencyHistogram
from bridge.config import load_settings
from bridge.ops.metrics import LABELS, LATENCY_BOUNDS_S, Exposition
from support.metrics import buckets, parse

ENV = {
    "BRIDGE_LIVEKIT__URL": "ws://127.0.0.1:1",
    "BRIDGE_LIVEKIT__API_KEY": "k",
    "BRIDGE_LIVEKIT__API_SECRET": "s3cret-value",
    "BRIDGE_ROOMS__STATIC": "[room-a, room-b]",
    "BRIDGE_HTTP__LISTEN": "127.0.0.1:0",
    "BRIDGE_DISCOVERY__WEBHOOK": "true",
    "BRIDGE_DISCOVERY__LIST_ROOMS_INTERVAL_S": "30",
}


def bridge() -> Bridge:
    return Bridge(
        load_settings(None, ENV), publishers=[InMemoryBus()], command_sources=[MemoryCommandSource()]
    )


async def test_a_bridge_exposition_parses_and_follows_the_naming_rule() -> None:
    b = bridge()
    b.outboxes[0].latency.record(0.003)
    b.commands.stats.received = 3
    b.commands.stats.applied = 2
    families = parse(b.ops.metrics.render())
    for name, family in families.items():
        assert name.startswith("bridge_"), name
        if family.kind == "counter":
            assert name.endswith("_total"), name
        elif family.kind == "histogram":
            assert name.endswith(("_seconds", "_bytes")), name
        else:
            assert not name.endswith("_total"), name
        assert family.help, f"{name} has no HELP"
        for _, labels, _ in family.samples:
            assert set(labels) <= LABELS | {"le"}, (name, labels)
            assert "room" not in labels
            assert not {"room-a", "room-b"} & set(labels.values()), "a room name leaked into a label"
    assert families["bridge_events_published_total"].value(bus="memory") == 0
    assert families["bridge_commands_received_total"].value() == 3
    assert families["bridge_commands_completed_total"].value(outcome="applied") == 2
    assert families["bridge_bus_connected"].value(bus="memory") == 0  # not started
    assert families["bridge_command_source_ready"].value(bus="memory") == 0
    latency = families["bridge_publish_latency_seconds"]
    assert latency.kind == "histogram"
    assert [le for le, _ in buckets(latency, bus="memory")] == [*LATENCY_BOUNDS_S, math.inf]
    assert dict(buckets(latency, bus="memory"))[0.005] == 1
    assert dict(buckets(latency, bus="memory"))[0.0025] == 0
    for expected in (
        "bridge_rooms",
        "bridge_rooms_by_state",
        "bridge_room_session_crashes_total",
        "bridge_room_resumes_total",
        "bridge_room_rejoins_total",
        "bridge_events_dropped_total",
        "bridge_outbox_events",
        "bridge_commands_dead_lettered_total",
        "bridge_commands_duplicates_total",
        "bridge_command_apply_latency_seconds",
        "bridge_webhooks_refused_total",
        "bridge_discovery_reconciliations_total",
        "bridge_build_info",
    ):
        assert expected in families, expected


def test_histogram_buckets_are_cumulative_and_end_with_the_count() -> None:
    h = LatencyHistogram()
    for d in (0.0001, 0.0007, 0.002, 0.02, 0.3, 7.0, 500.0):
        h.record(d)
    out = Exposition()
    out.histogram("bridge_x_seconds", "x", h)
    fam = parse(out.render())["bridge_x_seconds"]
    counts = [c for _, c in buckets(fam)]
    assert counts == sorted(counts)
    assert counts[-1] == 7 == fam.samples[-1][2]  # +Inf bucket == _count
    assert dict(buckets(fam))[0.001] == 2  # bucket bounds at decades are exact
    assert dict(buckets(fam))[10.0] == 6
    assert math.isclose(next(v for n, _, v in fam.samples if n.endswith("_sum")), h.total_s)


def test_label_values_are_escaped() -> None:
    out = Exposition()
    out.gauge("bridge_x", "help with \\ and\nnewline", 1, (("reason", 'a "quoted"\\ value\n'),))
    fam = parse(out.render())["bridge_x"]
    assert fam.samples == [("bridge_x", {"reason": 'a "quoted"\\ value\n'}, 1.0)]


@pytest.mark.parametrize(
    ("kind", "name", "labels", "problem"),
    [
        ("counter", "bridge_events", (), "end in _total"),
        ("gauge", "events_total", (), "start with bridge_"),
        ("gauge", "bridge_x_total", (), "only counters"),
        ("histogram", "bridge_latency", (), "end in their unit"),
        ("gauge", "bridge_x", (("room", "r1"),), "not bounded labels"),
        ("counter", "bridge_x_total", (("participant", "p"),), "not bounded labels"),
    ],
)
def test_the_rules_are_enforced(
    kind: str, name: str, labels: tuple[tuple[str, str], ...], problem: str
) -> None:
    out = Exposition()
    add: Callable[[], None] = {
        "histogram": lambda: out.histogram(name, "h", LatencyHistogram(), labels),
        "counter": lambda: out.counter(name, "h", 1, labels),
        "gauge": lambda: out.gauge(name, "h", 1, labels),
    }[kind]
    with pytest.raises(ValueError, match=problem):
        add()
