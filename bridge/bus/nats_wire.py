"""NATS client-protocol framing for a batch of publishes (pure: bytes in, bytes out).

nats-py's ``publish`` rebuilds the header block of every message (a regex check and an encode per
header) and appends one buffer per message to its write queue. A structured CloudEvent always has the
same one header, so the bridge encodes that block once, frames a whole batch as consecutive ``HPUB``
commands and hands the client a single buffer (:class:`~bridge.bus.nats.NatsPublisher`). The bytes are
exactly what nats-py would have written: ``HPUB <subject> <header bytes> <total bytes>\\r\\n<headers>
<payload>\\r\\n`` with the header block ``NATS/1.0\\r\\n(<key>: <value>\\r\\n)*\\r\\n``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final

__all__ = ["BLOCK_END", "BLOCK_START", "batch_frames", "header_block", "header_block_size", "header_lines"]

BLOCK_START: Final = b"NATS/1.0\r\n"  # a header block: BLOCK_START, header lines, BLOCK_END
BLOCK_END: Final = b"\r\n"
_CRLF: Final = b"\r\n"
# RFC 7230 token characters, as nats-py and the server accept them for a header name.
_KEY_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SUBJECT_BAD: Final = frozenset(" \t\r\n")


def header_block(headers: Mapping[str, str]) -> bytes:
    """The encoded header block; ValueError names a key or value NATS would not carry."""
    return b"".join((BLOCK_START, header_lines(headers), BLOCK_END))


def header_block_size(headers: Mapping[str, str]) -> int:
    """``len(header_block(headers))`` without building or checking it: for a size check ahead of a client
    that encodes (and checks) the block itself."""
    size = len(BLOCK_START) + len(BLOCK_END)
    for key, value in headers.items():
        size += len(key.encode()) + len(value.encode()) + 4  # ": " and CRLF
    return size


def header_lines(headers: Mapping[str, str]) -> bytes:
    """The ``<key>: <value>\\r\\n`` lines of a header block, checked (ValueError names a key or value NATS
    would not carry): for parts of a block encoded once and joined per message."""
    parts = []
    for key, value in headers.items():
        if not _KEY_RE.fullmatch(key):
            raise ValueError(f"invalid NATS header name {key!r}")
        if "\r" in value or "\n" in value:
            raise ValueError(f"the value of NATS header {key!r} contains a line break")
        parts.append(f"{key}: {value}\r\n".encode())
    return b"".join(parts)


def batch_frames(messages: Iterable[tuple[str, bytes, bytes]]) -> bytes:
    """``HPUB`` commands for ``(subject, header block, payload)`` triples, as one buffer.

    The parts are joined once, so each payload is copied once (into the buffer the socket gets).
    """
    parts: list[bytes] = []
    for subject, block, payload in messages:
        parts += (_head(subject, block, payload), block, payload, _CRLF)
    return b"".join(parts)


def _head(subject: str, block: bytes, payload: bytes) -> bytes:
    if not subject or not _SUBJECT_BAD.isdisjoint(subject):
        raise ValueError(f"invalid NATS subject {subject!r}")
    return f"HPUB {subject} {len(block)} {len(block) + len(payload)}\r\n".encode()
