"""The learned-codec bitstream: round trips, and clean errors for every truncation/corruption."""

from __future__ import annotations

import io
import random
from fractions import Fraction
from pathlib import Path

import pytest

from gopflow.codecs.learned.bitstream import (
    BitstreamError,
    StreamHeader,
    Unit,
    UnitKind,
    pack_strings,
    read_header,
    read_units,
    unpack_strings,
    write_stream,
)
from gopflow.errors import InputError, UsageError

HEADER = StreamHeader("dvc-q2:3f9a1c0d2e4b5a69", 1279, 719, Fraction(30000, 1001), 12, 3)


def _units() -> list[Unit]:
    rng = random.Random(7)
    return [
        Unit(UnitKind.INTRA if i == 0 else UnitKind.INTER, i,
             pack_strings([[rng.randbytes(rng.randint(0, 300))] for _ in range(2)], [12, 20]))
        for i in range(3)
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


def test_not_a_stream_and_wrong_version() -> None:
    with pytest.raises(BitstreamError, match="magic"):
        _read_all(b"RIFF" + bytes(40))
    data = bytearray(HEADER.to_bytes())
    data[4] = 9
    with pytest.raises(BitstreamError, match="version 9"):
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
        StreamHeader("", 1, 1, Fraction(25), 1, 1)
