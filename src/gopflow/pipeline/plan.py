"""Plan closed GOPs: scene-cut aligned, at most ``max_frames`` long, at least ``min_frames``.

Data flow: ``detect_scene_cuts`` (ffmpeg's ``scdet`` filter on a downscaled decode: a
well-kept detector, multi-threaded, and ``metadata=print`` gives each cut's absolute frame
number) -> ``plan_gops`` (pure) -> [:class:`GopSpec`] written to the work dir.
Cutting GOPs at scene changes puts each IDR where the encoder wants an I-frame anyway
(Av1an's scene-aligned chunks).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from gopflow.errors import CorruptInputError, UsageError
from gopflow.media.ffmpeg import find_ffmpeg, scene_detect_command
from gopflow.types import GopSpec, VideoInfo

_FRAME_LINE = re.compile(r"^frame:(\d+)\s")
DEFAULT_SCENE_THRESHOLD = 10.0
_DETECT_WIDTH = 320


def detect_scene_cuts(info: VideoInfo, threshold: float = DEFAULT_SCENE_THRESHOLD) -> list[int]:
    """Frame indices that start a new scene (sorted, without 0)."""
    tool = find_ffmpeg()
    tool.require(filters=["scdet", "metadata", "scale"])
    with tempfile.TemporaryDirectory(prefix="gopflow-scd-") as scratch:
        listing = os.path.join(scratch, "cuts.txt")
        command = scene_detect_command(
            info.path, info.stream_index, threshold, listing, _DETECT_WIDTH, exe=tool.path
        )
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise CorruptInputError(f"scene detection could not decode {info.path}: {last}")
        cuts: set[int] = set()
        if os.path.exists(listing):
            with open(listing, encoding="utf-8") as handle:
                for line in handle:
                    match = _FRAME_LINE.match(line)
                    if match:
                        cuts.add(int(match.group(1)))
    return sorted(c for c in cuts if 0 < c < info.frame_count)


def plan_gops(
    frame_count: int,
    max_frames: int,
    min_frames: int,
    cuts: Sequence[int] = (),
    timestamps: Sequence[int | None] | None = None,
) -> list[GopSpec]:
    """Split ``frame_count`` frames into closed GOPs.

    A GOP ends at the first scene cut that leaves it at least ``min_frames`` long, else after
    ``max_frames``. A tail shorter than ``min_frames`` is avoided by splitting the last two
    GOPs evenly. ``timestamps[i]`` (presentation order) becomes each GOP's ``start_pts``.
    """
    if frame_count <= 0:
        raise UsageError("cannot plan GOPs for a video with no frames")
    if max_frames < 1:
        raise UsageError("the maximum GOP length must be at least one frame")
    min_frames = max(1, min(min_frames, max_frames))
    cut_set = sorted({c for c in cuts if 0 < c <= frame_count - min_frames})
    bounds: list[tuple[int, int, bool]] = []
    start, starts_scene = 0, True
    position = 0
    while start < frame_count:
        while position < len(cut_set) and cut_set[position] < start + min_frames:
            position += 1
        limit = start + max_frames
        if position < len(cut_set) and cut_set[position] <= limit:
            end, next_is_cut = cut_set[position], True
        else:
            end, next_is_cut = min(limit, frame_count), False
            upcoming = cut_set[position] if position < len(cut_set) else frame_count
            if 0 < upcoming - end < min_frames and upcoming - start >= 2 * min_frames:
                # A cut (or the end) falls just after the limit: split the span up to it in
                # two balanced GOPs rather than leave a GOP shorter than the minimum.
                end = start + (upcoming - start + 1) // 2
        bounds.append((start, end, starts_scene))
        start, starts_scene = end, next_is_cut
    gops = []
    for index, (first, end, scene) in enumerate(bounds):
        pts = None if timestamps is None else timestamps[first]
        gops.append(GopSpec(index, first, end - first, pts, scene))
    return gops


@dataclass(frozen=True)
class PlanOptions:
    """How a video is cut into GOPs (the same for every job kind; part of the work-dir key)."""

    gop_seconds: float = 2.0
    min_gop_seconds: float = 0.5
    scene_detect: bool = True
    scene_threshold: float = DEFAULT_SCENE_THRESHOLD

    def __post_init__(self) -> None:
        if not 0 < self.gop_seconds <= 60:
            raise UsageError("--gop-seconds must be in (0, 60]")
        if not 0 <= self.min_gop_seconds <= self.gop_seconds:
            raise UsageError("--min-gop-seconds must be between 0 and --gop-seconds")
        if not 0 <= self.scene_threshold <= 100:
            raise UsageError(f"--scene-threshold must be 0 to 100, got {self.scene_threshold:g}")

    def keyint(self, info: VideoInfo) -> int:
        """The longest GOP in frames."""
        return max(1, round(self.gop_seconds * float(info.fps)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_video(
    info: VideoInfo, options: PlanOptions, stamps: Sequence[int | None]
) -> list[GopSpec]:
    """The GOPs of ``info``'s video: scene cuts (unless off), then :func:`plan_gops`."""
    min_frames = max(1, round(options.min_gop_seconds * float(info.fps)))
    cuts = detect_scene_cuts(info, options.scene_threshold) if options.scene_detect else []
    seek_stamps = stamps if info.read_mode == "seek" else None
    return plan_gops(info.frame_count, options.keyint(info), min_frames, cuts, seek_stamps)
