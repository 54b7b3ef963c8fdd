"""Probe encodes for a per-title ladder: (height, CRF) grid -> :class:`RatePoint` per encode.

Data flow: for each probed frame range of the source (a short representative clip, or a
few GOPs): its frames, read frame-accurately (:class:`gopflow.media.reader.GopReader`) ->
a raw Y4M reference at the source size (raw, not FFV1: every probe encode and every VMAF
run reads it again, and decoding FFV1 cost more than the x264 veryfast encode itself) ->
per grid point: scaled to the height (``scaler``, width keeping the aspect, even) and
encoded with the rungs' own encoder options (:func:`gopflow.codecs.x26x.encoder_options`)
-> VMAF against the reference, the encode upscaled bicubic to the source size as a player
does (:func:`gopflow.quality.vmaf.vmaf_scores`, every ``vmaf_subsample``-th frame) ->
bitrate from the encoded video packets' bytes over the ranges' duration, VMAF the
frame-weighted mean over all ranges.

With ``precoder="dvp"`` the grid's heights are those of
:func:`gopflow.precoders.dvp.ladder.dvp_heights` and a point below the source's height is
encoded from the learned DVP downscale of the reference (one raw Y4M per DVP scale and
range, made once before the walk, one torch thread: the bytes a rung's worker makes),
Lanczos-scaled further where the height is below DVP's picture
(:func:`~gopflow.precoders.dvp.ladder.dvp_rung`): the hull scores what the rungs ship.

Which grid points are encoded: all of them, unless a ladder's ``floor_kbps`` / ``top_vmaf``
are given. Then each height starts at the middle CRF and walks outwards in rounds (every
round's points run in parallel; the decisions are made between rounds, so the result does
not depend on timing): coarser until a point falls below the floor (it brackets the floor),
finer until a point reaches ``top_vmaf`` or exceeds ``max_kbps`` (it brackets the top
rung), or until a point lies under the upper hull of the taller heights' points: a
smaller picture that loses at some bitrate loses at every higher one, so its finer CRFs
cannot be on the hull.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import av

from gopflow.codecs.x26x import ENCODER_NAMES, EncodeSettings, encoder_options
from gopflow.errors import EncoderError, InputError, UsageError
from gopflow.media.ffmpeg import (
    feed_process,
    find_ffmpeg,
    restore_writer_command,
    scaled_encode_command,
)
from gopflow.media.probe import probe
from gopflow.media.reader import GopReader, frame_bytes
from gopflow.precoders.dvp.ladder import DvpRung, check_dvp_source, dvp_heights, dvp_rung
from gopflow.quality.hull import RatePoint, hull_vmaf, upper_hull
from gopflow.quality.vmaf import vmaf_scores
from gopflow.types import GopSpec

StreamingCodec = Literal["x264", "x265", "svtav1"]
VMAF_SUBSAMPLE = 3
"""Probes score every 3rd frame: libvmaf's share of a probe fell to a third, and on
flower_960x540 (150 frames, x264 veryfast 360p CRF 21) the mean moved by +0.16 (83.42 ->
83.58), about equally for every point, so the hull's shape and the rungs keep."""
DEFAULT_HEIGHTS = (1080, 720, 540, 432, 360, 270, 216)
DEFAULT_CRFS: dict[str, tuple[float, ...]] = {
    # Low enough at the top to reach VMAF 95 on detailed clips (x264 CRF 18 at 540p gave
    # 94.7 on flower_960x540), high enough at the bottom for a ~150 kbit/s floor.
    "x264": (16, 21, 26, 31, 37),
    "x265": (18, 23, 28, 33, 39),
    "svtav1": (22, 30, 38, 46, 55),
}


@dataclass(frozen=True)
class ProbeResult:
    """The grid's points and what they cost (wall seconds of encoding and of scoring)."""

    points: tuple[RatePoint, ...]
    frames: int
    encode_seconds: float
    vmaf_seconds: float
    wall_seconds: float


