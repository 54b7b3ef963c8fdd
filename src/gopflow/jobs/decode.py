"""The learned-codec jobs: ``gopflow transcode --codec intra|dvc|fvc`` and ``gopflow decode``.

Transcode (DVC, Lu et al. CVPR 2019; FVC, Hu et al. CVPR 2021; intra-only: Balle 2018)::

    input --probe--> VideoInfo --scdet + plan--> [GopSpec] (as for x264; job.json in the work dir)
          --RayRunner.map_lanes--> LearnedEncodeStage per GOP (decodes its own frames, RGB24,
          encode_gop) --> the GOP's units, spooled to the work dir as they arrive (resumable)
          --> header + units in GOP order + end unit --> OUTPUT.gflv (temp, then rename)

The driver holds compressed payloads only, one GOP at a time. Decode::

    FILE.gflv --scan (header, every checksum, GOP structure; nothing decoded yet)--> extents
          --RayRunner.map_ordered (bounded window)--> LearnedDecodeStage per GOP
          --> frames in order --> Y4M (exact RGB, 16-bit 4:4:4) or MP4/MKV (libx264rgb -qp 0,
          lossless RGB) under a temp name --> frame count checked --> rename
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from gopflow.codecs.learned.api import CODEC_NAMES, DEFAULT_INTRA_OFFSETS
from gopflow.codecs.learned.bitstream import (
    BitstreamError,
    StreamHeader,
    Unit,
    UnitKind,
    gop_structure,
    read_header,
    scan_gops,
    units_from_bytes,
    write_stream,
)
from gopflow.errors import (
    FrameCountError,
    InputNotFoundError,
    OutputError,
    UsageError,
)
from gopflow.fileio import atomic_write, atomic_write_json
from gopflow.media.ffmpeg import feed_process, find_ffmpeg
from gopflow.media.probe import probe_with_timestamps
from gopflow.media.y4m import y4m_frame, y4m_header
from gopflow.pipeline.runner import RayRunner
from gopflow.pipeline.stages import (
    DecodedGop,
    GopDecodeTask,
    LearnedCodecRef,
    LearnedDecodeStage,
    LearnedEncodeStage,
    LearnedGopTask,
    open_codec,
)
from gopflow.pipeline.workdir import WorkDir
from gopflow.types import GopRecord, TranscodeReport

if TYPE_CHECKING:
    from gopflow.jobs.transcode import TranscodeConfig

EXTENSION = ".gflv"
DECODE_WRITERS = {
    ".mp4": ["-c:v", "libx264rgb", "-qp", "0", "-preset", "veryfast", "-f", "mp4"],
    ".mkv": ["-c:v", "libx264rgb", "-qp", "0", "-preset", "veryfast", "-f", "matroska"],
}


@dataclass(frozen=True)
class LearnedSettings:
    """The learned codec of a transcode: name, quality level, weights, torch threads."""

    codec: str
    level: int | None = None
    """1 (lowest rate) .. the codec's levels; None: the level above the middle."""
    registry: str | None = None
    adaptive_intra: bool | None = None
    """dvc/fvc: code each P frame as intra too and keep the cheaper (R + lambda D); None:
    the default, on for dvc and fvc (intra has no P frames)."""
    rdo: bool | None = None
    """dvc/fvc: choose each P frame's residual dead zone by R + lambda D; None: on for
    dvc and fvc."""
    intra_offset: int | None = None
    """dvc/fvc: intra frames this many levels above ``level``; None:
    the codec's :data:`~gopflow.codecs.learned.api.DEFAULT_INTRA_OFFSETS` entry."""
    motion_refinement: int | None = None
    """dvc/fvc: Adam steps refining each P frame's motion (offsets) latent; None: the
    codec's default with ``rdo`` (:func:`~gopflow.codecs.learned.engine.refine_steps_for`)."""

    @property
    def adaptive(self) -> bool:
        """Whether the encoder decides intra or inter per P frame."""
        return self.codec != "intra" if self.adaptive_intra is None else self.adaptive_intra

    @property
    def rdo_on(self) -> bool:
        """Whether the encoder chooses each P frame's residual dead zone."""
        return self.codec != "intra" if self.rdo is None else self.rdo

    @property
    def offset(self) -> int:
        """Levels between the intra frames and the P frames."""
        if self.intra_offset is not None:
            return self.intra_offset
        return DEFAULT_INTRA_OFFSETS.get(self.codec, 0)

    def ref(self) -> LearnedCodecRef:
        registry = os.path.abspath(self.registry) if self.registry else None
        return LearnedCodecRef(self.codec, registry, self.adaptive, self.rdo_on,
                               self.motion_refinement)


