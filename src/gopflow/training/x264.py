"""Real x264 codings of training and evaluation pictures.

:func:`x264_roundtrip` is the one place training runs ffmpeg (libx264 encode, PyAV decode).
``--proxy x264`` trains ViSTRA's up-sampler on what it will restore in use: frames
Lanczos-downscaled and really coded by x264 (:class:`CodedPairPool`), instead of the
differentiable codec proxy; :mod:`gopflow.training.evaluate` measures models after real
encodes with the same round trip.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from gopflow.errors import EncoderError, InputError
from gopflow.precoders.resample import scaled_size
from gopflow.training.data import Clip, FramePool, to_tensor

X264_CRF_RANGE = (18.0, 45.0)
"""CRFs drawn for real x264-coded training inputs (``--proxy x264``)."""
CODED_RUN = 6
"""Consecutive frames coded per ``--proxy x264`` draw (frames 1.. are P/B pictures)."""


def x264_roundtrip(
    pictures: Sequence[bytes], width: int, height: int, fps: float, crf: float, preset: str,
    filters: str | None = None, threads: int = 2,
) -> tuple[list[Any], int]:
    """Encode packed yuv420p pictures with libx264 (ffmpeg; after ``filters`` if given)
    and decode them back (PyAV)."""
    import av

    from gopflow.media.ffmpeg import find_ffmpeg, x264_proxy_command

    tool = find_ffmpeg()
    tool.require(encoders=["libx264"])
    with tempfile.TemporaryDirectory(prefix="gopflow-eval-") as tmp:
        out = os.path.join(tmp, "coded.mkv")
        command = x264_proxy_command(
            out, width=width, height=height, fps=fps, crf=crf, preset=preset,
            threads=threads, filters=filters, exe=tool.path,
        )
        done = subprocess.run(command, input=b"".join(pictures), capture_output=True)
        if done.returncode:
            raise EncoderError(f"x264 evaluation encode failed: {done.stderr.decode()[-400:]}")
        size = os.path.getsize(out)
        with av.open(out) as container:
            decoded = list(container.decode(video=0))
    return decoded, size


def x264_lowres_run(
    luma: Sequence[np.ndarray], size: tuple[int, int], crf: float, preset: str = "medium"
) -> list[np.ndarray]:
    """``luma`` frames Lanczos-downscaled to ``size`` (w, h) by ffmpeg's swscale, coded by
    x264 at ``crf`` and decoded: exactly what ViSTRA's decoder-side up-sampler receives
    (the encoder side of :mod:`gopflow.precoders.resample`). Chroma is flat grey."""
    height, width = luma[0].shape
    grey = bytes([128]) * (2 * ((height + 1) // 2) * ((width + 1) // 2))
    pictures = [frame.tobytes() + grey for frame in luma]
    decoded, _ = x264_roundtrip(pictures, width, height, 25.0, crf, preset,
                                filters=f"scale={size[0]}:{size[1]}:flags=lanczos", threads=1)
    from gopflow.precoders.inference import luma_array

    return [luma_array(frame).copy() for frame in decoded]


class CodedPairPool:
    """A bounded, seed-determined pool of (source luma, x264-decoded low-res luma) pairs.

    Like :class:`FramePool` (one slot refreshed per step, rebuilt from the seed on resume),
    but a slot holds a run of :data:`CODED_RUN` frames downscaled and really coded by x264
    at a CRF drawn from ``crf_range``: the up-sampler learns from the artefacts it will
    restore (intra and inter pictures), not from a proxy. x264 runs single-threaded, so a
    draw is deterministic.
    """

    def __init__(
        self, clips: Sequence[Clip], seed: int, size: int, scale: Fraction,
        crf_range: tuple[float, float],
    ) -> None:
        # Frames are cropped to a multiple of 2 x the scale's denominator, where the coded
        # size is exactly ``scale`` times the source (and even), so every crop aligns.
        usable = [c for c in clips if c.frames >= CODED_RUN]
        if not usable:
            raise InputError(f"no training clip has {CODED_RUN} frames")
        self.frames = FramePool(usable, seed, size, CODED_RUN)
        self.scale, self.crf_range = scale, crf_range
        self.pairs: list[list[tuple[np.ndarray, np.ndarray]]] = []
        self.generations: list[int] = []

    def _code(self, slot: int, generation: int, frames: list[np.ndarray]) -> list[Any]:
        rng = np.random.default_rng([self.frames.seed, 5, slot, generation])
        lo, hi = self.crf_range
        crf = round(float(lo + (hi - lo) * rng.random()), 1)
        step = 2 * self.scale.denominator
        height, width = frames[0].shape
        height, width = height - height % step, width - width % step
        frames = [np.ascontiguousarray(f[:height, :width]) for f in frames]
        size = scaled_size(width, height, self.scale)
        assert _exact_scale(width, height, self.scale)
        return list(zip(frames, x264_lowres_run(frames, size, crf), strict=True))

    def at(self, step: int) -> CodedPairPool:
        before = list(self.frames.generations)
        self.frames.at(step)
        for j, generation in enumerate(self.frames.generations):
            if j >= len(self.pairs):
                self.pairs.append(self._code(j, generation, self.frames.slots[j]))
            elif before[j] != generation:
                self.pairs[j] = self._code(j, generation, self.frames.slots[j])
        self.generations = list(self.frames.generations)
        return self

    def batch(self, step: int, batch: int, crop: int, stream: int = 2) -> tuple[Any, Any]:
        """``(source, coded)``: ``batch x 1 x crop x crop`` and the aligned low-res crops."""
        rng = np.random.default_rng([self.frames.seed, stream, step])
        d, n = self.scale.denominator, self.scale.numerator
        small = crop * n // d
        hr = np.empty((batch, 1, crop, crop), np.uint8)
        lr = np.empty((batch, 1, small, small), np.uint8)
        for b in range(batch):
            run = self.pairs[int(rng.integers(len(self.pairs)))]
            source, coded = run[int(rng.integers(len(run)))]
            height, width = source.shape
            y = d * int(rng.integers((height - crop) // d + 1))
            x = d * int(rng.integers((width - crop) // d + 1))
            a = source[y : y + crop, x : x + crop]
            c = coded[y * n // d : y * n // d + small, x * n // d : x * n // d + small]
            if rng.random() < 0.5:
                a, c = a[:, ::-1], c[:, ::-1]
            if rng.random() < 0.5:
                a, c = a[::-1], c[::-1]
            hr[b, 0], lr[b, 0] = a, c
        return to_tensor(hr), to_tensor(lr)


def _exact_scale(width: int, height: int, scale: Fraction) -> bool:
    """Whether the coded size is exactly ``scale`` times the source (crops align)."""
    out_w, out_h = scaled_size(width, height, scale)
    return Fraction(out_w, width) == scale and Fraction(out_h, height) == scale

