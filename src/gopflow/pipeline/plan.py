"""Plan closed GOPs: scene-cut aligned, at most ``max_frames`` long, at least ``min_frames``.

Data flow: ``stream_scene_cuts`` (ffmpeg's ``scdet`` filter on a downscaled decode: a
well-kept detector, multi-threaded; ``metadata=print`` on a pipe gives every frame's number
as the decode advances, and the cuts among them) -> :class:`GopPlanner` (pure, incremental)
-> batches of :class:`GopSpec` as soon as each GOP's end is certain. The driver dispatches
each batch at once, so detection runs beside the encoding of the GOPs already planned
instead of before all of them. Cutting GOPs at scene changes puts each IDR where the encoder
wants an I-frame anyway (Av1an's scene-aligned chunks).
"""

from __future__ import annotations

import bisect
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from gopflow.errors import CorruptInputError, UsageError
from gopflow.media.ffmpeg import find_ffmpeg, scene_detect_command
from gopflow.types import GopSpec, VideoInfo

_FRAME_LINE = re.compile(r"^frame:(\d+)\s")
_CUT_KEY = "lavfi.scd.time="
DEFAULT_SCENE_THRESHOLD = 10.0
_DETECT_WIDTH = 320
_REPORT_EVERY = 15  # frames between progress reports of the detector


def stream_scene_cuts(
    info: VideoInfo, threshold: float = DEFAULT_SCENE_THRESHOLD
) -> Iterator[tuple[int, list[int]]]:
    """``(frames scanned, new cuts)`` as detection advances: every cut below the scanned
    count has been reported. The last item has ``info.frame_count`` scanned. Cuts are frame
    indices that start a new scene (without 0), in order."""
    tool = find_ffmpeg()
    tool.require(filters=["scdet", "metadata", "scale"])
    with tempfile.TemporaryDirectory(prefix="gopflow-scd-") as scratch:
        log_path = os.path.join(scratch, "ffmpeg.log")
        command = scene_detect_command(
            info.path, info.stream_index, threshold, "pipe:1", _DETECT_WIDTH, exe=tool.path
        )
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
        assert process.stdout is not None
        frame, reported, cuts = -1, 0, []
        try:
            for line in process.stdout:
                match = _FRAME_LINE.match(line)
                if match:
                    frame = int(match.group(1))
                    if frame - reported >= _REPORT_EVERY:
                        kept = [c for c in cuts if 0 < c < info.frame_count]
                        yield frame, kept  # frames before ``frame`` are complete
                        reported, cuts = frame, []
                elif line.startswith(_CUT_KEY) and frame >= 0:
                    cuts.append(frame)
            code = process.wait()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()
        if code != 0:
            with open(log_path, encoding="utf-8", errors="replace") as handle:
                last = (handle.read().strip().splitlines() or ["unknown error"])[-1]
            raise CorruptInputError(f"scene detection could not decode {info.path}: {last}")
    yield info.frame_count, [c for c in cuts if 0 < c < info.frame_count]


