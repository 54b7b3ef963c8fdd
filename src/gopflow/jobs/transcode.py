"""The transcode job: probe -> plan -> GOPs on Ray -> ordered assembly -> report.

Data flow::

    input --probe--> VideoInfo --scdet + plan--> [GopSpec] (job.json in the work dir)
          --RayRunner (bounded window)--> encode_gop per GOP (decodes its own frames)
          --> segments + done records (atomic, resumable) --> assemble --> output + report
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from gopflow.codecs.x26x import ENCODER_NAMES, PRESETS, coded_size
from gopflow.errors import OutputError, UsageError
from gopflow.fileio import atomic_write_json
from gopflow.media.ffmpeg import find_ffmpeg
from gopflow.media.probe import probe_with_timestamps
from gopflow.pipeline.assemble import assemble, container_for
from gopflow.pipeline.plan import DEFAULT_SCENE_THRESHOLD, detect_scene_cuts, plan_gops
from gopflow.pipeline.runner import RayRunner
from gopflow.pipeline.stages import GopEncodeStage
from gopflow.pipeline.workdir import WorkDir
from gopflow.qro.decisions import load_decisions, save_decisions
from gopflow.qro.stage import QroGopStage, QroGopTask, QroSettings
from gopflow.qro.target import Candidate, Decision
from gopflow.types import (
    EncodeSettings,
    GopRecord,
    GopSpec,
    GopTask,
    SourceFormat,
    TranscodeReport,
    VideoInfo,
)

if TYPE_CHECKING:
    from gopflow.jobs.decode import LearnedSettings

PIX_FMTS = ("yuv420p", "yuv422p", "yuv444p", "yuv420p10le", "yuv422p10le", "yuv444p10le")


@dataclass(frozen=True)
class TranscodeConfig:
    """Everything ``gopflow transcode`` was asked to do."""

    input: str
    output: str
    settings: EncodeSettings = field(default_factory=EncodeSettings)
    gop_seconds: float = 2.0
    min_gop_seconds: float = 0.5
    scene_detect: bool = True
    scene_threshold: float = DEFAULT_SCENE_THRESHOLD
    ray_address: str | None = None
    workers: int | None = None
    max_retries: int = 2
    work_dir: str | None = None
    resume: bool = False
    keep_work: bool = False
    report: str | None = None
    progress: bool | None = None
    copy_audio: bool = True
    qro: QroSettings | None = None
    decisions_in: str | None = None
    decisions_out: str | None = None
    plot: str | None = None
    learned: LearnedSettings | None = None
    """A learned codec (``intra``/``dvc``/``fvc``) instead of x264/x265: a .gflv output."""

    def validate(self) -> None:
        s = self.settings
        if self.learned is not None and (self.qro is not None or self.decisions_in):
            raise UsageError("QRO and --decisions work with x264/x265, not a learned codec")
        if self.qro is not None and container_for(self.output) != "matroska":
            raise UsageError(
                "QRO may change resolution and frame rate from GOP to GOP: write .mkv "
                "(in-band parameter sets), then `gopflow restore` for full size and rate"
            )
        if self.decisions_in is not None and self.qro is None:
            raise UsageError("--decisions needs a QRO target (--target-vmaf/--target-psnr/...)")
        if s.codec not in ENCODER_NAMES:
            raise UsageError(f"unknown codec {s.codec!r}; choose x264 or x265")
        if s.preset not in PRESETS:
            raise UsageError(f"unknown preset {s.preset!r}; choose one of {', '.join(PRESETS)}")
        if s.pix_fmt not in PIX_FMTS:
            raise UsageError(f"unsupported pixel format {s.pix_fmt!r}; use {', '.join(PIX_FMTS)}")
        if s.crf is not None and not 0 <= s.crf <= 51:
            raise UsageError(f"--crf must be between 0 and 51, got {s.crf:g}")
        if s.bitrate_kbps is not None and s.bitrate_kbps <= 0:
            raise UsageError("--bitrate must be positive")
        if s.threads < 1:
            raise UsageError("--encoder-threads must be at least 1")
        if not 0 < self.gop_seconds <= 60:
            raise UsageError("--gop-seconds must be in (0, 60]")
        if self.min_gop_seconds < 0 or self.min_gop_seconds > self.gop_seconds:
            raise UsageError("--min-gop-seconds must be between 0 and --gop-seconds")
        if self.workers is not None and self.workers < 1:
            raise UsageError("--workers must be at least 1")
        if self.learned is None:
            container_for(self.output)
        if os.path.abspath(self.input) == os.path.abspath(self.output):
            raise UsageError("the output must not overwrite the input")


def work_root(config: TranscodeConfig) -> str:
    """The work directory root: ``--work-dir``, else ``.gopflow-work`` next to the output."""
    return config.work_dir or os.path.join(
        os.path.dirname(os.path.abspath(config.output)), ".gopflow-work"
    )


def _check_output_writable(output: str) -> None:
    directory = os.path.dirname(os.path.abspath(output)) or "."
    if not os.path.isdir(directory):
        raise OutputError(f"output directory does not exist: {directory}")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputError(f"output directory is not writable: {directory}")
    if os.path.isdir(output):
        raise OutputError(f"output is a directory: {output}")


def _source_format(info: VideoInfo) -> SourceFormat:
    return SourceFormat(
        width=info.width,
        height=info.height,
        fps=info.fps,
        pix_fmt=info.pix_fmt,
        color_range=info.color_range,
        color_space=info.color_space,
        color_primaries=info.color_primaries,
        color_trc=info.color_trc,
    )


def _plan(
    info: VideoInfo, config: TranscodeConfig, stamps: list[int | None]
) -> list[GopSpec]:
    fps = float(info.fps)
    max_frames = max(1, round(config.gop_seconds * fps))
    min_frames = max(1, round(config.min_gop_seconds * fps))
    cuts = detect_scene_cuts(info, config.scene_threshold) if config.scene_detect else []
    seek_stamps = stamps if info.read_mode == "seek" else None
    return plan_gops(info.frame_count, max_frames, min_frames, cuts, seek_stamps)


def _describe(task: GopTask | QroGopTask) -> str:
    gop = _gop_of(task)
    return f"GOP {gop.index} (frames {gop.start_frame}-{gop.end_frame - 1})"


def run_transcode(
    config: TranscodeConfig, log: Callable[[str], None] | None = None
) -> TranscodeReport:
    """Transcode ``config.input`` to ``config.output``; return the report."""
    say = log or (lambda message: None)
    started = time.perf_counter()
    phases: dict[str, float] = {}

    def mark(phase: str) -> None:
        phases[phase] = round(time.perf_counter() - started, 3)
    config.validate()
    if config.learned is not None:
        from gopflow.jobs.decode import run_learned_transcode

        return run_learned_transcode(config, log)
    tool = find_ffmpeg()
    tool.require(encoders=[ENCODER_NAMES[config.settings.codec]], filters=["scdet", "fillborders"])
    info, stamps = probe_with_timestamps(config.input)
    mark("probed")
    _check_output_writable(config.output)
    if info.vfr:
        say(f"note: variable frame rate input; output is constant {float(info.fps):.3f} fps")

    fps = float(info.fps)
    settings = replace(config.settings, keyint=max(1, round(config.gop_seconds * fps)))
    plan_settings = {
        "encode": settings.to_dict(),
        "gop_seconds": config.gop_seconds,
        "min_gop_seconds": config.min_gop_seconds,
        "scene_detect": config.scene_detect,
        "scene_threshold": config.scene_threshold,
        "copy_audio": config.copy_audio,
        "qro": config.qro.to_dict() if config.qro else None,
        "decisions": _file_digest(config.decisions_in),
    }
    forced = _forced_candidates(config.decisions_in)
    workdir = WorkDir(work_root(config), info.path, plan_settings)
    resumed = workdir.prepare(config.resume)
    saved_plan = workdir.load_plan() if resumed else None
    finished = workdir.finished() if saved_plan is not None else {}
    if saved_plan is not None:
        say(f"resuming: {len(finished)} of {len(saved_plan)} GOPs already done in {workdir.path}")
    if saved_plan is not None and len(finished) == len(saved_plan):
        gops = saved_plan
        tasks: list[Any] = []
    records = {i: replace(r, resumed=True) for i, r in finished.items()}
    source = _source_format(info)

    def plan_tasks() -> tuple[list[GopSpec], list[Any]]:
        planned = saved_plan
        if planned is None:
            planned = _plan(info, config, stamps)
            workdir.save_plan(info.to_dict(), planned)
        todo: list[Any] = [
            GopTask(info.path, info.stream_index, info.read_mode, gop, source, settings)
            for gop in planned
            if gop.index not in finished
        ]
        if config.qro is not None:
            probes = os.path.join(workdir.path, "probes")
            os.makedirs(probes, exist_ok=True)
            todo = [
                QroGopTask(
                    base=task,
                    qro=config.qro,
                    probe_cache=os.path.join(probes, f"gop_{task.gop.index:05d}.json"),
                    forced=forced.get(task.gop.index),
                )
                for task in todo
            ]
        return planned, todo

    from tqdm import tqdm

    with tqdm(
        total=info.frame_count,
        initial=sum(r.frames for r in records.values()),
        unit="frame",
        desc="transcode",
        disable=(not config.progress) if config.progress is not None else None,
        dynamic_ncols=True,
    ) as bar:
        if saved_plan is None or len(finished) < len(saved_plan):
            # Plan (scene detection runs in an ffmpeg process) while Ray starts up.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="plan") as pool:
                planning = pool.submit(plan_tasks)
                with RayRunner(config.ray_address, config.workers) as runner:
                    mark("ray_started")
                    gops, tasks = planning.result()
                    mark("planned")
                    cpus = runner.cluster_cpus()
                    if settings.threads > cpus:
                        raise UsageError(
                            f"--encoder-threads {settings.threads} exceeds the cluster's "
                            f"{cpus} CPUs"
                        )
                    slots = max(1, cpus // settings.threads)
                    results = runner.map_lanes(
                        GopEncodeStage if config.qro is None else QroGopStage,
                        tasks,
                        describe=_describe,
                        cost=lambda task: _gop_of(task).frame_count,
                        cpus_per_item=settings.threads,
                        actors=min(config.workers or slots, slots),
                        max_retries=config.max_retries,
                    )
                    for task, encoded, node in results:
                        gop = _gop_of(task)
                        record = GopRecord(
                            index=gop.index,
                            start_frame=gop.start_frame,
                            frames=encoded.frames,
                            bytes=len(encoded.data),
                            sha256=hashlib.sha256(encoded.data).hexdigest(),
                            encode_seconds=round(encoded.encode_seconds, 4),
                            node_id=node,
                            decision=encoded.details,
                        )
                        workdir.record(record, encoded.data)
                        records[record.index] = record
                        bar.update(encoded.frames)
                    mark("encoded")

    ordered = [records[g.index] for g in gops]
    segments = [workdir.segment_path(g.index) for g in gops]
    tags = source_tags(info)
    if config.qro is not None:
        tags["GOPFLOW_RESTORE"] = "learned" if config.qro.precoder == "vistra" else "plain"
    if config.qro is None:
        expected = coded_size(info.width, info.height, settings.pix_fmt)
        check = assemble(
            segments, info, config.output, workdir.path, expected,
            copy_audio=config.copy_audio, tags=tags,
        )
    else:
        coded = sum(int((r.decision or {}).get("coded_frames", r.frames)) for r in ordered)
        check = assemble(
            segments, info, config.output, workdir.path, None,
            copy_audio=config.copy_audio,
            durations=[g.frame_count / float(info.fps) for g in gops],
            expected_frames=coded, tags=tags,
        )
        if config.decisions_out:
            save_decisions(
                config.decisions_out,
                [_as_decision(r) for r in ordered],
                metric=config.qro.target.metric,
            )
    mark("assembled")
    report = TranscodeReport(
        input=info.path,
        output=os.path.abspath(config.output),
        settings=plan_settings,
        frames=check.frames,
        bytes=os.path.getsize(config.output),
        duration_seconds=info.frame_count / fps,
        wall_seconds=time.perf_counter() - started,
        gops=tuple(ordered),
        output_width=check.width,
        output_height=check.height,
        phases=phases,
    )
    if config.report:
        atomic_write_json(os.path.abspath(config.report), report.to_dict())
    if config.plot:
        from gopflow.jobs.plots import plot_gops

        plot_gops(report, config.plot)
    if not config.keep_work:
        workdir.remove()
    return report


def _gop_of(task: GopTask | QroGopTask) -> GopSpec:
    return task.base.gop if isinstance(task, QroGopTask) else task.gop


def source_tags(info: VideoInfo) -> dict[str, str]:
    """Container tags that let ``gopflow restore`` rebuild the source's geometry."""
    return {
        "GOPFLOW_SOURCE_WIDTH": str(info.width),
        "GOPFLOW_SOURCE_HEIGHT": str(info.height),
        "GOPFLOW_SOURCE_FPS": f"{info.fps.numerator}/{info.fps.denominator}",
        "GOPFLOW_SOURCE_FRAMES": str(info.frame_count),
    }


def _file_digest(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError as exc:
        raise UsageError(f"cannot read decisions file {path}: {exc.strerror}") from exc


def _forced_candidates(path: str | None) -> dict[int, Candidate]:
    if path is None:
        return {}
    return {index: decision.candidate for index, decision in load_decisions(path).items()}


def _as_decision(record: GopRecord) -> Decision:
    details = record.decision or {}
    return Decision(
        gop_index=record.index,
        scale=Fraction(details.get("scale", "1")),
        half_rate=bool(details.get("half_rate", False)),
        crf=float(details.get("crf", 23.0)),
        probes=(),
        expected_bits=int(details.get("bits", record.bytes * 8)),
        expected_quality=float(details.get("quality", 0.0)),
        meets_target=bool(details.get("passed", True)),
    )