def ladder_heights(
    source_height: int, heights: Sequence[int] = DEFAULT_HEIGHTS
) -> tuple[int, ...]:
    """The even probe heights no taller than the source, plus the source's own height
    (one row less if odd: 4:2:0 needs even sizes)."""
    kept = {h - h % 2 for h in (*heights, source_height) if 2 <= h <= source_height}
    return tuple(sorted(kept, reverse=True))


def scaled_width(width: int, height: int, target_height: int) -> int:
    """The even width that keeps ``width``:``height`` at ``target_height`` (the source's
    own width, less one column if odd, at its own height)."""
    if target_height >= height - 1:
        return max(2, width - width % 2)
    return max(2, round(width * target_height / height / 2) * 2)


def _reference(
    source: str, ranges: Sequence[tuple[int, int]], folder: str, exe: str
) -> list[tuple[str, int]]:
    """Each frame range of ``source`` as a raw Y4M file: (path, frames)."""
    info = probe(source)
    out: list[tuple[str, int]] = []
    with GopReader(info.path, info.stream_index, info.read_mode) as reader:
        for number, (start, count) in enumerate(ranges):
            path = os.path.join(folder, f"ref_{number}.y4m")
            gop = GopSpec(index=number, start_frame=start, frame_count=count, start_pts=None,
                          scene_cut=False)
            pix_fmt = "yuv420p"
            command = restore_writer_command(
                path, ".y4m", width=info.width, height=info.height, fps=info.fps,
                pix_fmt=pix_fmt, exe=exe,
            )
            chunks = (frame_bytes(frame, pix_fmt) for frame in reader.read(gop))
            code, reason = feed_process(command, chunks, os.path.join(folder, "ref.log"))
            if code != 0:
                raise EncoderError(f"writing the probe reference failed: {reason}")
            out.append((path, count))
    return out


def _dvp_references(
    references: Sequence[tuple[str, int]], rungs: Sequence[DvpRung], fps: Any, folder: str,
    exe: str, workers: int,
) -> dict[tuple[Fraction, int], str]:
    """The DVP downscale of each reference at each scale ``rungs`` use, as raw Y4M:
    (scale, range number) -> path. One torch thread per downscale (the rungs' count, so
    the bytes are theirs), ``workers`` at once."""
    from gopflow.precoders.dvp import DvpPrecoder
    from gopflow.precoders.inference import torch_settings

    sizes = {rung.scale: rung.dvp_size for rung in rungs}
    jobs = [(scale, number) for scale in sorted(sizes, reverse=True)
            for number in range(len(references))]

    def make(job: tuple[Fraction, int]) -> str:
        scale, number = job
        width, height = sizes[scale]
        path = os.path.join(folder, f"dvp_{scale.numerator}_{scale.denominator}_{number}.y4m")
        command = restore_writer_command(path, ".y4m", width=width, height=height, fps=fps,
                                         pix_fmt="yuv420p", exe=exe)
        precoder = DvpPrecoder(scale, threads=1)
        with av.open(references[number][0]) as container:
            chunks = (precoder.down(frame) for frame in container.decode(video=0))
            code, reason = feed_process(command, chunks, os.path.join(folder, "dvp.log"))
        if code != 0:
            raise EncoderError(f"writing the DVP {scale} probe reference failed: {reason}")
        return path

    # Held at one thread around the pool: the workers' own (nested) settings then change
    # nothing process-wide while another worker runs.
    with torch_settings(1), ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(jobs, pool.map(make, jobs), strict=True))


def _packet_bytes(path: str) -> int:
    with av.open(path) as container:
        stream = container.streams.video[0]
        return sum(p.size for p in container.demux(stream) if p.size)


