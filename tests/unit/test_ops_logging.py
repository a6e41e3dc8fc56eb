"""Log output: one JSON object per line with room/session extras, plain lines, and no secret in either."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from bridge.config import REDACTED, LoggingSettings, Secret, load_settings
from bridge.ops.logging import JsonFormatter, PlainFormatter, configure_logging, secrets_in

SECRET = Secret("hunter2-the-api-secret")
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def record(msg: str, *args: object, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("bridge.rooms.session", level, __file__, 1, msg, args, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_json_line_has_the_fields_and_extras() -> None:
    line = JsonFormatter().format(record("room session started room=%s", "r1", room="r1", session="BS_1"))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "INFO"
    assert entry["logger"] == "bridge.rooms.session"
    assert entry["message"] == "room session started room=r1"
    assert (entry["room"], entry["session"]) == ("r1", "BS_1")
    assert entry["time"].endswith("Z")
    assert "T" in entry["time"]
    assert set(entry) == {"time", "level", "logger", "message", "room", "session"}


def test_json_line_without_extras_and_with_an_exception() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        import sys

        rec = record("failed", level=logging.ERROR)
        rec.exc_info = sys.exc_info()
    line = JsonFormatter().format(rec)
    assert line.count("\n") == 0  # the traceback is escaped inside the one object
    entry = json.loads(line)
    assert "room" not in entry
    assert "Traceback" in entry["exception"]
    assert "boom" in entry["exception"]


@pytest.mark.parametrize("formatter", [JsonFormatter(), PlainFormatter()], ids=["json", "plain"])
def test_a_secret_argument_prints_redacted(formatter: logging.Formatter) -> None:
    line = formatter.format(record("connecting with %s / %r", SECRET, SECRET, room=SECRET))
    assert SECRET.reveal() not in line
    assert REDACTED in line


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
@pytest.mark.parametrize("json_", [True, False], ids=["json", "plain"])
def test_revealed_secrets_and_tokens_are_scrubbed(json_: bool) -> None:
    stream = io.StringIO()
    settings = LoggingSettings.model_validate({"json": json_})
    configure_logging(settings, secrets=[SECRET], stream=stream)
    logging.getLogger("bridge.test").warning("oops %s token=%s", SECRET.reveal(), JWT)
    out = stream.getvalue()
    assert out.count("\n") == 1
    assert SECRET.reveal() not in out
    assert JWT not in out
    assert REDACTED in out
    assert "<token>" in out
    if json_:
        assert json.loads(out)["logger"] == "bridge.test"


@pytest.mark.usefixtures("root_logging")
def test_configure_logging_replaces_handlers_and_sets_the_level() -> None:
    settings = LoggingSettings.model_validate({"level": "debug", "json": True})
    handler = configure_logging(settings)
    root = logging.getLogger()
    assert root.handlers == [handler]
    assert root.level == logging.DEBUG
    configure_logging(settings, level="error")  # --log-level wins
    assert root.level == logging.ERROR
    assert len(root.handlers) == 1


def test_secrets_in_finds_every_secret_in_the_settings() -> None:
    settings = load_settings(
        None,
        {
            "BRIDGE_LIVEKIT__URL": "ws://lk:7880",
            "BRIDGE_LIVEKIT__API_KEY": "k",
            "BRIDGE_LIVEKIT__API_SECRET": "lk-secret",
            "BRIDGE_NATS__SERVERS": "nats://n:4222",
            "BRIDGE_NATS__TOKEN": "nats-token",
        },
    )
    assert sorted(s.reveal() for s in secrets_in(settings)) == ["lk-secret", "nats-token"]
