"""H.264 helpers for recording and forwarding received frames without decoding them.

aiortc's H.264 depayloader hands over one access unit per frame as an Annex B byte stream: NAL units,
each after a ``00 00 00 01`` start code (single NAL units, STAP-A and FU-A all come out that way). A
recording or a forward must begin on an IDR picture (NAL type 5) that a decoder can use, i.e. with the
sequence and picture parameter sets (types 7 and 8) in or before it. WebRTC senders usually put them in
front of every IDR, but not all do, so :class:`ParameterSets` remembers the latest ones seen and
:meth:`ParameterSets.complete` puts them in front of an IDR that lacks them. Playing a file into a
room (:mod:`bridge.media.playback`) uses :meth:`ParameterSets.with_sets` on every frame it sends, so a
subscriber joining late can decode from the next IDR.

:func:`parse_sps` reads just enough of a sequence parameter set (ITU-T H.264 §7.3.2.1.1) for what a
muxer or an SDP needs: profile, level and the cropped picture size. Everything here is pure.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Final

__all__ = [
    "NAL_IDR",
    "NAL_PPS",
    "NAL_SPS",
    "ParameterSets",
    "Sps",
    "annex_b",
    "nal_type",
    "nal_units",
    "parse_sps",
]

NAL_IDR: Final = 5
NAL_SPS: Final = 7
NAL_PPS: Final = 8
START_CODE: Final = b"\x00\x00\x00\x01"
# Profiles whose SPS carries chroma format, bit depths and scaling matrices (§7.3.2.1.1).
_HIGH_PROFILES: Final = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


def nal_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B byte stream (3- or 4-byte start codes), without start codes."""
    units: list[bytes] = []
    start = data.find(b"\x00\x00\x01")
    while start != -1:
        begin = start + 3
        nxt = data.find(b"\x00\x00\x01", begin)
        end = len(data) if nxt == -1 else nxt
        # A zero before the next start code belongs to it (4-byte form); trailing_zero_8bits likewise.
        unit = data[begin:end].rstrip(b"\x00") if nxt != -1 else data[begin:end]
        if unit:
            units.append(unit)
        start = nxt
    return units


def nal_type(unit: bytes) -> int:
    return unit[0] & 0x1F if unit else 0


def annex_b(units: list[bytes]) -> bytes:
    return b"".join(START_CODE + unit for unit in units)


