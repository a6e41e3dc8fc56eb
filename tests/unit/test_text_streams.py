"""TextStreamAssembler: assembly, bounds and what each overflow counts."""

from __future__ import annotations

import zlib

from livekit.protocol import models

from bridge.events.streams import TextStreamAssembler


def header(stream_id: str, *, text: bool = True, compression: int = 0) -> models.DataPacket:
    h = models.DataStream.Header(stream_id=stream_id, topic="lk.chat", compression=compression)  # type: ignore[arg-type]
    if text:
        h.text_header.CopyFrom(models.DataStream.TextHeader())
    else:
        h.byte_header.CopyFrom(models.DataStream.ByteHeader(name="f.bin"))
    return models.DataPacket(stream_header=h)


def chunk(stream_id: str, index: int, content: bytes) -> models.DataPacket:
    return models.DataPacket(
        stream_chunk=models.DataStream.Chunk(stream_id=stream_id, chunk_index=index, content=content)
    )


def trailer(stream_id: str) -> models.DataPacket:
    return models.DataPacket(stream_trailer=models.DataStream.Trailer(stream_id=stream_id, reason="done"))


def test_chunks_are_joined_in_index_order_per_sender() -> None:
    asm = TextStreamAssembler()
    assert asm.feed(header("s"), "alice") is None
    assert asm.feed(header("s"), "bob") is None  # same id, other sender: another stream
    asm.feed(chunk("s", 1, b"world"), "alice")
    asm.feed(chunk("s", 0, b"hello "), "alice")
    done = asm.feed(trailer("s"), "alice")
    assert done is not None
    assert (done.text, done.chunks, done.reason) == ("hello world", 2, "done")
    assert done.participant_identity == "alice"
    assert len(asm) == 1  # bob's is still open


def test_bounds_evict_truncate_and_count_orphans() -> None:
    asm = TextStreamAssembler(max_open=2, max_bytes=4)
    for sid in ("a", "b", "c"):
        asm.feed(header(sid), "x")
    assert (len(asm), asm.stats.evicted) == (2, 1)
    assert asm.feed(trailer("a"), "x") is None  # evicted: an orphan now
    assert asm.stats.orphans == 1
    asm.feed(chunk("b", 0, b"abc"), "x")
    asm.feed(chunk("b", 1, b"defgh"), "x")
    asm.feed(chunk("b", 2, b"ijk"), "x")
    done = asm.feed(trailer("b"), "x")
    assert done is not None
    assert (done.text, done.truncated, done.chunks) == ("abcd", True, 3)
    assert asm.stats.truncated == 1


def test_byte_streams_are_skipped_and_deflate_is_inflated() -> None:
    asm = TextStreamAssembler()
    asm.feed(header("f", text=False), "x")
    assert asm.stats.skipped == 1
    assert len(asm) == 0
    packer = zlib.compressobj(wbits=-15)
    raw = packer.compress("ünïcode text".encode()) + packer.flush()
    asm.feed(header("z", compression=1), "x")
    asm.feed(chunk("z", 0, raw[:3]), "x")
    asm.feed(chunk("z", 1, raw[3:]), "x")
    done = asm.feed(trailer("z"), "x")
    assert done is not None
    assert done.text == "ünïcode text"
