"""Kill the bridge (SIGKILL) while commands stream in over Kafka, start it again: nothing is lost and
nothing is applied twice.

"Lost" means a command without exactly one ``command_result``. Every command published before, during and
after the outage gets one. A command the killed process had started but whose result never reached the
bus is answered ``failed/interrupted`` and never applied again; one whose result did reach the bus is
recognised and not applied again; the rest are applied once, by whichever process ran them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from livekit.protocol import rtc

from bridge._proto import events_pb2
from bridge.demo_services import free_port
from bridge.sim.server import SimServer
from support.bench import LAUNCHER
from support.brokers import KafkaBroker, unique_name
from support.bus_consumers import create_topic
from support.command_clients import KafkaCommands, decode_result
from support.signal_client import API_KEY, API_SECRET
from support.simulator import running_sim
from support.waiting import eventually

ROOM = "crash-room"
IDENTITY = "livekit-bridge"
COMMANDS = 240
RATE_PER_S = 150.0


class SessionWatch:
    """Every simulator session the bridge's participant ever had (one per bridge process)."""

    def __init__(self, server: SimServer) -> None:
        self.server = server
        self.sessions: list[Any] = []
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            room = self.server.rooms.get(ROOM)
            participant = room.participants.get(IDENTITY) if room else None
            conn = participant.connection if participant else None
            if conn is not None and all(conn is not s for s in self.sessions):
                self.sessions.append(conn)
            await asyncio.sleep(0.01)  # sampling the simulator's state, not waiting for an outcome

    def metadata_applied(self) -> Counter[str]:
        return Counter(value for value, _ in self.applied_by())

    def applied_by(self) -> list[tuple[str, int]]:
        """(metadata, index of the bridge session that sent it) for every update_metadata seen."""
        return [
            (r.update_metadata.metadata, n)
            for n, s in enumerate(self.sessions)
            for r in list(s.requests)
            if r.WhichOneof("message") == "update_metadata"
        ]

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def start_bridge(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


async def ready(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def stream(client: KafkaCommands, ids: list[str], sent: list[str]) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, cid in enumerate(ids):
        delay = start + i / RATE_PER_S - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the producer, not synchronising
        await client.send(
            ROOM, "update_metadata", rtc.UpdateParticipantMetadata(metadata=f"v{i}"), command_id=cid
        )
        sent.append(cid)


@pytest.mark.slow
async def test_sigkill_mid_stream_loses_nothing_and_applies_nothing_twice(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    names = {k: unique_name(f"crash-{k}") for k in ("events", "commands", "dlq", "state", "group")}
    for key in ("events", "commands", "dlq", "state"):
        await create_topic(kafka_broker.bootstrap, names[key], partitions=2)
    client = KafkaCommands(
        kafka_broker.bootstrap,
        commands_topic=names["commands"],
        events_topic=names["events"],
        dlq_topic=names["dlq"],
    )
    await client.start()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "bridge.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        async with running_sim(ice_servers=()) as (server, scenario):
            scenario.join(ROOM, "alice")
            watch = SessionWatch(server)
            config = tmp_path / "bridge.yaml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "livekit": {
                            "url": server.url,
                            "api_key": API_KEY,
                            "api_secret": API_SECRET,
                            "can_update_own_metadata": True,
                            "reconnect_backoff_initial_s": 0.05,
                        },
                        "rooms": {"static": [ROOM]},
                        "http": {"listen": f"127.0.0.1:{port}"},
                        "kafka": {
                            "bootstrap_servers": [kafka_broker.bootstrap],
                            "events_topic": names["events"],
                            "commands_topic": names["commands"],
                            "dead_letter_topic": names["dlq"],
                            "commands_state_topic": names["state"],
                            "commands_group_id": names["group"],
                            "commands_offset_reset": "earliest",
                            "enable_idempotence": False,
                        },
                        "logging": {"level": "INFO"},
                    }
                )
            )
            procs.append(start_bridge(config, log))
            await eventually(lambda: ready(url), within=60, what="first bridge ready")

            ids = [f"crash-{i:04d}" for i in range(COMMANDS)]
            sent: list[str] = []
            sender = asyncio.create_task(stream(client, ids, sent))
            await eventually(
                lambda: len(client.results()) >= 60, within=60, what="60 results before the kill"
            )
            procs[0].send_signal(signal.SIGKILL)  # mid-stream: commands are being applied right now
            await asyncio.to_thread(procs[0].wait, 10)
            killed_after = len(sent)

            procs.append(start_bridge(config, log))
            await sender  # the rest is published while the bridge is down or starting
            await eventually(
                lambda: all(cid in client.results() for cid in ids),
                within=90,
                what="a result for every command",
            )
            procs[1].send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(procs[1].wait, 30) == 0
            await watch.aclose()
            applied_counts = watch.metadata_applied()
            applied_by = watch.applied_by()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        await client.aclose()

    results = client.results()
    assert all(len(results[cid]) == 1 for cid in ids), "a command got more than one result"
    outcomes: Counter[str] = Counter()
    for i, cid in enumerate(ids):
        result = decode_result(results[cid][0].attrs)
        times = applied_counts[f"v{i}"]
        senders = [n for value, n in applied_by if value == f"v{i}"]
        assert times <= 1, f"{cid} applied {times} times by sessions {senders}; result {result}"
        if result.status == events_pb2.CommandResult.STATUS_APPLIED:
            assert times == 1, f"{cid} reported applied but the room never saw it"
            outcomes["applied"] += 1
        else:
            assert (result.status, result.code) == (events_pb2.CommandResult.STATUS_FAILED, "interrupted"), (
                result
            )
            outcomes["interrupted"] += 1
    assert 0 < killed_after < COMMANDS  # the kill really happened mid-stream
    assert outcomes["applied"] >= COMMANDS - 20, outcomes  # interruptions are only what was in flight
    log_text = log.read_text(errors="replace")
    assert "recovered" in log_text  # the second process looked for the first one's results and markers
