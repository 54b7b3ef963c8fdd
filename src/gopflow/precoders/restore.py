"""Decoder-side restoration: what the viewer gets, at the source's size, rate and length.

Data flow: decoded frames (any size, any timestamps: full-size or down-scaled GOPs, full or
half frame rate) -> each frame placed on the source's frame grid by its timestamp ->
frame repetition fills the grid slots until the next decoded frame (plain ViSTRA temporal
up-sampling) -> a full-size picture per slot: the encoder's padding cropped off, or a bicubic
up-scale (swscale, as a player does) -> exactly ``frame_count`` packed planar frames.

One implementation serves the post-encode quality checks, ``gopflow restore`` and the QRO
probes, so a figure measured in a worker is the figure the viewer sees. The output needs no
side information beyond the source's size, rate and frame count (carried in the output's
tags): encoder-decoder matched side information (EDMS).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from gopflow.errors import FrameCountError
from gopflow.media.reader import frame_bytes


@dataclass(frozen=True)
class RestoreTarget:
    """The source's geometry: what restoration must give back."""

    width: int
    height: int
    fps: Fraction
    frame_count: int
    pix_fmt: str = "yuv420p"


def _chroma_shift(pix_fmt: str) -> tuple[int, int]:
    if "420" in pix_fmt:
        return 1, 1
    if "422" in pix_fmt:
        return 1, 0
    return 0, 0


def full_size_bytes(frame: Any, target: RestoreTarget) -> bytes:
    """``frame`` at the target size: padding cropped when it is the padded full size,
    otherwise a bicubic up-scale."""
    width, height = target.width, target.height
    if width <= frame.width <= width + 1 and height <= frame.height <= height + 1:
        if (frame.width, frame.height) == (width, height):
            return frame_bytes(frame, target.pix_fmt)
        name = frame.format.name.replace("yuvj", "yuv")
        if name != target.pix_fmt:
            frame = frame.reformat(format=target.pix_fmt)
        shift_x, shift_y = _chroma_shift(target.pix_fmt)
        sample = 2 if target.pix_fmt.endswith(("10le", "12le", "16le")) else 1
        parts = []
        for plane_index, plane in enumerate(frame.planes):
            sx, sy = (shift_x, shift_y) if plane_index else (0, 0)
            keep_w = -(-width // (1 << sx)) * sample
            keep_h = -(-height // (1 << sy))
            rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
            parts.append(rows[:keep_h, :keep_w].tobytes())
        return b"".join(parts)
    scaled = frame.reformat(
        width=width, height=height, format=target.pix_fmt, interpolation="BICUBIC"
    )
    return frame_bytes(scaled, target.pix_fmt)


def restore_frames(
    frames: Iterable[Any],
    target: RestoreTarget,
    full_size: Callable[[Any, RestoreTarget], bytes] = full_size_bytes,
    interpolate: Callable[[bytes, bytes], bytes] | None = None,
) -> Iterator[bytes]:
    """Exactly ``target.frame_count`` full-size frames from decoded ``frames``.

    ``full_size`` brings one decoded frame to the target size (plain: crop or bicubic;
    learned restorers pass their up-sampler). Grid slots between two decoded frames repeat
    the earlier one, except that with ``interpolate`` a single missing slot (a half-rate
    GOP) gets ``interpolate(previous, next)``.
    """
    fps = float(target.fps)
    start: float | None = None
    slot = 0
    previous: bytes | None = None
    for frame in frames:
        if frame.time is None:
            raise FrameCountError("a decoded frame has no timestamp; cannot restore its place")
        if start is None:
            start = float(frame.time)
        index = round((float(frame.time) - start) * fps)
        current = full_size(frame, target)
        if previous is not None:
            end = min(index, target.frame_count)
            if slot < end:
                yield previous
                slot += 1
            if interpolate is not None and end - slot == 1 and index == end:
                yield interpolate(previous, current)
                slot += 1
            while slot < end:
                yield previous
                slot += 1
        previous = current
        slot = max(slot, index)
    if previous is None:
        raise FrameCountError("nothing to restore: the stream has no frames")
    while slot < target.frame_count:
        yield previous
        slot += 1
