"""Exact RGB frames in Y4M: 16-bit 4:4:4 full-range BT.601 YCbCr (``C444p16``).

Y4M carries only YCbCr, and an 8-bit RGB -> YCbCr conversion is lossy. gopflow writes
``C444p16 XCOLORRANGE=FULL``: ``Y = 257 * (0.299 R + 0.587 G + 0.114 B)`` and
``Cb, Cr = 257 * (B - Y) / 1.772, 257 * (R - Y) / 1.402`` around 32768, rounded. The 16-bit
rounding error is below 0.01 of an 8-bit step after the inverse, so :func:`read_y4m_rgb`
returns the RGB frames bit for bit (checked over every 8-bit colour in the tests), while any
player or ffmpeg reads the file as ordinary full-range BT.601 video (swscale's default matrix).
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from typing import BinaryIO

import numpy as np

from gopflow.errors import CorruptInputError

TAG = "XGOPFLOW=RGB16"
_SCALE = 257.0
_MID = 32768.0


def rgb_to_ycbcr16(rgb: np.ndarray) -> np.ndarray:
    """``H x W x 3`` uint8 RGB -> ``3 x H x W`` uint16 planes (Y, Cb, Cr)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    planes = (y * _SCALE, (b - y) / 1.772 * _SCALE + _MID, (r - y) / 1.402 * _SCALE + _MID)
    return np.clip(np.rint(np.stack(planes)), 0, 65535).astype(np.uint16)


def ycbcr16_to_rgb(planes: np.ndarray) -> np.ndarray:
    """The exact inverse of :func:`rgb_to_ycbcr16` for planes it wrote."""
    y, cb, cr = (p.astype(np.float64) for p in planes)
    y = y / _SCALE
    r = y + 1.402 * (cr - _MID) / _SCALE
    b = y + 1.772 * (cb - _MID) / _SCALE
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    return np.clip(np.rint(np.stack((r, g, b), axis=-1)), 0, 255).astype(np.uint8)


def y4m_header(width: int, height: int, fps: Fraction) -> bytes:
    return (
        f"YUV4MPEG2 W{width} H{height} F{fps.numerator}:{fps.denominator} Ip A1:1 "
        f"C444p16 XCOLORRANGE=FULL {TAG}\n"
    ).encode()


def y4m_frame(rgb: np.ndarray) -> bytes:
    """One ``FRAME`` record of an RGB frame."""
    return b"FRAME\n" + rgb_to_ycbcr16(rgb).astype("<u2").tobytes()


def read_y4m_rgb(handle: BinaryIO) -> tuple[int, int, Fraction, Iterator[np.ndarray]]:
    """``(width, height, fps, frames)`` of a Y4M written by gopflow (``frames`` is lazy)."""
    line = handle.readline(4096)
    fields = line.decode("ascii", "replace").split()
    if not fields or fields[0] != "YUV4MPEG2" or "C444p16" not in fields or TAG not in fields:
        raise CorruptInputError("not a Y4M written by gopflow decode (C444p16 RGB)")
    values = {f[0]: f[1:] for f in fields[1:]}
    width, height = int(values["W"]), int(values["H"])
    num, den = values["F"].split(":")
    size = 3 * width * height * 2

    def frames() -> Iterator[np.ndarray]:
        while True:
            marker = handle.readline(4096)
            if not marker:
                return
            if not marker.startswith(b"FRAME"):
                raise CorruptInputError("Y4M frame marker missing (corrupt file)")
            data = handle.read(size)
            if len(data) != size:
                raise CorruptInputError("Y4M file is truncated inside a frame")
            planes = np.frombuffer(data, "<u2").reshape(3, height, width)
            yield ycbcr16_to_rgb(planes)

    return width, height, Fraction(int(num), int(den)), frames()
