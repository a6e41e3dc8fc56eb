"""Text streams reassembled from their data packets. Pure: no I/O, no clock.

The LiveKit SDKs send text (``sendText`` / ``streamText``: chat on ``lk.chat``, agent transcriptions on
``lk.transcription``, ...) as a ``stream_header`` with a text header, ``stream_chunk``s and a
``stream_trailer``, all with the same ``stream_id``. :class:`TextStreamAssembler` turns the pieces of one
sender's stream into one :class:`~bridge._proto.events_pb2.TextStream` once the trailer arrives.

Every buffer is bounded: at most ``max_open`` streams are being assembled per room (a new one evicts the
oldest, counted in ``evicted``) and each keeps at most ``max_bytes`` of text (the rest is dropped, the
result is marked ``truncated`` and counted). Chunks or trailers of a stream whose header was never seen
(joined mid-stream, or evicted) are counted in ``orphans`` and ignored. Byte streams and encrypted
streams are not assembled (``skipped``).
"""

from __future__ import annotations

import collections
import zlib
from dataclasses import dataclass, field

from livekit.protocol import models

from bridge._proto import events_pb2

__all__ = ["AssemblerStats", "TextStreamAssembler"]

_NO_ENCRYPTION = models.Encryption.Type.NONE
_DEFLATE_RAW = 1  # DataStream.Header.compression (CAP_COMPRESSION_DEFLATE_RAW senders)


@dataclass(slots=True)
class AssemblerStats:
    opened: int = 0
    completed: int = 0
    evicted: int = 0  # open streams dropped because max_open was reached
    truncated: int = 0  # completed streams whose text exceeded max_bytes
    orphans: int = 0  # chunks/trailers of unknown streams
    skipped: int = 0  # byte or encrypted stream headers (not assembled)
    undecodable: int = 0  # compressed content that did not inflate (emitted with empty text)


@dataclass(slots=True)
class _Open:
    header: models.DataStream.Header
    sender: str
    chunks: dict[int, bytes] = field(default_factory=dict)
    size: int = 0
    received: int = 0  # chunks
    truncated: bool = False


class TextStreamAssembler:
    """One room's text streams in flight; feed it every stream packet with its sender's identity."""

    def __init__(self, *, max_open: int = 64, max_bytes: int = 1024 * 1024) -> None:
        if max_open < 1 or max_bytes < 1:
            raise ValueError("max_open and max_bytes must be positive")
        self.max_open = max_open
        self.max_bytes = max_bytes
        self._open: collections.OrderedDict[tuple[str, str], _Open] = collections.OrderedDict()
        self.stats = AssemblerStats()

    def __len__(self) -> int:
        return len(self._open)

    def feed(self, packet: models.DataPacket, sender: str) -> events_pb2.TextStream | None:
        """Take one packet; returns the assembled stream when ``packet`` completed one."""
        kind = packet.WhichOneof("value")
        if kind == "stream_header":
            self._header(packet.stream_header, sender)
        elif kind == "stream_chunk":
            self._chunk(packet.stream_chunk, sender)
        elif kind == "stream_trailer":
            return self._trailer(packet.stream_trailer, sender)
        return None

    def _header(self, header: models.DataStream.Header, sender: str) -> None:
        if header.WhichOneof("content_header") != "text_header" or header.encryption_type != _NO_ENCRYPTION:
            self.stats.skipped += 1
            return
        key = (sender, header.stream_id)
        self._open.pop(key, None)  # a repeated header restarts the stream
        while len(self._open) >= self.max_open:
            self._open.popitem(last=False)
            self.stats.evicted += 1
        copy = models.DataStream.Header()
        copy.CopyFrom(header)
        stream = self._open[key] = _Open(header=copy, sender=sender)
        self.stats.opened += 1
        if header.inline_content:
            self._add(stream, -1, bytes(header.inline_content))

    def _chunk(self, chunk: models.DataStream.Chunk, sender: str) -> None:
        stream = self._open.get((sender, chunk.stream_id))
        if stream is None:
            self.stats.orphans += 1
            return
        stream.received += 1
        self._add(stream, chunk.chunk_index, bytes(chunk.content))

    def _add(self, stream: _Open, index: int, content: bytes) -> None:
        if not content or stream.truncated:
            return  # nothing to keep; and past the limit no key is added (the dict stays bounded)
        stream.size -= len(stream.chunks.get(index, b""))  # a repeated chunk replaces the first
        room = self.max_bytes - stream.size
        if len(content) > room:
            stream.truncated = True
            content = content[:room]
        stream.chunks[index] = content
        stream.size += len(content)

    def _inflate(self, data: bytes, stream: _Open) -> bytes:
        """Raw-deflate content, inflated to at most ``max_bytes`` (a bomb is cut, marked truncated)."""
        inflater = zlib.decompressobj(wbits=-15)
        try:
            out = inflater.decompress(data, self.max_bytes)
        except zlib.error:
            self.stats.undecodable += 1
            return b""
        if inflater.unconsumed_tail:
            stream.truncated = True
        return out

    def _trailer(self, trailer: models.DataStream.Trailer, sender: str) -> events_pb2.TextStream | None:
        stream = self._open.pop((sender, trailer.stream_id), None)
        if stream is None:
            self.stats.orphans += 1
            return None
        header = stream.header
        text_header = header.text_header
        data = b"".join(stream.chunks[i] for i in sorted(stream.chunks))
        if header.compression == _DEFLATE_RAW and not stream.truncated:
            data = self._inflate(data, stream)
        attributes = dict(header.attributes)
        attributes.update(trailer.attributes)
        self.stats.completed += 1
        if stream.truncated:
            self.stats.truncated += 1
        return events_pb2.TextStream(
            stream_id=header.stream_id,
            topic=header.topic,
            # A cut may split a UTF-8 sequence: replace rather than fail.
            text=data.decode("utf-8", errors="replace"),
            participant_identity=stream.sender,
            timestamp=header.timestamp,
            attributes=attributes,
            mime_type=header.mime_type,
            operation_type=text_header.operation_type,
            reply_to_stream_id=text_header.reply_to_stream_id,
            attached_stream_ids=list(text_header.attached_stream_ids),
            generated=text_header.generated,
            chunks=stream.received,
            truncated=stream.truncated,
            reason=trailer.reason,
        )
