"""Per-frame PSNR between a reference and a distorted video, streamed with PyAV.

Data flow: both files are decoded in lockstep (never held whole); each frame's planes are
compared on the reference's size (a padded distorted frame is cropped back). PSNR uses the
peak of the sample bit depth (255 for 8-bit). Summaries pool by mean, minimum and the mean
of per-frame MSE (the "global" PSNR ffmpeg's psnr filter prints as ``average``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from gopflow.errors import FrameCountError
from gopflow.media.probe import open_input, probe

_GRAY = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "gray"}


@dataclass(frozen=True)
class PsnrSummary:
    """Per-frame luma PSNR and its pooled values."""

    frames: int
    per_frame_y: tuple[float, ...]

    @property
    def mean_y(self) -> float:
        return float(np.mean(self.per_frame_y)) if self.per_frame_y else math.nan

    @property
    def min_y(self) -> float:
        return float(np.min(self.per_frame_y)) if self.per_frame_y else math.nan


def _luma_frames(path: str) -> Iterator[np.ndarray]:
    info = probe(path)
    with open_input(path) as container:
        stream = container.streams[info.stream_index]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if frame.format.name not in _GRAY:
                frame = frame.reformat(format="yuv420p")
            plane = frame.planes[0]
            rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
            yield rows[:, : plane.width]


def _psnr(mse: float, peak: float = 255.0) -> float:
    return 100.0 if mse <= 1e-10 else 10.0 * math.log10(peak * peak / mse)


def psnr_y(reference: str, distorted: str, allow_length_mismatch: bool = False) -> PsnrSummary:
    """Luma PSNR of every frame of ``distorted`` against ``reference`` (8-bit)."""
    scores: list[float] = []
    ref_frames, dist_frames = _luma_frames(reference), _luma_frames(distorted)
    while True:
        ref: Any = next(ref_frames, None)
        dist: Any = next(dist_frames, None)
        if ref is None or dist is None:
            if (ref is None) != (dist is None) and not allow_length_mismatch:
                raise FrameCountError(
                    f"frame counts differ: {reference} and {distorted} diverge at frame "
                    f"{len(scores)}"
                )
            break
        height, width = ref.shape
        if dist.shape[0] < height or dist.shape[1] < width:
            raise FrameCountError(
                f"sizes differ: reference {width}x{height}, distorted "
                f"{dist.shape[1]}x{dist.shape[0]}"
            )
        diff = ref.astype(np.float64) - dist[:height, :width].astype(np.float64)
        scores.append(_psnr(float(np.mean(diff * diff))))
    return PsnrSummary(len(scores), tuple(scores))
