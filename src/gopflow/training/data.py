"""Training data shared by the precoder and codec trainers: clips, frames and crops.

A training set is every video file directly in a directory (never its subdirectories),
named and sized by :func:`data_hash` so a checkpoint can tell when its data changed.
Frames are never decoded whole-video: :class:`FramePool` keeps a bounded pool of decoded
frame runs, re-decoding one slot at a time from a random clip at a random position (PyAV
seek when the container has timestamps, a decode scan for raw streams), and cuts random
crops with flips from it. Every random choice is a function of ``(seed, step)`` (numpy
``default_rng([seed, ...])``), so a resumed run sees exactly the data an uninterrupted one
would.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gopflow.errors import InputError

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".264", ".h264", ".265",
     ".hevc", ".y4m", ".mpg", ".mpeg", ".ivf"}
)


@dataclass(frozen=True)
class Clip:
    """A training clip: where it is, its size, and how to reach frame ``i``."""

    path: str
    name: str
    size_bytes: int
    width: int
    height: int
    frames: int
    pts: tuple[int, ...] | None  # sorted presentation timestamps; None: scan (raw stream)


def list_clips(data_dir: str | os.PathLike[str]) -> list[Path]:
    """Video files directly in ``data_dir``, sorted by name."""
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(f"training data directory {root} does not exist")
    files = sorted(
        p for p in root.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
    )
    if not files:
        raise InputError(f"no video files in {root} (extensions: {sorted(VIDEO_EXTENSIONS)})")
    return files


def data_hash(files: Sequence[Path]) -> str:
    """sha256 over ``name\\tsize\\n`` of every clip, sorted by name (cheap, content-blind)."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        digest.update(f"{path.name}\t{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def index_clip(path: Path) -> Clip:
    """Demux ``path`` once (no decoding): frame count and timestamps."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path} has no video stream")
            stream = container.streams.video[0]
            stamps = [p.pts for p in container.demux(stream) if p.size]
            width, height = stream.codec_context.width, stream.codec_context.height
    except av.error.FFmpegError as exc:
        raise InputError(f"cannot read training clip {path}: {exc}") from exc
    seekable = bool(stamps) and all(s is not None for s in stamps) and len(set(stamps)) == len(
        stamps
    )
    pts = tuple(sorted(stamps)) if seekable else None  # type: ignore[type-var]
    return Clip(str(path), path.name, path.stat().st_size, width, height, len(stamps), pts)


def read_luma(clip: Clip, index: int, count: int = 1) -> list[np.ndarray]:
    """Luma of frames ``index .. index + count - 1`` of ``clip`` (uint8 copies)."""
    from gopflow.precoders.inference import luma_array

    return read_frames(clip, index, count, luma_array)


def read_rgb(clip: Clip, index: int, count: int = 1) -> list[np.ndarray]:
    """Frames ``index .. index + count - 1`` of ``clip`` as ``H x W x 3`` uint8 RGB."""
    return read_frames(clip, index, count, lambda frame: frame.to_ndarray(format="rgb24"))


def read_frames(
    clip: Clip, index: int, count: int, convert: Callable[[Any], np.ndarray]
) -> list[np.ndarray]:
    """Frames ``index .. index + count - 1`` of ``clip``, each through ``convert``."""
    import av

    out: list[np.ndarray] = []
    with av.open(clip.path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        position = 0
        if clip.pts is not None and index > 0:
            container.seek(clip.pts[index], stream=stream, backward=True)
            position = -1  # found by timestamp
        for frame in container.decode(stream):
            if position < 0:
                if frame.pts is None or frame.pts < clip.pts[index]:  # type: ignore[index]
                    continue
                position = index
            if position >= index:
                out.append(np.array(convert(frame), copy=True))
                if len(out) == count:
                    break
            position += 1
    if len(out) != count:
        raise InputError(f"{clip.name}: could not decode frames {index}..{index + count - 1}")
    return out


class FramePool:
    """A bounded, seed-determined pool of decoded frames (luma by default, or ``reader``'s),
    ``span`` consecutive frames per slot.

    Slot ``j`` at step ``s`` holds the frames drawn by ``default_rng([seed, 1, j, g])``
    where ``g`` is how often the slot has been refreshed by then (one slot every
    ``refresh_every`` steps, round robin), so the pool at any step can be rebuilt from the
    seed alone (resume).
    """

    def __init__(
        self, clips: Sequence[Clip], seed: int, size: int, span: int,
        reader: Callable[[Clip, int, int], list[np.ndarray]] = read_luma,
        refresh_every: int = 1, stride: int = 1,
    ) -> None:
        self.clips = list(clips)
        self.seed, self.size, self.span = seed, size, span
        self.reader, self.refresh_every = reader, max(1, refresh_every)
        self.stride = max(1, stride)
        self.slots: list[list[np.ndarray]] = []
        self.generations: list[int] = []

    def _draw(self, slot: int, generation: int) -> list[np.ndarray]:
        """A slot's frames: ``span`` frames ``s`` apart, ``s`` drawn from ``1..stride`` (as
        far as the clip is long enough; with ``stride`` 1 no extra draw is made)."""
        rng = np.random.default_rng([self.seed, 1, slot, generation])
        clip = self.clips[int(rng.integers(len(self.clips)))]
        step = 1
        if self.stride > 1 and self.span > 1:
            step = min(int(rng.integers(1, self.stride + 1)),
                       max(1, (clip.frames - 1) // (self.span - 1)))
        need = (self.span - 1) * step + 1
        index = int(rng.integers(clip.frames - need + 1))
        return self.reader(clip, index, need)[::step]

    def generation(self, slot: int, step: int) -> int:
        events = step // self.refresh_every  # one refresh event every refresh_every steps
        return (events - slot + self.size - 1) // self.size if events > slot else 0

    def at(self, step: int) -> FramePool:
        """Bring the pool to its state at ``step`` (decoding only what changed)."""
        wanted = [self.generation(j, step) for j in range(self.size)]
        if not self.slots:
            self.slots = [self._draw(j, g) for j, g in enumerate(wanted)]
        else:
            for j, g in enumerate(wanted):
                if g != self.generations[j]:
                    self.slots[j] = self._draw(j, g)
        self.generations = wanted
        return self

    def batch(self, step: int, batch: int, crop: int, stream: int = 2) -> np.ndarray:
        """``batch x span x crop x crop (x channels)`` uint8 crops (random slot, position,
        flips)."""
        rng = np.random.default_rng([self.seed, stream, step])
        out = np.empty((batch, self.span, crop, crop, *self.slots[0][0].shape[2:]), np.uint8)
        for b in range(batch):
            frames = self.slots[int(rng.integers(self.size))]
            height, width = frames[0].shape[:2]
            y = int(rng.integers(height - crop + 1))
            x = int(rng.integers(width - crop + 1))
            stack = np.stack([f[y : y + crop, x : x + crop] for f in frames])
            if rng.random() < 0.5:
                stack = stack[:, :, ::-1]
            if rng.random() < 0.5:
                stack = stack[:, ::-1, :]
            if self.span > 1 and rng.random() < 0.5:
                stack = stack[::-1]  # time reversal: the middle frame is the same
            out[b] = stack
        return out


def usable_clips(files: Sequence[Path], crop: int, span: int) -> list[Clip]:
    """The clips of ``files`` at least ``crop`` pixels high and wide with ``span`` frames."""
    clips = [index_clip(p) for p in files]
    usable = [c for c in clips if min(c.width, c.height) >= crop and c.frames >= span]
    if not usable:
        raise InputError(
            f"no clip in the training data is at least {crop}x{crop} with {span} frames"
        )
    return usable


def to_tensor(batch: np.ndarray) -> Any:
    """uint8 crops as float32 in [0, 1] (same shape)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(batch)).float().div_(255.0)