def _dominated(point: RatePoint, taller: Sequence[RatePoint]) -> bool:
    """Whether ``point`` lies under the upper hull of ``taller`` (points of larger
    pictures), within the bitrates those cover."""
    hull = upper_hull(taller)
    if len(hull) < 2 or not hull[0].kbps <= point.kbps <= hull[-1].kbps:
        return False
    return point.vmaf < hull_vmaf(hull, point.kbps)


def _walk(
    heights: Sequence[int],
    crfs: Sequence[float],
    measure: Any,
    workers: int,
    floor_kbps: float | None,
    top_vmaf: float | None,
    max_kbps: float | None,
) -> list[tuple[RatePoint, float, float]]:
    """The grid points ``measure`` ((height, crf) -> (point, encode s, VMAF s)) is run on:
    every one without ``floor_kbps`` and ``top_vmaf``, else the walk of the module's
    docstring, in rounds."""
    order = sorted(crfs)  # finest (most bits) first
    if floor_kbps is None or top_vmaf is None:
        grid = [(h, c) for h in heights for c in sorted(crfs)]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(measure, grid))
    middle = len(order) // 2
    done: dict[tuple[int, float], tuple[RatePoint, float, float]] = {}
    # Per height, the CRF indices to measure next, each with its walk's direction:
    # +1 coarser, -1 finer, 0 both (the middle point starts both walks).
    pending: dict[int, list[tuple[int, int]]] = {h: [(middle, 0)] for h in heights}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while any(pending.values()):
            batch = [(h, order[i]) for h in heights for i, _ in pending[h]]
            for key, result in zip(batch, pool.map(measure, batch), strict=True):
                done[key] = result
            points = [r[0] for r in done.values()]
            for h in heights:
                following: list[tuple[int, int]] = []
                for i, direction in pending[h]:
                    point = done[(h, order[i])][0]
                    if direction >= 0 and point.kbps >= floor_kbps and i + 1 < len(order):
                        following.append((i + 1, 1))
                    top = point.vmaf >= top_vmaf or (max_kbps is not None
                                                     and point.kbps > max_kbps)
                    if direction <= 0 and i > 0 and not top and not _dominated(
                            point, [p for p in points if p.height > h]):
                        following.append((i - 1, -1))
                pending[h] = following
    return [done[(h, c)] for h in heights for c in order if (h, c) in done]


