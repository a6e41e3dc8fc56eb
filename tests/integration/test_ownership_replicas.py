"""Three bridge replicas share 30 rooms through Kafka's consumer group or NATS KV leases.

Each replica is a real ``python -m bridge run`` process (loopback-only ICE) against the simulator, with
the same LiveKit identity (so LiveKit's duplicate-identity rule fences a stale owner). The test polls
every replica's ``/rooms`` every 100 ms and checks:

1. every room is owned, and joined, by exactly one replica; the rooms-per-replica balance is reported;
2. SIGKILL one replica: its rooms are owned (and joined) again within the engine's bound (Kafka: group
   session timeout + 5 s; NATS: lease TTL + 2 s), and no room is run by two replicas for longer than
   the handover overlap;
3. SIGTERM another: it exits 0 after a make-before-break handover (its sessions evicted by the new
   owner's joins, not left first), and the survivor runs every room.

A consumer on the events bus checks that the changes are published: the survivors' ``ownership_changed``
acquisitions of the killed replica's rooms, and the terminated replica's releases of its rooms.

With NATS leases, commands sent as NATS requests reach any replica of the queue group; a replica that
does not hold the room's lease forwards the command to the one that does, so every command is applied,
and a ``join_room`` for a new room ends with exactly one replica in it.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from bridge._proto import commands_pb2, events_pb2
from bridge.demo_services import free_port
from support.bench import API_KEY, API_SECRET, IDENTITY, LAUNCHER, admin_rooms, report, spawn, stop, tail
from support.brokers import unique_name
from support.bus_consumers import Collector, KafkaCollector, NatsCollector, create_topic
from support.command_clients import NatsCommands
from support.waiting import eventually

ROOMS: Final = [f"shard-{i:02d}" for i in range(30)]
PARTITIONS: Final = 12
KAFKA_SESSION_S: Final = 6.0
LEASE_TTL_S: Final = 3.0
HANDOVER_S: Final = 10.0
POLL_S: Final = 0.1
APPLIED: Final = events_pb2.CommandResult.STATUS_APPLIED
OWNERSHIP_CHANGED: Final = "io.livekit.bridge.ownership_changed.v1"


@dataclass
class Replica:
    name: str
    config: Path
    log: Path
    url: str
    proc: Any = None

    def rooms(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{self.url}/rooms", timeout=2) as response:  # loopback only
                data: dict[str, Any] = json.load(response)
                return data
        except OSError:
            return None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:  # loopback only
                return bool(response.status == 200)
        except OSError:
            return False


@dataclass
class Observer:
    """Per poll: which replicas report each room owned / joined; overlap time per room."""

    replicas: list[Replica]
    rooms: list[str] = field(default_factory=lambda: list(ROOMS))
    owned: dict[str, set[str]] = field(default_factory=dict)
    joined: dict[str, set[str]] = field(default_factory=dict)
    max_overlap_s: float = 0.0
    _overlap_since: dict[str, float] = field(default_factory=dict)

    async def poll(self) -> None:
        answers = await asyncio.gather(*(asyncio.to_thread(r.rooms) for r in self.replicas))
        now = time.monotonic()
        for replica, answer in zip(self.replicas, answers, strict=True):
            if answer is None:
                self.owned.pop(replica.name, None)
                self.joined.pop(replica.name, None)
                continue
            self.owned[replica.name] = set(answer["owned"])
            self.joined[replica.name] = set(answer["joined"])
        for room in self.rooms:
            if len(self.runners(room)) > 1:
                since = self._overlap_since.setdefault(room, now)
                self.max_overlap_s = max(self.max_overlap_s, now - since)
            else:
                self._overlap_since.pop(room, None)

    def owners(self, room: str) -> set[str]:
        return {n for n, o in self.owned.items() if room in o}

    def runners(self, room: str) -> set[str]:
        return {n for n, j in self.joined.items() if room in j}

    def exactly_once(self, among: set[str] | None = None) -> bool:
        return all(
            len(self.owners(r)) == 1
            and self.runners(r) == self.owners(r)
            and (among is None or self.owners(r) <= among)
            for r in self.rooms
        )

    def balance(self) -> dict[str, int]:
        return {n: len(o) for n, o in sorted(self.owned.items())}


@pytest.fixture
def sim_port(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    args = ["-c", LAUNCHER, "sim", "--port", str(port), "--api-key", API_KEY, "--api-secret", API_SECRET]
    sim = spawn(args, tmp_path / "sim.log", piped=False)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                admin_rooms(port)
                break
            except OSError:
                assert sim.poll() is None, tail(tmp_path / "sim.log")
                assert time.monotonic() < deadline, tail(tmp_path / "sim.log")
                time.sleep(0.2)  # poll interval while the simulator starts
        yield port
    finally:
        stop(sim, deadline_s=15)


def _replicas(
    tmp_path: Path, sim_port: int, bus: dict[str, Any], *, rooms: list[str] = ROOMS
) -> list[Replica]:
    out = []
    for i in range(3):
        port = free_port()
        config = tmp_path / f"bridge-{i}.yaml"
        settings = {
            "livekit": {
                "url": f"ws://127.0.0.1:{sim_port}",
                "api_key": API_KEY,
                "api_secret": API_SECRET,
                "identity": IDENTITY,  # the same on every replica: LiveKit fences a stale owner
            },
            "rooms": {"static": rooms},
            "http": {"listen": f"127.0.0.1:{port}"},
            **bus,
            # Named after the replica, so its ownership_changed events say which one it was.
            "ownership": {**bus["ownership"], "replica_id": f"r{i}"},
        }
        config.write_text(yaml.safe_dump(settings))
        out.append(Replica(f"r{i}", config, tmp_path / f"bridge-{i}.log", f"http://127.0.0.1:{port}"))
    return out


def _ownership_changes(collector: Collector, since: float) -> list[events_pb2.OwnershipChanged]:
    """The ownership_changed events made at or after wall-clock time ``since``."""
    return [
        events_pb2.OwnershipChanged.FromString(r.attrs["data"])
        for r in list(collector.received)
        if r.attrs["type"] == OWNERSHIP_CHANGED
        and datetime.fromisoformat(r.attrs["time"]).timestamp() >= since
    ]


async def _published(
    collector: Collector, since: float, rooms: set[str], *, acquired: bool, by: set[str], mode: str
) -> None:
    def seen() -> set[str]:
        return {
            m.room
            for m in _ownership_changes(collector, since)
            if m.acquired is acquired
            and m.replica in by
            and m.mode == mode
            and (m.fencing_token > 0 if mode == "nats" else m.fencing_token == 0)
        }

    what = "acquired" if acquired else "released"
    await eventually(
        lambda: rooms <= seen(), within=15, what=f"ownership_changed ({what}) for {len(rooms)} rooms"
    )


async def _run_scenario(
    replicas: list[Replica],
    pytestconfig: pytest.Config,
    *,
    mode: str,
    failover_bound_s: float,
    collector: Collector,
) -> None:
    await collector.start()
    for r in replicas:
        r.proc = spawn(["-c", LAUNCHER, "run", "--config", str(r.config)], r.log, piped=False)
    obs = Observer(replicas)
    try:
        started = time.monotonic()

        async def all_ready() -> bool:
            for r in replicas:
                assert r.proc.poll() is None, f"{r.name} exited:\n{tail(r.log)}"
            return all(await asyncio.gather(*(asyncio.to_thread(r.ready) for r in replicas)))

        await eventually(all_ready, within=60, what="3 replicas ready", interval=0.2)

        async def settled(among: set[str] | None = None) -> bool:
            await obs.poll()
            return obs.exactly_once(among)

        await eventually(settled, within=60, what="every room owned and joined exactly once", interval=POLL_S)
        startup_s = time.monotonic() - started
        balance = obs.balance()
        assert sum(balance.values()) == len(ROOMS)

        # SIGKILL one replica: its rooms must be owned and joined again within the bound.
        victim, survivors = replicas[0], replicas[1:]
        lost = {room for room in ROOMS if obs.owners(room) == {victim.name}}
        obs.max_overlap_s = 0.0
        killed_wall = time.time()
        victim.proc.kill()
        killed_at = time.monotonic()
        victim.proc.wait(timeout=10)
        back: dict[str, float] = {}

        async def taken_over() -> bool:
            await obs.poll()
            now = time.monotonic()
            for room in lost - back.keys():
                runners = obs.runners(room)
                if runners and obs.owners(room) == runners and victim.name not in runners:
                    back[room] = now - killed_at
            return back.keys() == lost

        await eventually(
            taken_over, within=failover_bound_s + 20, what="the killed replica's rooms taken over"
        )
        await eventually(
            lambda: settled({r.name for r in survivors}), within=30, what="2 survivors own every room once"
        )
        kill_overlap = obs.max_overlap_s
        kill_balance = obs.balance()
        survivor_names = {r.name for r in survivors}
        await _published(collector, killed_wall, lost, acquired=True, by=survivor_names, mode=mode)

        # SIGTERM another: make-before-break handover to the last replica.
        leaver, last = survivors
        handed = {room for room in ROOMS if obs.owners(room) == {leaver.name}}
        obs.max_overlap_s = 0.0
        termed_wall = time.time()
        leaver.proc.terminate()
        termed_at = time.monotonic()
        moved: dict[str, float] = {}

        async def handed_over() -> bool:
            await obs.poll()
            now = time.monotonic()
            for room in handed - moved.keys():
                if last.name in obs.runners(room):
                    moved[room] = now - termed_at
            return moved.keys() == handed

        await eventually(handed_over, within=60, what="the terminated replica's rooms handed over")
        code = await asyncio.to_thread(leaver.proc.wait, 60)
        term_overlap = obs.max_overlap_s
        await eventually(lambda: settled({last.name}), within=30, what="the last replica owns every room")
        assert code == 0, f"SIGTERM exit code {code}:\n{tail(leaver.log)}"
        assert "every room taken over by another replica" in leaver.log.read_text(), tail(leaver.log)
        await _published(collector, termed_wall, handed, acquired=False, by={leaver.name}, mode=mode)

        times = sorted(back.values())
        report(
            pytestconfig,
            f"\n[{mode}] startup to all owned once: {startup_s:.1f} s; balance {balance} "
            f"(after kill {kill_balance})\n"
            f"[{mode}] SIGKILL failover over {len(times)} rooms (bound {failover_bound_s:.1f} s): "
            f"min {times[0]:.2f} p50 {times[len(times) // 2]:.2f} max {times[-1]:.2f} s; "
            f"max double-run overlap {kill_overlap:.2f} s\n"
            f"[{mode}] SIGTERM handover of {len(handed)} rooms: max {max(moved.values(), default=0):.2f} s, "
            f"max double-run overlap {term_overlap:.2f} s, exit {code}",
        )
        assert times[-1] <= failover_bound_s, f"failover took {times[-1]:.2f} s > {failover_bound_s} s"
        assert kill_overlap <= HANDOVER_S
        assert term_overlap <= HANDOVER_S
    finally:
        for r in replicas:
            stop(r.proc, deadline_s=30)
        await collector.aclose()


@pytest.mark.slow
async def test_kafka_group_shares_rooms(
    kafka_broker: Any, sim_port: int, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    commands, events = unique_name("own-commands"), unique_name("own-events")
    await create_topic(kafka_broker.bootstrap, commands, partitions=PARTITIONS)
    await create_topic(kafka_broker.bootstrap, events)  # the collector reads it from the start
    bus = {
        "kafka": {
            "bootstrap_servers": kafka_broker.bootstrap,
            "events_topic": events,
            "commands_topic": commands,
            "dead_letter_topic": unique_name("own-dlq"),
            "commands_group_id": unique_name("own-group"),
            "enable_idempotence": False,  # tansu refuses InitProducerId
            "session_timeout_s": KAFKA_SESSION_S,
        },
        "ownership": {"mode": "kafka", "handover_timeout_s": HANDOVER_S},
    }
    replicas = _replicas(tmp_path, sim_port, bus)
    await _run_scenario(
        replicas,
        pytestconfig,
        mode="kafka",
        failover_bound_s=KAFKA_SESSION_S + 5,
        collector=KafkaCollector(kafka_broker.bootstrap, events),
    )


def _nats_leases(url: str, prefix: str) -> dict[str, Any]:
    """Bridge settings for NATS (events and commands under ``prefix``) with ownership by KV leases."""
    return {
        "nats": {"servers": [url], "subject_prefix": prefix},
        "ownership": {
            "mode": "nats",
            "lease_ttl_s": LEASE_TTL_S,
            "handover_timeout_s": HANDOVER_S,
            "bucket": unique_name(prefix.split("-", maxsplit=1)[0]),
        },
    }


@pytest.mark.slow
async def test_nats_leases_share_rooms(
    nats_server: Any, sim_port: int, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    prefix = unique_name("own")
    bus = _nats_leases(nats_server.url, prefix)
    replicas = _replicas(tmp_path, sim_port, bus)
    await _run_scenario(
        replicas,
        pytestconfig,
        mode="nats",
        failover_bound_s=LEASE_TTL_S + 2,
        collector=NatsCollector(nats_server.url, prefix),
    )


@pytest.mark.slow
async def test_nats_commands_reach_the_lease_holder(
    nats_server: Any, sim_port: int, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    """Every command sent as a NATS request is applied, whichever replica the queue group picks."""
    rooms = ROOMS[:9]
    prefix = unique_name("fwd")
    bus = _nats_leases(nats_server.url, prefix)
    replicas = _replicas(tmp_path, sim_port, bus, rooms=rooms)
    client = NatsCommands(nats_server.url, prefix=prefix)
    await client.start()
    for r in replicas:
        r.proc = spawn(["-c", LAUNCHER, "run", "--config", str(r.config)], r.log, piped=False)
    obs = Observer(replicas, rooms=list(rooms))
    try:

        async def settled() -> bool:
            for r in replicas:
                assert r.proc.poll() is None, f"{r.name} exited:\n{tail(r.log)}"
            await obs.poll()
            return obs.exactly_once()

        await eventually(settled, within=60, what="every room owned and joined exactly once", interval=POLL_S)

        # Three commands per room: with 3 replicas in the queue group most land on a non-owner.
        started = time.monotonic()
        sent = [
            await client.send(
                room, "bridge.update_room_metadata", commands_pb2.UpdateRoomMetadata(metadata=f"m{i}")
            )
            for i in range(3)
            for room in rooms
        ]
        commands_s = time.monotonic() - started
        statuses = {cid: client.replies[cid] for cid in sent}
        wrong = {cid: (r.status, r.code, r.message) for cid, r in statuses.items() if r.status != APPLIED}
        assert not wrong, wrong

        # join_room for a room nobody has: it becomes a candidate and exactly one replica joins it.
        new_room = "shard-new"
        cid = await client.send(new_room, "bridge.join_room", commands_pb2.JoinRoom(room=new_room))
        joined = client.replies[cid]
        assert joined.status == APPLIED, joined
        obs.rooms.append(new_room)
        await eventually(settled, within=30, what=f"{new_room} owned and joined by exactly one replica")
        assert len(obs.runners(new_room)) == 1
        # Its commands now reach its owner too.
        after = [
            await client.send(
                new_room, "bridge.update_room_metadata", commands_pb2.UpdateRoomMetadata(metadata=f"n{i}")
            )
            for i in range(6)
        ]
        late = {c: client.replies[c] for c in after if client.replies[c].status != APPLIED}
        assert not late, late
        report(
            pytestconfig,
            f"\n[nats] {len(sent)} commands over 3 replicas, all applied in {commands_s:.2f} s; "
            f"join_room: {joined.message!r}, joined by {sorted(obs.runners(new_room))}",
        )
    finally:
        for r in replicas:
            stop(r.proc, deadline_s=30)
        await client.aclose()
