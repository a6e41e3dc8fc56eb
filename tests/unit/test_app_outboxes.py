"""How the bridge sets up each bus's outbox: Kafka gathers for ``linger_s``, core NATS pipelines."""

from __future__ import annotations

from bridge.app import Bridge
from bridge.config import load_settings

ENV = {
    "BRIDGE_LIVEKIT__URL": "ws://127.0.0.1:1",
    "BRIDGE_LIVEKIT__API_KEY": "k",
    "BRIDGE_LIVEKIT__API_SECRET": "s3cret-value",
    "BRIDGE_ROOMS__STATIC": "[room-a]",
    "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": "[127.0.0.1:1]",
    "BRIDGE_NATS__SERVERS": "[nats://127.0.0.1:1]",
}


async def test_kafka_gathers_for_its_linger_and_core_nats_keeps_batches_in_flight() -> None:
    bridge = Bridge(load_settings(None, ENV))
    setup = {o.bus: (o.batch_interval_s, o.max_in_flight) for o in bridge.outboxes}
    assert setup == {"kafka": (0.005, 1), "nats": (0.002, 4)}


async def test_the_longer_of_linger_and_the_batch_interval_wins() -> None:
    env = {**ENV, "BRIDGE_KAFKA__LINGER_S": "0", "BRIDGE_OUTBOX__BATCH_INTERVAL_S": "0.003"}
    bridge = Bridge(load_settings(None, env))
    assert {o.bus: o.batch_interval_s for o in bridge.outboxes} == {"kafka": 0.003, "nats": 0.003}


async def test_jetstream_and_max_in_flight_one_keep_a_single_batch_in_flight() -> None:
    env = {**ENV, "BRIDGE_NATS__JETSTREAM": "true"}
    assert {o.bus: o.max_in_flight for o in Bridge(load_settings(None, env)).outboxes}["nats"] == 1
    env = {**ENV, "BRIDGE_OUTBOX__MAX_IN_FLIGHT": "1"}
    assert {o.bus: o.max_in_flight for o in Bridge(load_settings(None, env)).outboxes}["nats"] == 1
