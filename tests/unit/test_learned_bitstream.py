"""The learned-codec bitstream: round trips, and clean errors for every truncation/corruption."""

from __future__ import annotations

import io
import random
import struct
import zlib
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from gopflow.codecs.learned.bitstream import (
    MAX_PIXELS,
    MAX_SIDE,
    BitstreamError,
    GopExtent,
    StreamHeader,
    Unit,
    UnitKind,
    gop_structure,
    pack_strings,
    read_gop,
    read_header,
    read_units,
    scan_gops,
    units_from_bytes,
    unpack_strings,
    write_stream,
)
from gopflow.errors import InputError, UsageError

HEADER = StreamHeader("dvc:3f9a1c0d2e4b5a69", 1279, 719, Fraction(30000, 1001), 3, 3, 1, 2)
GOP_STARTS = (0, 3, 4)  # scene-cut GOPs of 3, 1 and 2 frames
SCENES = StreamHeader("fvc:0123456789abcdef", 353, 287, Fraction(25), 3, 6, 3, 4)
MIN = 13  # the smallest unit: kind, frame, length and CRC


def _units(count: int = 3, starts: tuple[int, ...] = (0,)) -> list[Unit]:
    rng = random.Random(7)
    return [
        Unit(UnitKind.INTRA if i in starts else UnitKind.INTER, i,
             pack_strings([[rng.randbytes(rng.randint(0, 300))] for _ in range(2)], [12, 20]))
        for i in range(count)
    ]


def _read_all(data: bytes) -> tuple[StreamHeader, list[Unit]]:
    handle = io.BytesIO(data)
    header = read_header(handle)
    return header, list(read_units(handle, header))


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "clip.gflv"
    size = write_stream(str(path), HEADER, _units())
    data = path.read_bytes()
    assert size == len(data)
    header, units = _read_all(data)
    assert header == HEADER and units == _units()
    groups, shape = unpack_strings(units[1].payload)
    assert shape == [12, 20] and len(groups) == 2


def test_every_truncation_is_a_clean_error(tmp_path: Path) -> None:
    path = tmp_path / "clip.gflv"
    write_stream(str(path), HEADER, _units())
    data = path.read_bytes()
    for cut in range(len(data)):
        with pytest.raises(BitstreamError):
            _read_all(data[:cut])


def test_bit_flips_are_caught(tmp_path: Path) -> None:
    path = tmp_path / "clip.gflv"
    write_stream(str(path), HEADER, _units())
    data = path.read_bytes()
    rng = random.Random(1)
    for _ in range(300):
        position = rng.randrange(len(data))
        broken = bytearray(data)
        broken[position] ^= 1 << rng.randrange(8)
        with pytest.raises(BitstreamError):
            _read_all(bytes(broken))


def test_intra_offset_in_the_header_and_version_2_streams_still_read() -> None:
    raised = replace(HEADER, intra_offset=2)
    assert read_header(io.BytesIO(raised.to_bytes())) == raised
    # A version 2 header: no offset byte, CRC over what is there; it reads as offset 0.
    body = bytearray(HEADER.to_bytes()[:-5])
    body[4] = 2
    old = bytes(body) + zlib.crc32(bytes(body)).to_bytes(4, "big")
    assert read_header(io.BytesIO(old)) == HEADER
    with pytest.raises(UsageError, match="intra offset"):
        replace(HEADER, intra_offset=256)


def test_refresh_units_start_gops(tmp_path: Path) -> None:
    units = [Unit(UnitKind.REFRESH if u.kind == UnitKind.INTRA and u.frame else u.kind, u.frame,
                  u.payload) for u in _units(6, GOP_STARTS)]
    assert [chr(u.kind) for u in units] == list("IPPRRP")
    assert gop_structure(u.kind for u in units) == (3, 3)
    path = tmp_path / "refresh.gflv"
    write_stream(str(path), SCENES, units)
    with open(path, "rb") as handle:
        header = read_header(handle)
        extents = scan_gops(handle, header)
        assert [e.frames for e in extents] == [3, 1, 2]
        assert [u.kind for u in read_gop(handle, extents[2])] == [UnitKind.REFRESH, UnitKind.INTER]
    with pytest.raises(UsageError, match="first frame is not an intra frame"):
        write_stream(str(path), SCENES, [Unit(UnitKind.INTER, 0, b"x"), *units[1:]])