def probe_grid(
    source: str,
    ranges: Sequence[tuple[int, int]] | None = None,
    *,
    codec: StreamingCodec = "x264",
    heights: Sequence[int] = DEFAULT_HEIGHTS,
    crfs: Sequence[float] | None = None,
    preset: str | None = None,
    scaler: str = "lanczos",
    threads: int | None = None,
    workers: int = 1,
    keyint: int = 250,
    vmaf_subsample: int = VMAF_SUBSAMPLE,
    floor_kbps: float | None = None,
    top_vmaf: float | None = None,
    max_kbps: float | None = None,
    precoder: str = "none",
    metric: str = "vmaf",
) -> ProbeResult:
    """Encode ``ranges`` of ``source`` ((first frame, frame count) pairs; default: the
    first 4 seconds) at the (height, CRF) grid points and score each with VMAF at the
    source size: every point, or with ``floor_kbps`` and ``top_vmaf`` only those the
    ladder can use (see the module's docstring). Encoder options are the rungs' own
    (``codec``, ``preset``, ``keyint``). ``workers`` points run at once, each encode and
    score with ``threads`` threads (default: the CPUs over ``workers``). ``precoder="dvp"``
    makes the pictures below the source's height with DVP (see the module's docstring).
    ``metric`` (``vmaf`` or ``vmaf_neg``) is the score of every point (``top_vmaf`` too)."""
    began = time.perf_counter()
    if codec not in ("x264", "x265", "svtav1"):
        raise UsageError(f"unknown codec {codec!r}; choose x264, x265 or svtav1")
    if metric not in ("vmaf", "vmaf_neg"):
        raise UsageError(f"a ladder probe scores vmaf or vmaf_neg, not {metric!r}")
    if precoder not in ("none", "dvp"):
        raise UsageError(f"a ladder probe's precoder is none or dvp, not {precoder!r}")
    tool = find_ffmpeg()
    tool.require(encoders=[ENCODER_NAMES[codec]], filters=["libvmaf", "scale"])
    info = probe(source)
    if ranges is None:
        ranges = [(0, min(info.frame_count, max(1, round(4 * info.fps))))]
    for start, count in ranges:
        if start < 0 or count < 1 or start + count > info.frame_count:
            raise UsageError(
                f"probe range ({start}, {count}) lies outside the source's "
                f"{info.frame_count} frames"
            )
    if workers < 1:
        raise UsageError("workers must be at least 1")
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    crfs = tuple(crfs if crfs is not None else DEFAULT_CRFS[codec])
    # Checked once here (preset name, CRF range); each point makes its own.
    EncodeSettings(codec=codec, preset=preset or "medium", crf=max(crfs), threads=threads,
                   keyint=keyint)
    frames = sum(count for _, count in ranges)
    seconds = frames / float(info.fps)
    grid = ladder_heights(info.height, heights)
    learned: dict[int, DvpRung] = {}
    if precoder == "dvp":
        check_dvp_source(info.width, info.height)
        grid = dvp_heights(info.width, info.height, heights)
        learned = {h: r for h in grid if (r := dvp_rung(info.width, info.height, h))}
    with tempfile.TemporaryDirectory(prefix="gopflow-probe-") as folder:
        references = _reference(source, ranges, folder, tool.path)
        downscaled = _dvp_references(references, list(learned.values()), info.fps, folder,
                                     tool.path, workers) if learned else {}

        def run(point: tuple[int, float]) -> tuple[RatePoint, float, float]:
            height, crf = point
            width = scaled_width(info.width, info.height, height)
            rung = learned.get(height)
            if rung is not None:
                width, height = rung.size
            settings = EncodeSettings(codec=codec, preset=preset or "medium", crf=crf,
                                      threads=threads, keyint=keyint)
            total_bytes, weighted, enc, score = 0, 0.0, 0.0, 0.0
            for number, (reference, count) in enumerate(references):
                output = os.path.join(folder, f"p_{height}_{crf:g}_{number}.mp4")
                same = (width, height) == (info.width, info.height)
                encoded = reference
                if rung is not None:  # from DVP's picture, Lanczos only below its height
                    encoded = downscaled[(rung.scale, number)]
                resize = not same and (rung is None or rung.then_lanczos)
                command = scaled_encode_command(
                    encoded, output, width=width if resize else 0,
                    height=height if resize else 0, scaler=scaler,
                    encoder=encoder_options(settings), exe=tool.path,
                )
                tick = time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True)
                enc += time.perf_counter() - tick
                if done.returncode != 0:
                    last = (done.stderr.strip().splitlines() or ["?"])[-1]
                    raise EncoderError(f"probe encode {codec} {height}p CRF {crf:g}: {last}")
                total_bytes += _packet_bytes(output)
                tick = time.perf_counter()
                scores = vmaf_scores(reference, output, (metric,), scale=not same,
                                     threads=threads, subsample=vmaf_subsample)
                score += time.perf_counter() - tick
                weighted += scores.summary()[metric].mean * count
                os.unlink(output)
            kbps = total_bytes * 8 / seconds / 1000
            return RatePoint(width, height, float(crf), kbps, weighted / frames), enc, score

        results = _walk(grid, crfs, run, workers,
                        floor_kbps, top_vmaf, max_kbps)
    if not results:
        raise InputError(f"nothing to probe in {source}")
    points = tuple(r[0] for r in results)
    encode_time = sum(r[1] for r in results)
    vmaf_time = sum(r[2] for r in results)
    return ProbeResult(points, frames, round(encode_time, 3), round(vmaf_time, 3),
                       round(time.perf_counter() - began, 3))
