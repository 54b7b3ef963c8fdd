"""Pure parts of gopflow.packaging: segment planning, codec strings, box walking."""

from __future__ import annotations

import struct
from fractions import Fraction

import pytest

from gopflow.errors import CorruptInputError, InputError, UsageError
from gopflow.packaging.cmaf import boxes, codec_string_of
from gopflow.packaging.package import plan_segments


def test_segments_are_whole_gops_near_the_target():
    # 30 fps, 4 s target = 120 frames
    assert plan_segments([60, 60, 60, 60], Fraction(30), 4.0) == (120, 120)
    assert plan_segments([100, 100, 100], Fraction(30), 4.0) == (100, 100, 100)
    assert plan_segments([30] * 9, Fraction(30), 4.0) == (120, 120, 30)
    # 70 + 70 = 140 is 20 over, 70 is 50 under: take both
    assert plan_segments([70, 70, 70, 70], Fraction(30), 4.0) == (140, 140)
    # one long GOP is a segment of its own
    assert plan_segments([300, 10, 10], Fraction(30), 4.0) == (300, 20)
    plan = [45, 30, 75, 60, 60, 12]
    assert sum(plan_segments(plan, Fraction(30000, 1001), 2.0)) == sum(plan)


@pytest.mark.parametrize(
    "gops, seconds", [([], 4.0), ([10, 0], 4.0), ([10], 0.0), ([10], -1.0)]
)
def test_bad_segment_plans_are_usage_errors(gops, seconds):
    with pytest.raises(UsageError):
        plan_segments(gops, Fraction(30), seconds)


def test_codec_strings_from_configuration_records():
    # avcC: version 1, High profile (100), constraint flags 0, level 3.1
    assert codec_string_of("h264", "avc1", bytes([1, 100, 0, 31, 0xFF])) == "avc1.64001f"
    assert codec_string_of("h264", "", bytes([1, 66, 0xC0, 30])) == "avc1.42c01e"
    # hvcC: Main profile, Main tier, compat flags 0x60000000 (profiles 1 and 2), level 3.1,
    # progressive/interlaced/non-packed/frame-only constraint bits (0xB0)
    hvcc = bytes([1, 0x01, 0x60, 0, 0, 0, 0xB0, 0, 0, 0, 0, 0, 93]) + bytes(10)
    assert codec_string_of("hevc", "hvc1", hvcc) == "hvc1.1.6.L93.B0"
    main10_high = bytes([1, 0x22, 0x20, 0, 0, 0, 0x90, 0, 0, 0, 0, 0, 120]) + bytes(10)
    assert codec_string_of("hevc", "hvc1", main10_high) == "hvc1.2.4.H120.90"
    # av1C: marker+version 0x81, profile 0 level 8 (4.0), Main tier, 8-bit 4:2:0
    assert codec_string_of("av1", "av01", bytes([0x81, 0x08, 0x0C, 0])) == "av01.0.08M.08"
    assert codec_string_of("libdav1d", "av01", bytes([0x81, 0x2D, 0xCC, 0])) == "av01.1.13H.10"
    # AudioSpecificConfig: AAC-LC (object type 2), 48 kHz, stereo
    assert codec_string_of("aac", "mp4a", bytes([0x11, 0x90])) == "mp4a.40.2"


def test_codec_strings_refuse_what_they_cannot_name():
    with pytest.raises(InputError):
        codec_string_of("h264", "avc1", b"")  # Annex-B, no avcC
    with pytest.raises(InputError):
        codec_string_of("mpeg2video", "", b"\x00")
    with pytest.raises(InputError):
        codec_string_of("av1", "av01", bytes([0x00, 0, 0, 0]))


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def test_box_walk_reads_sizes_and_refuses_overruns():
    data = _box(b"ftyp", b"isom") + _box(b"moov", _box(b"trak", b"")) + _box(b"mdat", b"xyz")
    assert [(k, o, s) for k, o, s, _ in boxes(data)] == [
        ("ftyp", 0, 12), ("moov", 12, 16), ("mdat", 28, 11)
    ]
    large = struct.pack(">I4sQ", 1, b"mdat", 20) + b"abcd"
    assert [(k, s, h) for k, _, s, h in boxes(large)] == [("mdat", 20, 16)]
    with pytest.raises(CorruptInputError):
        list(boxes(data[:-1]))
    with pytest.raises(CorruptInputError):
        list(boxes(struct.pack(">I4s", 4, b"free")))