def _slots(runner: RayRunner, workers: int | None) -> int:
    """Actors to start: one CPU each (the codecs run one torch thread, see ``engine``)."""
    cpus = runner.cluster_cpus()
    return min(workers or cpus, cpus)


def _say_nothing(message: str) -> None:
    return None


def run_learned_transcode(
    config: TranscodeConfig, log: Callable[[str], None] | None = None
) -> TranscodeReport:
    """Code ``config.input`` GOP by GOP with the learned codec into one .gflv file."""
    from tqdm import tqdm

    from gopflow.jobs.transcode import _check_output_writable, _plan, work_root

    learned = config.learned
    assert learned is not None
    say = log or _say_nothing
    started = time.perf_counter()
    phases: dict[str, float] = {}
    if not config.output.lower().endswith(EXTENSION):
        raise UsageError(f"a learned codec writes a {EXTENSION} file; name the output *.gflv")
    if learned.codec not in CODEC_NAMES:
        raise UsageError(f"unknown learned codec {learned.codec!r}; "
                         f"choose from {', '.join(CODEC_NAMES)}")
    if learned.codec == "intra" and (learned.adaptive_intra or learned.rdo
                                     or learned.intra_offset or learned.motion_refinement):
        raise UsageError("--adaptive-intra, --rdo, --intra-offset and --motion-refinement are "
                         "for dvc and fvc; --codec intra codes every frame as intra already")
    if learned.intra_offset is not None and not 0 <= learned.intra_offset < 256:
        raise UsageError(f"--intra-offset must be 0 to 255, got {learned.intra_offset}")
    from gopflow.codecs.learned.engine import refine_steps_for

    ref = learned.ref()
    codec = open_codec(ref)
    level = codec.levels // 2 + 1 if learned.level is None else learned.level
    if not 1 <= level <= codec.levels:
        raise UsageError(f"--quality must be 1 to {codec.levels} for {learned.codec}, got {level}")
    info, stamps = probe_with_timestamps(config.input)
    phases["probed"] = round(time.perf_counter() - started, 3)
    _check_output_writable(config.output)
    if info.vfr:
        say(f"note: variable frame rate input; output is constant {float(info.fps):.3f} fps")
    if config.copy_audio and info.audio:
        say("note: a .gflv stream carries video only; the audio is not kept")
    settings = {
        "learned": {"codec": learned.codec, "level": level, "model_id": codec.model_id,
                    "adaptive_intra": learned.adaptive, "rdo": learned.rdo_on,
                    "intra_offset": learned.offset,
                    "motion_refinement": refine_steps_for(
                        learned.codec, learned.rdo_on, learned.motion_refinement)},
        "gop_seconds": config.gop_seconds,
        "min_gop_seconds": config.min_gop_seconds,
        "scene_detect": config.scene_detect,
        "scene_threshold": config.scene_threshold,
    }
    workdir = WorkDir(work_root(config), info.path, settings)
    resumed = workdir.prepare(config.resume)
    gops = workdir.load_plan() if resumed else None
    finished = workdir.finished() if gops is not None else {}
    if gops is None:
        gops = _plan(info, config, stamps)
        workdir.save_plan(info.to_dict(), gops)
    else:
        say(f"resuming: {len(finished)} of {len(gops)} GOPs already done in {workdir.path}")
    phases["planned"] = round(time.perf_counter() - started, 3)
    records = {index: replace(record, resumed=True) for index, record in finished.items()}
    tasks = [
        LearnedGopTask(info.path, info.stream_index, info.read_mode, gop, level,
                       learned.offset)
        for gop in gops
        if gop.index not in finished
    ]
    with tqdm(
        total=info.frame_count, initial=sum(r.frames for r in records.values()),
        unit="frame", desc=f"transcode {learned.codec}", dynamic_ncols=True,
        disable=(not config.progress) if config.progress is not None else None,
    ) as bar:
        if tasks:
            with RayRunner(config.ray_address, config.workers) as runner:
                results = runner.map_lanes(
                    functools.partial(LearnedEncodeStage, ref),
                    tasks,
                    describe=lambda task: _describe_gop(task.gop.index, task.gop.start_frame,
                                                        task.gop.frame_count),
                    cost=lambda task: task.gop.frame_count,
                    actors=_slots(runner, config.workers),
                    max_retries=config.max_retries,
                )
                for task, encoded, node in results:
                    details = encoded.details or {}
                    if details.get("model_id") != codec.model_id:
                        raise OutputError(
                            f"GOP {task.gop.index} was coded by model {details.get('model_id')}, "
                            f"not {codec.model_id} (mixed weights on the cluster?)"
                        )
                    record = GopRecord(
                        index=task.gop.index,
                        start_frame=task.gop.start_frame,
                        frames=encoded.frames,
                        bytes=len(encoded.data),
                        sha256=hashlib.sha256(encoded.data).hexdigest(),
                        encode_seconds=round(encoded.encode_seconds, 4),
                        node_id=node,
                        details=details,
                    )
                    workdir.record(record, encoded.data)
                    records[record.index] = record
                    bar.update(encoded.frames)
    phases["encoded"] = round(time.perf_counter() - started, 3)
    kinds = "".join(str((records[g.index].details or {}).get("kinds", "")) for g in gops)
    if len(kinds) != info.frame_count:
        raise FrameCountError(f"coded {len(kinds)} frames; the input has {info.frame_count}")
    gop_count, gop_size = gop_structure(UnitKind(ord(kind)) for kind in kinds)
    header = StreamHeader(
        model_id=codec.model_id,
        width=info.width,
        height=info.height,
        fps=info.fps,
        gop_size=gop_size,
        frame_count=info.frame_count,
        gop_count=gop_count,
        level=level,
        intra_offset=learned.offset,
    )

    def units() -> Iterator[Unit]:
        for gop in gops:
            with open(workdir.segment_path(gop.index), "rb") as handle:
                yield from units_from_bytes(handle.read(), gop.start_frame, f"GOP {gop.index}")

    size = write_stream(config.output, header, units())
    phases["written"] = round(time.perf_counter() - started, 3)
    report = TranscodeReport(
        input=info.path,
        output=os.path.abspath(config.output),
        settings=settings,
        frames=info.frame_count,
        bytes=size,
        duration_seconds=info.frame_count / float(info.fps),
        wall_seconds=time.perf_counter() - started,
        gops=tuple(records[g.index] for g in gops),
        output_width=info.width,
        output_height=info.height,
        phases=phases,
    )
    if config.report:
        atomic_write_json(os.path.abspath(config.report), report.to_dict())
    if not config.keep_work:
        workdir.remove()
    return report


