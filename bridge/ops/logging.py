"""Log output: plain lines for people, or one JSON object per line for collectors (``logging.json``).

A JSON line has ``time`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``, ``message``, ``room`` and
``session`` when the record carries them as extras (``log.info(..., extra={"room": r})``), and
``exception`` with the traceback when there is one.

Secrets: the code never logs one, and :class:`~bridge.config.Secret` prints as ``**********`` wherever it
is formatted. As a second line of defence every formatted line is scrubbed of the configured secrets'
values and of anything shaped like a JWT (join tokens, webhook signatures).
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from typing import Any, Final, TextIO

from pydantic import BaseModel

from bridge.config import REDACTED, LoggingSettings, Secret

__all__ = ["JsonFormatter", "PlainFormatter", "configure_logging", "secrets_in"]

PLAIN_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
EXTRAS: Final = ("room", "session")
_JWT: Final = re.compile(r"eyJ[\w-]*\.[\w-]+\.[\w-]*")
_MIN_SECRET_CHARS: Final = 4  # shorter values would blank out ordinary words


class _Scrubber:
    def __init__(self, secrets: Iterable[Secret]) -> None:
        values = {s.reveal() for s in secrets}
        # Longest first, so a secret that contains another is replaced whole.
        self._values = sorted((v for v in values if len(v) >= _MIN_SECRET_CHARS), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, REDACTED)
        return _JWT.sub("<token>", text) if "eyJ" in text else text


class PlainFormatter(logging.Formatter):
    """``time LEVEL logger: message``, scrubbed."""

    def __init__(self, secrets: Iterable[Secret] = ()) -> None:
        super().__init__(PLAIN_FORMAT)
        self._scrub = _Scrubber(secrets)

    def format(self, record: logging.LogRecord) -> str:
        return self._scrub(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see module docstring), scrubbed."""

    def __init__(self, secrets: Iterable[Secret] = ()) -> None:
        super().__init__()
        self._scrub = _Scrubber(secrets)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": self._scrub(record.getMessage()),
        }
        for key in EXTRAS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = self._scrub(str(value))
        if record.exc_info:
            entry["exception"] = self._scrub(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = self._scrub(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False)


def secrets_in(model: BaseModel) -> list[Secret]:
    """Every :class:`Secret` in a settings tree (for the scrubber)."""
    return list(_walk(model))


def _walk(value: object) -> Iterator[Secret]:
    if isinstance(value, Secret):
        yield value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _walk(getattr(value, name))
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _walk(item)


def configure_logging(
    settings: LoggingSettings,
    *,
    secrets: Iterable[Secret] = (),
    level: str | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Replace the root logger's handlers with one that writes ``settings``' format to ``stream``
    (stderr); ``level`` (e.g. from ``--log-level``) wins over ``settings.level``. Returns the handler."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    secrets = list(secrets)
    handler.setFormatter(JsonFormatter(secrets) if settings.json_ else PlainFormatter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel((level or settings.level).upper())
    return handler
