"""Exact RGB in Y4M (C444p16): every 8-bit colour survives the round trip."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
import pytest

from gopflow.errors import CorruptInputError
from gopflow.media.y4m import read_y4m_rgb, rgb_to_ycbcr16, y4m_frame, y4m_header, ycbcr16_to_rgb


def test_every_colour_round_trips_exactly() -> None:
    g, b = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    for r in range(256):
        rgb = np.stack([np.full_like(g, r), g, b], -1).astype(np.uint8)
        assert np.array_equal(ycbcr16_to_rgb(rgb_to_ycbcr16(rgb)), rgb), f"red {r}"


def test_file_round_trip_and_truncation() -> None:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (5, 7, 3), dtype=np.uint8) for _ in range(3)]
    data = y4m_header(7, 5, Fraction(30000, 1001)) + b"".join(y4m_frame(f) for f in frames)
    width, height, fps, got = read_y4m_rgb(io.BytesIO(data))
    assert (width, height, fps) == (7, 5, Fraction(30000, 1001))
    assert all(np.array_equal(a, b) for a, b in zip(list(got), frames, strict=True))
    with pytest.raises(CorruptInputError, match="truncated"):
        list(read_y4m_rgb(io.BytesIO(data[:-1]))[3])
    with pytest.raises(CorruptInputError, match="not a Y4M"):
        read_y4m_rgb(io.BytesIO(b"YUV4MPEG2 W7 H5 F25:1 C420jpeg\n"))
