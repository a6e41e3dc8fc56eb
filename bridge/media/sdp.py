"""Offer pre-check for aiortc: neutralise audio/video m-lines aiortc cannot negotiate.

aiortc 1.16 raises ``OperationError`` from ``setRemoteDescription`` for the *whole* offer as soon as
one audio/video m-line shares no codec with ``aiortc.codecs.CODECS`` (VP9-only, AV1-only, H.264
Main/High-only), and it has no notion of a rejected m-line (research: ``media-aiortc.md`` §1.4).
One such track would therefore end the bridge's subscriber PC and, with it, its presence in the room.

:func:`check_offer` finds those m-lines and builds a *munged* offer for aiortc: each one keeps its
mid, ICE/DTLS attributes and its first payload type, but that payload type is relabelled as a codec
aiortc knows (opus / VP8) and the direction becomes ``inactive``. aiortc then accepts the offer,
creates an idle transceiver (no receiver, no ``track`` event) and answers that m-line inactive.
:func:`restore_answer` puts the offerer's own codec back on that m-line of the answer, so the
server sees an answer that only names codecs it offered and simply never sends on that mid.
Every other m-line is left byte-for-byte alone.

Both functions are pure (text in, text out) and raise ``ValueError`` on SDP aiortc cannot parse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiortc import sdp as aiortc_sdp
from aiortc.codecs import CODECS
from aiortc.rtcpeerconnection import find_common_codecs

__all__ = ["OfferCheck", "UnsupportedMedia", "check_offer", "restore_answer"]

_DIRECTIONS = frozenset({"a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"})
# Per-payload-type attributes: replaced wholesale on a neutralised m-line.
_CODEC_ATTRIBUTES = ("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")
# Our own sender's identity on a neutralised m-line of the answer: nothing will ever be sent there.
_SENDER_ATTRIBUTES = ("a=ssrc:", "a=ssrc-group:", "a=msid:")


@dataclass(frozen=True, slots=True)
class UnsupportedMedia:
    """An audio/video m-line of an offer that aiortc cannot negotiate."""

    index: int  # m-line index in the offer
    mid: str
    kind: str  # "audio" / "video"
    codecs: tuple[str, ...]  # what the offer proposed, e.g. ("VP9/90000", "rtx/90000")
    payload_type: int  # the offer's first payload type, kept (relabelled) in the munged offer
    track_id: str | None  # from mid_to_track_id, else the m-line's msid


@dataclass(frozen=True, slots=True)
class OfferCheck:
    """Result of :func:`check_offer`."""

    sdp: str  # the offer to apply: the original text when everything is supported
    unsupported: tuple[UnsupportedMedia, ...] = ()
    mid_to_track_id: dict[str, str] = field(default_factory=dict)  # every audio/video mid we could map
    # Per neutralised mid: the offer's original rtpmap/fmtp lines for ``payload_type``.
    original_codec_lines: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def munged(self) -> bool:
        return bool(self.unsupported)


def check_offer(sdp: str, mid_to_track_id: Mapping[str, str] | None = None) -> OfferCheck:
    """Find audio/video m-lines without an aiortc codec and build an offer aiortc can apply."""
    try:
        parsed: Any = aiortc_sdp.SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser reports bad input as assert/Index/Key/ValueError
        raise ValueError(f"unparsable SDP offer: {exc!r}") from exc
    header, sections = _split(sdp)
    if len(sections) != len(parsed.media):
        raise ValueError("m-line count mismatch while parsing the offer")
    mapping: dict[str, str] = {}
    unsupported: list[UnsupportedMedia] = []
    originals: dict[str, tuple[str, ...]] = {}
    for index, media in enumerate(parsed.media):
        if media.kind not in ("audio", "video"):
            continue
        mid = str(media.rtp.muxId if media.rtp.muxId is not None else index)
        track_id = (mid_to_track_id or {}).get(mid) or _msid_track_id(media)
        if track_id:
            mapping[mid] = track_id
        if find_common_codecs(CODECS[media.kind], media.rtp.codecs):
            continue
        payload_type = _first_payload_type(media)
        unsupported.append(
            UnsupportedMedia(
                index=index,
                mid=mid,
                kind=str(media.kind),
                codecs=tuple(str(codec) for codec in media.rtp.codecs),
                payload_type=payload_type,
                track_id=track_id,
            )
        )
        originals[mid] = tuple(
            line for line in sections[index] if line.startswith(_codec_prefixes(payload_type)[:2])
        )
        sections[index] = _neutralise_offer_section(sections[index], media.kind, payload_type)
    if not unsupported:
        return OfferCheck(sdp=sdp, mid_to_track_id=mapping)
    return OfferCheck(
        sdp=_join(header, sections, sdp),
        unsupported=tuple(unsupported),
        mid_to_track_id=mapping,
        original_codec_lines=originals,
    )


def restore_answer(answer_sdp: str, check: OfferCheck) -> str:
    """Give each neutralised m-line of aiortc's answer the offerer's own codec back, inactive."""
    if not check.unsupported:
        return answer_sdp
    header, sections = _split(answer_sdp)
    by_mid = {item.mid: item for item in check.unsupported}
    for position, section in enumerate(sections):
        mid = next((line[len("a=mid:") :] for line in section if line.startswith("a=mid:")), None)
        item = by_mid.get(mid) if mid is not None else None
        if item is None:
            continue
        kept = [
            line
            for line in section[1:]
            if not line.startswith(_CODEC_ATTRIBUTES + _SENDER_ATTRIBUTES) and line not in _DIRECTIONS
        ]
        sections[position] = [
            _m_line(section[0], item.payload_type),
            *kept,
            "a=inactive",
            *check.original_codec_lines.get(item.mid, ()),
        ]
    return _join(header, sections, answer_sdp)


# ---------------------------------------------------------------------------------------- helpers


def _msid_track_id(media: Any) -> str | None:
    """The track id of ``a=msid:<stream> <track>`` (or of ``a=ssrc:<n> msid:…``)."""
    for msid in [media.msid, *(ssrc.msid for ssrc in media.ssrc)]:
        if msid:
            parts = str(msid).split()
            if len(parts) >= 2 and parts[1] != "-":
                return parts[1]
    return None


def _first_payload_type(media: Any) -> int:
    for fmt in media.fmt:
        try:
            return int(fmt)
        except (TypeError, ValueError):
            continue
    # No numeric payload type at all: pick a dynamic one; the m-line is inactive either way.
    return 96


def _codec_prefixes(payload_type: int) -> tuple[str, str, str]:
    return (f"a=rtpmap:{payload_type} ", f"a=fmtp:{payload_type} ", f"a=rtcp-fb:{payload_type} ")


def _neutralise_offer_section(section: list[str], kind: str, payload_type: int) -> list[str]:
    """One payload type, relabelled as aiortc's first codec of ``kind``; direction inactive."""
    kept = [
        line for line in section[1:] if not line.startswith(_CODEC_ATTRIBUTES) and line not in _DIRECTIONS
    ]
    return [
        _m_line(section[0], payload_type),
        *kept,
        "a=inactive",
        f"a=rtpmap:{payload_type} {CODECS[kind][0]}",
    ]


def _m_line(line: str, payload_type: int) -> str:
    # m=<kind> <port> <proto> <fmt> ...
    parts = line.split()
    return " ".join([*parts[:3], str(payload_type)])


def _split(sdp: str) -> tuple[list[str], list[list[str]]]:
    header: list[str] = []
    sections: list[list[str]] = []
    for line in sdp.splitlines():
        if not line:
            continue
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            header.append(line)
    return header, sections


def _join(header: list[str], sections: list[list[str]], like: str) -> str:
    eol = "\r\n" if "\r\n" in like else "\n"
    lines = [*header, *(line for section in sections for line in section)]
    return eol.join(lines) + eol