def test_leveled_and_skip_inter_units_continue_gops(tmp_path: Path) -> None:
    kinds = {2: UnitKind.LEVELED_INTER, 4: UnitKind.SKIP, 5: UnitKind.LEVELED_INTER}
    units = [Unit(kinds.get(u.frame, u.kind), u.frame, u.payload) for u in _units(6, (0, 3))]
    assert [chr(u.kind) for u in units] == list("IPQISQ")
    assert all(UnitKind(ord(kind)).predicted == (kind in "PQS") for kind in "IPQSRE")
    path = tmp_path / "leveled.gflv"
    write_stream(str(path), replace(SCENES, gop_count=2), units)
    with open(path, "rb") as handle:
        header = read_header(handle)
        extents = scan_gops(handle, header)
        assert [e.frames for e in extents] == [3, 3]
        assert read_gop(handle, extents[1]) == units[3:]
    # Version 4 introduced Q units, 5 S units, 6 global motion, 7 its correction grids, 8
    # rANS-coded grids, 9 the stream check in the end unit.
    assert path.read_bytes()[4] == 9


def test_not_a_stream_and_wrong_version() -> None:
    with pytest.raises(BitstreamError, match="magic"):
        _read_all(b"RIFF" + bytes(40))
    data = bytearray(HEADER.to_bytes())
    data[4] = 10
    with pytest.raises(BitstreamError, match="version 10"):
        _read_all(bytes(data))
    assert issubclass(BitstreamError, InputError)


def test_writer_refuses_inconsistent_streams(tmp_path: Path) -> None:
    path = tmp_path / "bad.gflv"
    with pytest.raises(UsageError):
        write_stream(str(path), HEADER, _units()[:2])
    with pytest.raises(UsageError):
        write_stream(str(path), HEADER, [_units()[1]])
    assert not path.exists()  # written atomically: nothing half-done is left
    with pytest.raises(UsageError):
        StreamHeader("", 1, 1, Fraction(25), 1, 1, 1, 1)
    with pytest.raises(UsageError, match="first frame"):
        write_stream(str(path), HEADER, [Unit(UnitKind.INTER, 0, b"")])
    with pytest.raises(UsageError, match="GOP size"):  # a GOP longer than the header allows
        write_stream(str(path), SCENES, _units(6, (0, 4)))
    with pytest.raises(UsageError, match="GOPs"):  # fewer GOPs than the header says
        write_stream(str(path), SCENES, _units(6, (0, 3)))
    with pytest.raises(UsageError):  # header fields that cannot describe any stream
        StreamHeader("m", 1, 1, Fraction(25), 2, 6, 2, 1)
    with pytest.raises(UsageError):
        StreamHeader("m", 1, 1, Fraction(25), 2, 2, 1, 0)
    assert not path.exists()


def test_level_and_scene_cut_gops_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "scenes.gflv"
    units = _units(6, GOP_STARTS)
    write_stream(str(path), SCENES, units)
    with open(path, "rb") as handle:
        header = read_header(handle)
        extents = scan_gops(handle, header)
        assert header == SCENES and header.quality == 4 and header.gop_count == 3
        assert [(e.first_frame, e.frames) for e in extents] == [(0, 3), (3, 1), (4, 2)]
        # GOPs read back by extent, in any order, carry exactly the units written.
        for extent in reversed(extents):
            got = read_gop(handle, extent)
            assert got == units[extent.first_frame : extent.first_frame + extent.frames]
    blob = b"".join(u.to_bytes() for u in units[3:])
    assert units_from_bytes(blob, 3) == units[3:]
    with pytest.raises(BitstreamError):
        units_from_bytes(blob[:-1], 3)
    with pytest.raises(BitstreamError, match="frame 3 where 4"):
        units_from_bytes(blob, 4)