class _Bits:
    """MSB-first bit reader over an RBSP, with Exp-Golomb codes (§9.1)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def bit(self) -> int:
        byte, offset = divmod(self._pos, 8)
        if byte >= len(self._data):
            raise ValueError("SPS ends early")
        self._pos += 1
        return (self._data[byte] >> (7 - offset)) & 1

    def bits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = value << 1 | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("Exp-Golomb code too long")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code % 2 else -(code // 2)


def _rbsp(unit: bytes) -> bytes:
    """The NAL payload without its header byte and emulation-prevention bytes (00 00 03 -> 00 00)."""
    out = bytearray()
    zeros = 0
    for byte in unit[1:]:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Sps:
    """What the bridge needs from a sequence parameter set."""

    profile_idc: int
    constraint_flags: int  # the byte after profile_idc (constraint_set0..5 flags)
    level_idc: int
    width: int  # after frame cropping
    height: int

    @property
    def profile_level_id(self) -> str:
        """The SDP ``profile-level-id`` (RFC 6184 §8.1): three bytes in hex."""
        return f"{self.profile_idc:02x}{self.constraint_flags:02x}{self.level_idc:02x}"


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt:
            nxt = (last + bits.se() + 256) % 256
        last = nxt or last


def parse_sps(unit: bytes) -> Sps:
    """Profile, level and picture size of an SPS NAL unit (with its header byte); ValueError if bad."""
    if nal_type(unit) != NAL_SPS or len(unit) < 4:
        raise ValueError("not an SPS NAL unit")
    rbsp = _rbsp(unit)
    if len(rbsp) < 3:  # emulation-prevention bytes removed, less than the profile and level may be left
        raise ValueError("SPS ends early")
    profile, flags, level = rbsp[0], rbsp[1], rbsp[2]
    bits = _Bits(rbsp[3:])
    bits.ue()  # seq_parameter_set_id
    chroma_format = 1
    separate_planes = 0
    if profile in _HIGH_PROFILES:
        chroma_format = bits.ue()
        if chroma_format == 3:
            separate_planes = bits.bit()
        bits.ue()  # bit_depth_luma_minus8
        bits.ue()  # bit_depth_chroma_minus8
        bits.bit()  # qpprime_y_zero_transform_bypass_flag
        if bits.bit():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format != 3 else 12):
                if bits.bit():
                    _skip_scaling_list(bits, 16 if i < 6 else 64)
    bits.ue()  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()  # log2_max_pic_order_cnt_lsb_minus4
    elif poc_type == 1:
        bits.bit()  # delta_pic_order_always_zero_flag
        bits.se()  # offset_for_non_ref_pic
        bits.se()  # offset_for_top_to_bottom_field
        for _ in range(bits.ue()):
            bits.se()  # offset_for_ref_frame[i]
    bits.ue()  # max_num_ref_frames
    bits.bit()  # gaps_in_frame_num_value_allowed_flag
    width_mbs = bits.ue() + 1
    height_map_units = bits.ue() + 1
    frame_mbs_only = bits.bit()
    if not frame_mbs_only:
        bits.bit()  # mb_adaptive_frame_field_flag
    bits.bit()  # direct_8x8_inference_flag
    width = width_mbs * 16
    height = (2 - frame_mbs_only) * height_map_units * 16
    if bits.bit():  # frame_cropping_flag
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
        # Crop units (§7.4.2.1.1, Table 6-1): chroma subsampling and field coding scale them.
        chroma = 0 if separate_planes else chroma_format
        unit_x = 1 if chroma in (0, 3) else 2
        unit_y = (1 if chroma in (0, 2, 3) else 2) * (2 - frame_mbs_only)
        width -= (left + right) * unit_x
        height -= (top + bottom) * unit_y
    if width <= 0 or height <= 0:
        raise ValueError("SPS has no picture size")
    return Sps(profile_idc=profile, constraint_flags=flags, level_idc=level, width=width, height=height)


class ParameterSets:
    """The latest SPS and PPS of one stream, and the IDR check a recording or forward starts on."""

    def __init__(self) -> None:
        self.sps: bytes | None = None
        self.pps: bytes | None = None

    def observe(self, units: list[bytes]) -> bool:
        """Remember the parameter sets among ``units``; True if they contain an IDR slice."""
        idr = False
        for unit in units:
            kind = nal_type(unit)
            if kind == NAL_SPS:
                self.sps = unit
            elif kind == NAL_PPS:
                self.pps = unit
            elif kind == NAL_IDR:
                idr = True
        return idr

    def complete(self, data: bytes) -> bytes | None:
        """``data`` if it is a decodable IDR access unit (SPS/PPS put in front if it lacks them, from
        earlier frames); None if it is no IDR, or no SPS/PPS has been seen yet."""
        units = nal_units(data)
        if not self.observe(units):
            return None
        if self.sps is None or self.pps is None:
            return None
        kinds = {nal_type(unit) for unit in units}
        missing = [u for k, u in ((NAL_SPS, self.sps), (NAL_PPS, self.pps)) if k not in kinds]
        return annex_b(missing) + data if missing else data

    def with_sets(self, data: bytes) -> bytes:
        """``data`` with the latest SPS/PPS in front when it is an IDR access unit that lacks them;
        otherwise ``data`` itself (a sender passes every frame on, a decoder joining late needs them)."""
        complete = self.complete(data)
        return data if complete is None else complete

    def parsed(self) -> Sps | None:
        """The latest SPS, parsed; None if there is none or it cannot be read."""
        if self.sps is None:
            return None
        try:
            return parse_sps(self.sps)
        except ValueError:
            return None

    def extradata(self) -> bytes:
        """SPS and PPS as Annex B: what FFmpeg's muxers take as the H.264 stream's extradata."""
        return annex_b([u for u in (self.sps, self.pps) if u is not None])

    def sprop_parameter_sets(self) -> str:
        """The SDP ``sprop-parameter-sets`` value (RFC 6184 §8.1); empty without both sets."""
        if self.sps is None or self.pps is None:
            return ""
        return ",".join(base64.b64encode(u).decode() for u in (self.sps, self.pps))
