"""The batch framing the NATS publisher writes is byte for byte what nats-py's ``publish`` would write."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.protocol.command import hpub_cmd

from bridge.bus.nats_wire import batch_frames, header_block, header_block_size


def _nats_py(subject: str, block: bytes, payload: bytes) -> bytes:
    # nats-py leaves an empty reply-to field as a double space; the protocol splits on runs of spaces.
    return hpub_cmd(subject, "", bytearray(block), payload).replace(b"  ", b" ", 1)


def test_header_block_and_one_command_match_nats_py() -> None:
    headers = {"Content-Type": "application/cloudevents+json", "ce-id": "abc%20d"}
    block = header_block(headers)
    assert block == b"NATS/1.0\r\nContent-Type: application/cloudevents+json\r\nce-id: abc%20d\r\n\r\n"
    payload = b'{"id":"1"}'
    assert batch_frames([("p.events.r.t", block, payload)]) == _nats_py("p.events.r.t", block, payload)


def test_a_batch_is_the_commands_in_order() -> None:
    block = header_block({"Content-Type": "x"})
    frames = batch_frames([("a.b", block, b"1"), ("a.c", block, b"22")])
    assert frames == _nats_py("a.b", block, b"1") + _nats_py("a.c", block, b"22")
    assert frames.count(b"HPUB ") == 2


@pytest.mark.parametrize(
    ("headers", "subject"),
    [({"bad name": "v"}, "s"), ({"k": "line\r\nbreak"}, "s"), ({"k": "v"}, "has space"), ({"k": "v"}, "")],
)
def test_what_nats_cannot_carry_is_refused(headers: dict[str, str], subject: str) -> None:
    with pytest.raises(ValueError, match="NATS"):
        batch_frames([(subject, header_block(headers), b"")])


@given(
    st.dictionaries(
        st.from_regex(r"[A-Za-z0-9-]{1,12}", fullmatch=True),
        st.text(alphabet=st.characters(blacklist_characters="\r\n"), max_size=30),
        max_size=8,
    )
)
def test_header_block_size_is_the_blocks_length(headers: dict[str, str]) -> None:
    try:
        block = header_block(headers)
    except UnicodeEncodeError:  # a lone surrogate: no block either way
        return
    assert header_block_size(headers) == len(block)