def test_scan_catches_every_truncation_and_flip_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "scenes.gflv"
    write_stream(str(path), SCENES, _units(6, GOP_STARTS))
    data = path.read_bytes()

    def scan(blob: bytes) -> None:
        handle = io.BytesIO(blob)
        scan_gops(handle, read_header(handle))

    for cut in range(len(data)):
        with pytest.raises(BitstreamError):
            scan(data[:cut])
    rng = random.Random(3)
    for _ in range(200):
        broken = bytearray(data)
        broken[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        with pytest.raises(BitstreamError):
            scan(bytes(broken))


def test_read_gop_refuses_a_wrong_extent(tmp_path: Path) -> None:
    path = tmp_path / "scenes.gflv"
    write_stream(str(path), SCENES, _units(6, GOP_STARTS))
    with open(path, "rb") as handle:
        extents = scan_gops(handle, read_header(handle))
        first = extents[0]
        with pytest.raises(BitstreamError):
            read_gop(handle, GopExtent(0, 0, 3, first.offset, first.size + 1))
        with pytest.raises(BitstreamError):
            read_gop(handle, GopExtent(0, 0, 3, first.offset + 1, first.size))


def test_gop_structure_counts_intra_starts() -> None:
    assert gop_structure(u.kind for u in _units(6, GOP_STARTS)) == (3, 3)
    assert gop_structure([UnitKind.INTRA] * 4) == (4, 1)  # all-intra: one-frame GOPs


def test_rans_strings_decode_exactly_or_not_at_all() -> None:
    """CompressAI's rANS coder, guarded: strings decode only if they are exactly what the
    encoder writes (cut, extended or misread ones are refused, never read past), and values
    whose string needs more words than CompressAI's encoder buffers are coded in Python to
    the same bytes the C++ writes given room."""
    from compressai.ans import RansEncoder

    from gopflow.codecs.dvc.grid_coding import _tables, decode_grid, encode_grid
    from gopflow.codecs.learned.hyperprior import (
        ESCAPE_LIMIT,
        _encode_python,
        decode_exact,
        rans_encode,
        rans_words_bound,
    )

    cdfs, sizes, offsets = (np.asarray(part, dtype=np.int64) for part in _tables()[:3])
    rng = random.Random(11)
    python_only = 0
    for _ in range(200):
        count = rng.choice([2, 3, 40, 300])
        indexes = np.array([rng.randrange(len(sizes)) for _ in range(count)])
        values = np.array([rng.randint(-2, 2) if rng.random() < 0.8 else
                           rng.choice([rng.randint(-300, 300), rng.randint(-(1 << 26), 1 << 26)])
                           for _ in range(count)])
        string = rans_encode(values, indexes, cdfs, sizes, offsets)
        lists = (values.tolist(), indexes.tolist(), cdfs.tolist(), sizes.tolist(),
                 offsets.tolist())
        assert string == _encode_python(*lists)
        bound = rans_words_bound(values, indexes, cdfs, sizes, offsets)
        assert len(string) <= 4 * bound
        if bound <= count:
            assert string == RansEncoder().encode_with_indexes(*lists)
        else:
            python_only += 1
        assert np.array_equal(decode_exact(string, indexes, cdfs, sizes, offsets), values)
        for bad in (string[:-4], string + bytes(4), string[:-1], string[:4], b""):
            with pytest.raises(BitstreamError, match="does not decode"):
                decode_exact(bad, indexes, cdfs, sizes, offsets)
    assert python_only > 0
    with pytest.raises(ValueError, match="escape"):
        rans_encode(np.array([ESCAPE_LIMIT]), np.array([0]), cdfs, sizes, offsets)
    # A 1 x 1 grid of two escaped corrections needs 3 words for 2 values: CompressAI's
    # encoder wrote one word before its buffer.
    grid = np.array([[[-128]], [[127]]], dtype=np.int8)
    coded = encode_grid(grid)
    assert np.array_equal(decode_grid(coded, 1, 1), grid)
    with pytest.raises(BitstreamError, match="does not decode"):
        decode_grid(coded + bytes(4), 1, 1)


def _with_header(data: bytes, **fields: int) -> bytes:
    """``data`` with header fields changed and the header CRC recomputed as the writer
    computes it (the end unit's stream check left as written)."""
    model = data[5]
    numbers = list(struct.unpack(">IIIIIIIBB", data[6 + model : 36 + model]))
    names = ["width", "height", "fps_num", "fps_den", "gop_size", "frame_count", "gop_count",
             "quality", "intra_offset"]
    for name, value in fields.items():
        numbers[names.index(name)] = value
    body = data[: 6 + model] + struct.pack(">IIIIIIIBB", *numbers)
    return body + zlib.crc32(body).to_bytes(4, "big") + data[40 + model :]


def _scan(data: bytes) -> list[GopExtent]:
    handle = io.BytesIO(data)
    return scan_gops(handle, read_header(handle))


@pytest.mark.parametrize("fields", [
    {"width": 1278},  # same padded size (1280): the units cannot tell
    {"height": 720},
    {"quality": 3},
    {"intra_offset": 1},
    {"fps_num": 25, "fps_den": 1},
])
def test_a_header_edited_with_its_crc_recomputed_is_refused(
    tmp_path: Path, fields: dict[str, int]
) -> None:
    path = tmp_path / "clip.gflv"
    write_stream(str(path), HEADER, _units())
    data = path.read_bytes()
    assert [e.frames for e in _scan(data)] == [3]
    edited = _with_header(data, **fields)
    assert read_header(io.BytesIO(edited)) != HEADER  # the header alone reads fine
    with pytest.raises(BitstreamError, match="header does not belong to its units"):
        _scan(edited)
    with pytest.raises(BitstreamError, match="header does not belong to its units"):
        _read_all(edited)


def test_a_unit_replaced_with_its_crc_recomputed_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "clip.gflv"
    units = _units()
    write_stream(str(path), HEADER, units)
    data = path.read_bytes()
    start = len(HEADER.to_bytes()) + len(units[0].to_bytes())
    other = Unit(UnitKind.INTER, 1, units[1].payload[:-1] + b"\x00").to_bytes()
    assert len(other) == len(units[1].to_bytes())
    edited = data[:start] + other + data[start + len(other) :]
    with pytest.raises(BitstreamError, match="stream check mismatch"):
        _scan(edited)


def test_version_8_streams_end_without_a_stream_check(tmp_path: Path) -> None:
    """Streams written before the stream check (version 8 and older) still read; their end
    unit must stay empty, and a version 9 end unit must hold the check."""
    path = tmp_path / "clip.gflv"
    write_stream(str(path), SCENES, _units(6, GOP_STARTS))
    data = path.read_bytes()
    end = Unit(UnitKind.END, 6, data[-8:-4]).to_bytes()
    assert data.endswith(end)
    header = bytearray(data[: len(SCENES.to_bytes()) - 4])
    header[4] = 8
    old_head = bytes(header) + zlib.crc32(bytes(header)).to_bytes(4, "big")
    body = data[len(old_head) : -len(end)]
    old = old_head + body + Unit(UnitKind.END, 6, b"").to_bytes()
    old_extents = _scan(old)
    assert read_header(io.BytesIO(old)).version == 8
    assert [(e.offset, e.size) for e in old_extents] == [(e.offset, e.size) for e in _scan(data)]
    with open(path, "rb") as handle:
        assert read_header(handle).version == 9
    with pytest.raises(BitstreamError, match="end unit has a payload"):
        _scan(old[: -MIN] + end)
    with pytest.raises(BitstreamError, match="end unit holds 0 bytes"):
        _scan(data[: -len(end)] + Unit(UnitKind.END, 6, b"").to_bytes())
    # Units and the check can still be read and spliced without the file: the check covers
    # the header's CRC and each unit's CRC, in order.
    check = zlib.crc32(data[len(SCENES.to_bytes()) - 4 : len(SCENES.to_bytes())]
                       + b"".join(u.to_bytes()[-4:] for u in _units(6, GOP_STARTS)))
    assert data[-8:-4] == check.to_bytes(4, "big")


def test_sizes_and_counts_are_bounded_before_anything_is_allocated(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="too large"):
        replace(HEADER, width=60000, height=60000)
    with pytest.raises(UsageError, match="too large"):
        replace(HEADER, width=MAX_SIDE + 1, height=1)
    with pytest.raises(UsageError, match="too large"):
        replace(HEADER, width=MAX_SIDE, height=MAX_PIXELS // MAX_SIDE + 1)
    assert replace(HEADER, width=7680, height=4320).width == 7680  # 8K UHD is fine
    path = tmp_path / "clip.gflv"
    write_stream(str(path), HEADER, _units())
    data = path.read_bytes()
    huge = _with_header(data, width=60000, height=60000)
    with pytest.raises(BitstreamError, match="too large"):
        read_header(io.BytesIO(huge))
    # A frame count the file cannot hold stops the scan before it reads a unit.
    many = _with_header(data, frame_count=1 << 31, gop_size=1 << 30, gop_count=2)
    with pytest.raises(BitstreamError, match="cannot hold them"):
        _scan(many)
    # A unit claiming a gigabyte in a small file is a truncation, read in bounded chunks.
    start = len(HEADER.to_bytes())
    claim = data[:start] + bytes([ord("I")]) + (0).to_bytes(4, "big") + (1 << 30).to_bytes(
        4, "big") + data[start + 9 :]
    with pytest.raises(BitstreamError, match="truncated"):
        _scan(claim)


def test_huge_string_lengths_are_clean_errors() -> None:
    """Found by fuzzing: a 10-byte length varint (up to 2^70) reached ``BytesIO.read`` and
    raised OverflowError instead of a BitstreamError."""
    start = bytes([2, 4, 4, 1, 2])  # shape [4, 4], one latent of two strings
    for length, message in ((b"\xff" * 9 + b"\x7f", "malformed length"),
                            (b"\xff" * 9 + b"\x01", "truncated"),
                            (b"\x80" * 9 + b"\x02", "malformed length"),
                            (b"\xff" * 10 + b"\x01", "malformed length"),
                            (bytes([0x81, 0x01]), "truncated")):
        with pytest.raises(BitstreamError, match=message):
            unpack_strings(start + length + b"abc")