class GopPlanner:
    """Splits ``frame_count`` frames into closed GOPs, left to right, as cuts become known.

    A GOP ends at the first scene cut that leaves it at least ``min_frames`` long, else after
    ``max_frames``. A tail shorter than ``min_frames`` is avoided by splitting the last two
    GOPs evenly. ``timestamps[i]`` (presentation order) becomes each GOP's ``start_pts``.
    A GOP is given out once no cut still unknown can change it: a cut inside it ends it at
    once; otherwise it waits until the frames up to ``min_frames`` past its limit are
    scanned. Fed all at once or a few frames at a time, it gives the same GOPs.
    """

    def __init__(
        self,
        frame_count: int,
        max_frames: int,
        min_frames: int,
        timestamps: Sequence[int | None] | None = None,
    ) -> None:
        if frame_count <= 0:
            raise UsageError("cannot plan GOPs for a video with no frames")
        if max_frames < 1:
            raise UsageError("the maximum GOP length must be at least one frame")
        self.frame_count = frame_count
        self.max_frames = max_frames
        self.min_frames = max(1, min(min_frames, max_frames))
        self.timestamps = timestamps
        self._cuts: list[int] = []
        self._position = 0  # first cut not behind the current GOP's start + min_frames
        self._start = 0
        self._starts_scene = True
        self._index = 0

    @property
    def done(self) -> bool:
        return self._start >= self.frame_count

    def advance(self, scanned: int, cuts: Iterable[int] = ()) -> list[GopSpec]:
        """Take ``cuts`` (any order; every cut below ``scanned`` must have been given by
        now) and return the GOPs that became certain."""
        for cut in cuts:
            if 0 < cut <= self.frame_count - self.min_frames:
                at = bisect.bisect_left(self._cuts, cut)
                if at == len(self._cuts) or self._cuts[at] != cut:
                    self._cuts.insert(at, cut)
        scanned = min(scanned, self.frame_count)
        cut_set, lo, hi = self._cuts, self.min_frames, self.max_frames
        out: list[GopSpec] = []
        while self._start < self.frame_count:
            start = self._start
            while self._position < len(cut_set) and cut_set[self._position] < start + lo:
                self._position += 1
            limit = start + hi
            if self._position < len(cut_set) and cut_set[self._position] <= limit:
                end, next_is_cut = cut_set[self._position], True
            elif scanned >= min(limit + lo, self.frame_count):
                end, next_is_cut = min(limit, self.frame_count), False
                upcoming = (
                    cut_set[self._position] if self._position < len(cut_set)
                    else self.frame_count
                )
                if 0 < upcoming - end < lo and upcoming - start >= 2 * lo:
                    # A cut (or the end) falls just after the limit: split the span up to it
                    # in two balanced GOPs rather than leave a GOP shorter than the minimum.
                    end = start + (upcoming - start + 1) // 2
            else:
                break  # a cut not yet scanned could still end or split this GOP
            pts = None if self.timestamps is None else self.timestamps[start]
            out.append(GopSpec(self._index, start, end - start, pts, self._starts_scene))
            self._index += 1
            self._start, self._starts_scene = end, next_is_cut
        return out


def plan_gops(
    frame_count: int,
    max_frames: int,
    min_frames: int,
    cuts: Sequence[int] = (),
    timestamps: Sequence[int | None] | None = None,
) -> list[GopSpec]:
    """Every GOP of ``frame_count`` frames with all ``cuts`` known (see :class:`GopPlanner`)."""
    planner = GopPlanner(frame_count, max_frames, min_frames, timestamps)
    return planner.advance(frame_count, cuts)


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


def iter_plan(
    info: VideoInfo, options: PlanOptions, stamps: Sequence[int | None]
) -> Iterator[list[GopSpec]]:
    """The GOPs of ``info``'s video in batches, each as soon as scene detection (unless off)
    has scanned far enough to fix it; the batches join to :func:`plan_video`'s list."""
    min_frames = max(1, round(options.min_gop_seconds * float(info.fps)))
    seek_stamps = stamps if info.read_mode == "seek" else None
    planner = GopPlanner(info.frame_count, options.keyint(info), min_frames, seek_stamps)
    if options.scene_detect:
        for scanned, cuts in stream_scene_cuts(info, options.scene_threshold):
            batch = planner.advance(scanned, cuts)
            if batch:
                yield batch
    batch = planner.advance(info.frame_count)
    if batch:
        yield batch
    assert planner.done


def plan_video(
    info: VideoInfo, options: PlanOptions, stamps: Sequence[int | None]
) -> list[GopSpec]:
    """The GOPs of ``info``'s video: scene cuts (unless off), then :class:`GopPlanner`."""
    return [gop for batch in iter_plan(info, options, stamps) for gop in batch]
