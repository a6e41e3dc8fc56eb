"""Shared fixtures: real brokers (never mocked) and the rule that broker/SDK tests may not be skipped.

Fixtures
  ``nats_server``        the session's nats-server (JetStream on); ``.url``. Restarted for the next test if a
                         test stopped it, but prefer ``fresh_nats_server`` for stop/start tests.
  ``kafka_broker``       the session's Kafka-protocol broker (tansu, or ``BRIDGE_TEST_KAFKA_BOOTSTRAP``);
                         ``.bootstrap``.
  ``fresh_nats_server``  a new nats-server for this test only; ``.stop()``, ``.kill()`` and ``.start()``
                         keep the port (and the JetStream store).
  ``fresh_kafka_broker`` a new tansu for this test only (always local, even with the env var set, so it can be
                         stopped); tansu keeps everything in memory, so a restart comes back empty.

Tests that use a broker fixture get the ``nats``/``kafka`` marker automatically. A test marked ``nats``,
``kafka`` or ``sdk`` that skips is reported as a FAILURE: everything these tests need is in the dev extra,
so a skip means something is broken. ``support.skipping.allowed_skip(reason)`` is the one deliberate way
out (e.g. a test that cannot apply to an external Kafka); ``BRIDGE_TEST_ALLOW_SKIPS=1`` turns the rule off
for a local run.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Final

import pytest

from support.brokers import (
    ExternalKafka,
    KafkaBroker,
    NatsServer,
    start_kafka_broker,
    start_nats_server,
)
from support.skipping import AllowedSkip

MUST_RUN_MARKERS: Final = ("nats", "kafka", "sdk")
ALLOW_SKIPS_ENV: Final = "BRIDGE_TEST_ALLOW_SKIPS"
_FIXTURE_MARKERS: Final = {
    "nats_server": "nats",
    "fresh_nats_server": "nats",
    "kafka_broker": "kafka",
    "fresh_kafka_broker": "kafka",
}


# -- brokers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _session_nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = start_nats_server(workdir=tmp_path_factory.mktemp("nats-server"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def nats_server(_session_nats_server: NatsServer) -> NatsServer:
    return _session_nats_server.ensure_running()


@pytest.fixture(scope="session")
def _session_kafka_broker(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[KafkaBroker | ExternalKafka]:
    broker = start_kafka_broker(workdir=tmp_path_factory.mktemp("kafka-broker"))
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def kafka_broker(_session_kafka_broker: KafkaBroker | ExternalKafka) -> KafkaBroker | ExternalKafka:
    return _session_kafka_broker.ensure_running()


@pytest.fixture
def fresh_nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = start_nats_server(workdir=tmp_path / "nats-server")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def fresh_kafka_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    broker = start_kafka_broker(workdir=tmp_path / "tansu", allow_external=False)
    assert isinstance(broker, KafkaBroker)
    try:
        yield broker
    finally:
        broker.close()


# -- markers: broker tests are marked, and may not skip ---------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixturenames = getattr(item, "fixturenames", ())
        for fixture, marker in _FIXTURE_MARKERS.items():
            if fixture in fixturenames and item.get_closest_marker(marker) is None:
                item.add_marker(marker)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if not report.skipped or hasattr(report, "wasxfail") or os.environ.get(ALLOW_SKIPS_ENV) == "1":
        return report
    if call.excinfo is not None and isinstance(call.excinfo.value, AllowedSkip):
        return report
    markers = [name for name in MUST_RUN_MARKERS if item.get_closest_marker(name) is not None]
    if markers:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} is marked {'/'.join(markers)} and must run, but it skipped: {reason}\n"
            "The brokers and the LiveKit SDK come from the dev extra (`make install`). Use "
            f"allowed_skip() for a deliberate skip, or {ALLOW_SKIPS_ENV}=1 for a local run."
        )
    return report
