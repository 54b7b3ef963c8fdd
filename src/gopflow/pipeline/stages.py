"""The per-GOP stages: pure Python, with no knowledge of Ray.

The runner hosts one stage per actor; each stage keeps its source decoder open
(:class:`~gopflow.media.reader.ReaderCache`) so that a lane of consecutive GOPs is decoded in
one pass, and a learned stage loads its model once.

- :class:`GopEncodeStage`: :class:`GopTask` -> frame-accurate decode (PyAV) -> x264/x265 in
  ffmpeg -> an MP4 segment (:class:`EncodedGop`).
- :class:`LearnedEncodeStage`: :class:`LearnedGopTask` -> RGB24 frames -> a learned codec
  (DVC, Lu et al. CVPR 2019; FVC, Hu et al. CVPR 2021; the scale-hyperprior intra codec,
  Balle et al. 2018) -> the GOP's .gflv units, the encoder-side PSNR and a digest of the
  reconstruction.
- :class:`LearnedDecodeStage`: :class:`GopDecodeTask` (file path + byte extent) -> the GOP's
  units, checksums checked -> RGB frames.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gopflow.codecs.learned.api import CodedFrame, LearnedVideoCodec
from gopflow.codecs.learned.bitstream import GopExtent, Unit, read_gop
from gopflow.codecs.x26x import FfmpegEncoder, GopTask
from gopflow.errors import FrameCountError
from gopflow.media.reader import ReaderCache, check_frame_size
from gopflow.types import EncodedGop, GopSpec, ReadMode


class _Counter:
    """Counts frames while passing them through to the encoder."""

    def __init__(self, frames: Iterable[Any]) -> None:
        self.frames = frames
        self.count = 0

    def __iter__(self) -> Iterator[Any]:
        for frame in self.frames:
            self.count += 1
            yield frame


class GopEncodeStage:
    """Encodes GOPs one after another, reusing the decoder between consecutive GOPs."""

    def __init__(self) -> None:
        self._readers = ReaderCache()

    def __call__(self, task: GopTask) -> EncodedGop:
        started = time.perf_counter()
        tail = task.settings.lookahead_tail
        reader = self._readers.reader(
            task.input_path, task.stream_index, task.read_mode, task.settings.threads
        )
        frames = _Counter(reader.read(task.gop, tail=tail))
        data = FfmpegEncoder(task.settings).encode_gop(
            frames, task.source, keep=task.gop.frame_count if tail else None
        )
        if not task.gop.frame_count <= frames.count <= task.gop.frame_count + tail:
            raise FrameCountError(f"encoded {frames.count} frames, planned {task.gop.frame_count}")
        return EncodedGop(
            index=task.gop.index,
            data=data,
            frames=task.gop.frame_count,
            encode_seconds=time.perf_counter() - started,
        )

    def close(self) -> None:
        self._readers.close()


@dataclass(frozen=True)
class LearnedCodecRef:
    """Which learned codec a worker loads: a name, a weights registry (None: shipped) and
    the encoder's rate-distortion decisions: intra or inter per P frame, the levels and
    residual dead zone per P frame (``rdo``), and the lead-latent refinement's steps
    (``refine_steps``; None: the default with ``rdo``)."""

    name: str
    registry: str | None = None
    adaptive_intra: bool = False
    rdo: bool = False
    refine_steps: int | None = None


def open_codec(ref: LearnedCodecRef) -> LearnedVideoCodec:
    """Load the codec (weights checked against the registry's sha256; it runs its inference
    on a fixed thread count, so recon and decode match bit for bit)."""
    from gopflow.codecs.learned.engine import load_codec

    return load_codec(ref.name, ref.registry, ref.adaptive_intra, ref.rdo, ref.refine_steps)


def rgb_frames(frames: Iterable[Any]) -> list[np.ndarray]:
    """PyAV video frames as ``H x W x 3`` uint8 RGB (PyAV's conversion, as in training)."""
    return [np.ascontiguousarray(frame.to_ndarray(format="rgb24")) for frame in frames]


def frames_digest(frames: Iterable[np.ndarray]) -> str:
    """SHA-256 of the frames' packed RGB bytes in order (compares recon and decode)."""
    digest = hashlib.sha256()
    for frame in frames:
        digest.update(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def psnr_rgb(sources: Sequence[np.ndarray], recon: Sequence[np.ndarray]) -> float:
    """PSNR over all RGB samples of a GOP (mean squared error pooled over its frames)."""
    total = sum(
        float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
        for a, b in zip(sources, recon, strict=True)
    )
    mse = total / max(1, len(sources))
    return round(10.0 * np.log10(255.0**2 / mse), 4) if mse > 0 else float("inf")


@dataclass(frozen=True)
class LearnedGopTask:
    """One GOP to code: where its frames are, the stream's size (as probed: every frame must
    have it), the quality and the intra offset."""

    input_path: str
    stream_index: int
    read_mode: ReadMode
    gop: GopSpec
    width: int
    height: int
    quality: int
    intra_offset: int = 0


def sized_frames(frames: Iterable[Any], width: int, height: int) -> Iterator[Any]:
    """``frames``, each checked to be ``width`` x ``height`` (a stream that changes size
    mid-way is refused, as in the x264/x265 path, before its frames are coded)."""
    for frame in frames:
        check_frame_size(frame, width, height)
        yield frame


class LearnedEncodeStage:
    """Codes GOPs one after another with one loaded codec and one open source decoder."""

    def __init__(self, ref: LearnedCodecRef) -> None:
        self.codec = open_codec(ref)
        self._readers = ReaderCache()

    def __call__(self, task: LearnedGopTask) -> EncodedGop:
        started = time.perf_counter()
        gop = task.gop
        reader = self._readers.reader(task.input_path, task.stream_index, task.read_mode)
        sources = rgb_frames(sized_frames(reader.read(gop), task.width, task.height))
        coded = self.codec.encode_gop(sources, task.quality, task.intra_offset)
        if len(coded.frames) != gop.frame_count or len(coded.recon) != gop.frame_count:
            raise FrameCountError(
                f"the codec returned {len(coded.frames)} frames for a GOP of {gop.frame_count}"
            )
        data = b"".join(
            Unit(frame.kind, gop.start_frame + i, frame.payload).to_bytes()
            for i, frame in enumerate(coded.frames)
        )
        return EncodedGop(
            index=gop.index,
            data=data,
            frames=gop.frame_count,
            encode_seconds=time.perf_counter() - started,
            details={
                "model_id": self.codec.model_id,
                "quality": task.quality,
                "intra_offset": task.intra_offset,
                "payload_bytes": coded.payload_bytes,
                "psnr_rgb": psnr_rgb(sources, coded.recon),
                "recon_sha256": frames_digest(coded.recon),
                "kinds": "".join(chr(frame.kind) for frame in coded.frames),
            },
        )

    def close(self) -> None:
        self._readers.close()


@dataclass(frozen=True)
class GopDecodeTask:
    """One GOP of a .gflv file to decode."""

    path: str
    extent: GopExtent
    width: int
    height: int
    quality: int
    intra_offset: int = 0


@dataclass(frozen=True)
class DecodedGop:
    """A decoded GOP: its RGB frames in order."""

    index: int
    frames: tuple[np.ndarray, ...]
    seconds: float


class LearnedDecodeStage:
    """Decodes GOPs of .gflv files with one loaded codec."""

    def __init__(self, ref: LearnedCodecRef) -> None:
        self.codec = open_codec(ref)

    def __call__(self, task: GopDecodeTask) -> DecodedGop:
        started = time.perf_counter()
        with open(task.path, "rb") as handle:
            units = read_gop(handle, task.extent, task.path)
        frames = self.codec.decode_gop(
            [CodedFrame(unit.kind, unit.payload) for unit in units],
            task.width, task.height, task.quality, task.intra_offset,
        )
        if len(frames) != task.extent.frames:
            raise FrameCountError(
                f"decoded {len(frames)} frames for a GOP of {task.extent.frames}"
            )
        return DecodedGop(task.extent.index, tuple(frames), time.perf_counter() - started)