def _describe_gop(index: int, first: int, frames: int) -> str:
    return f"GOP {index} (frames {first}-{first + frames - 1})"


# ----------------------------------------------------------------------------- decode
@dataclass(frozen=True)
class DecodeConfig:
    """Everything ``gopflow decode`` was asked to do."""

    input: str
    output: str
    registry: str | None = None
    workers: int | None = None
    ray_address: str | None = None
    progress: bool | None = None


@dataclass(frozen=True)
class DecodeResult:
    """What ``decode`` wrote."""

    output: str
    frames: int
    width: int
    height: int
    fps: Fraction
    gops: int
    model_id: str
    wall_seconds: float


def read_stream_index(path: str) -> tuple[StreamHeader, list[Any]]:
    """Header and GOP extents of a .gflv file, every unit checked (one-line errors)."""
    if not os.path.isfile(path):
        raise InputNotFoundError(f"no such file: {path}")
    with open(path, "rb") as handle:
        header = read_header(handle, path)
        return header, scan_gops(handle, header, path)


def run_decode(config: DecodeConfig) -> DecodeResult:
    """Decode a .gflv file to Y4M/MP4/MKV, GOPs in parallel, written in order."""
    from tqdm import tqdm

    from gopflow.jobs.transcode import _check_output_writable

    started = time.perf_counter()
    extension = os.path.splitext(config.output)[1].lower()
    if extension not in (".y4m", *DECODE_WRITERS):
        raise UsageError(f"decode writes .y4m, .mp4 or .mkv, not {extension or '(none)'!r}")
    if config.workers is not None and config.workers < 1:
        raise UsageError("--workers must be at least 1")
    header, extents = read_stream_index(config.input)
    name = header.model_id.split(":", 1)[0]
    if name not in CODEC_NAMES:
        raise BitstreamError(f"{config.input} names an unknown model {header.model_id!r}")
    registry = os.path.abspath(config.registry) if config.registry else None
    ref = LearnedCodecRef(name, registry)
    codec = open_codec(ref)
    if codec.model_id != header.model_id:
        raise UsageError(
            f"{config.input} was coded with model {header.model_id}; the weights here are "
            f"{codec.model_id} (give the registry it was made with: --registry DIR)"
        )
    if not 1 <= header.level <= codec.levels:
        raise BitstreamError(f"{config.input} has quality level {header.level} out of range")
    _check_output_writable(config.output)
    if os.path.abspath(config.input) == os.path.abspath(config.output):
        raise UsageError("the output must not overwrite the input")
    tasks = [
        GopDecodeTask(os.path.abspath(config.input), extent, header.width, header.height,
                      header.level, header.intra_offset)
        for extent in extents
    ]
    with RayRunner(config.ray_address, config.workers) as runner, tqdm(
        total=header.frame_count, unit="frame", desc="decode", dynamic_ncols=True,
        disable=(not config.progress) if config.progress is not None else None,
    ) as bar:
        actors = _slots(runner, config.workers)
        results = runner.map_ordered(
            functools.partial(LearnedDecodeStage, ref),
            tasks,
            describe=lambda task: _describe_gop(task.extent.index, task.extent.first_frame,
                                                task.extent.frames),
            actors=actors,
            window=2 * actors,
        )
        frames = _frames_in_order((decoded for _, decoded in results), header, bar.update)
        if extension == ".y4m":
            _write_y4m(config.output, header, frames)
        else:
            _write_ffmpeg(config.output, header, frames, DECODE_WRITERS[extension])
    return DecodeResult(
        os.path.abspath(config.output), header.frame_count, header.width, header.height,
        header.fps, len(extents), header.model_id, time.perf_counter() - started,
    )


def _frames_in_order(
    gops: Iterator[DecodedGop], header: StreamHeader, advance: Callable[[int], Any]
) -> Iterator[np.ndarray]:
    """Every decoded frame in order; checks sizes and the total count."""
    count = 0
    for decoded in gops:
        for frame in decoded.frames:
            if frame.shape != (header.height, header.width, 3):
                raise FrameCountError(
                    f"GOP {decoded.index} decoded a {frame.shape} frame, the stream is "
                    f"{header.width}x{header.height}"
                )
            yield frame
            count += 1
        advance(len(decoded.frames))
    if count != header.frame_count:
        raise FrameCountError(f"decoded {count} frames; the stream has {header.frame_count}")


def _write_y4m(output: str, header: StreamHeader, frames: Iterator[np.ndarray]) -> None:
    def write(handle: IO[bytes]) -> None:
        handle.write(y4m_header(header.width, header.height, header.fps))
        for frame in frames:
            handle.write(y4m_frame(frame))

    atomic_write(output, write)


def _write_ffmpeg(
    output: str, header: StreamHeader, frames: Iterator[np.ndarray], codec_args: list[str]
) -> None:
    tool = find_ffmpeg()
    tool.require(encoders=["libx264rgb"])
    directory = os.path.dirname(os.path.abspath(output))
    temp = os.path.join(directory, f".{os.path.basename(output)}.gopflow-partial")
    rate = f"{header.fps.numerator}/{header.fps.denominator}"
    command = [
        tool.path, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{header.width}x{header.height}",
        "-framerate", rate, "-i", "pipe:0", *codec_args, "-threads", "1",
        "-fflags", "+bitexact", temp,
    ]
    log_path = temp + ".log"
    try:
        code, reason = feed_process(command, (frame.tobytes() for frame in frames), log_path)
        if code != 0:
            raise OutputError(f"writing {output} failed: {reason}")
        os.replace(temp, output)
    finally:
        for leftover in (temp, log_path):
            if os.path.exists(leftover):
                os.unlink(leftover)
