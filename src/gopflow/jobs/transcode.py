"""The transcode job: x264/x265 (optionally under QRO) or a learned codec, on the one driver.

``transcode(input, output, **options)`` resolves the options (:mod:`gopflow.jobs.config`)
and runs :func:`run_transcode`, which hands a :class:`~gopflow.pipeline.driver.GopJob` to
:func:`~gopflow.pipeline.driver.run_gop_job`:

- :class:`EncoderJob`: each GOP through x264/x265 in ffmpeg (or QRO's search and checks),
  joined without re-encoding into MP4/MKV with the source's audio;
- :class:`LearnedJob`: each GOP through DVC, FVC or the intra codec, written as one .gflv
  stream (header, units in GOP order, end unit).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from gopflow.codecs.learned.bitstream import (
    MAX_PIXELS,
    MAX_SIDE,
    StreamHeader,
    Unit,
    UnitKind,
    frame_size_fits,
    gop_structure,
    units_from_bytes,
    write_stream,
)
from gopflow.codecs.x26x import ENCODER_NAMES, GopTask, output_size
from gopflow.errors import FrameCountError, GopflowError, InputError, OutputError, UsageError
from gopflow.fileio import atomic_write_json
from gopflow.jobs.config import TranscodeConfig, TranscodeOptions
from gopflow.media.ffmpeg import find_ffmpeg
from gopflow.media.reader import yuv_colour
from gopflow.pipeline.assemble import assemble
from gopflow.pipeline.driver import Finished, GopJob, JobResult, make_record, run_gop_job
from gopflow.pipeline.stages import (
    GopEncodeStage,
    LearnedEncodeStage,
    LearnedGopTask,
    open_codec,
)
from gopflow.pipeline.workdir import WorkDir, claimed
from gopflow.qro.decisions import load_decisions, save_decisions
from gopflow.qro.target import Candidate, Decision

if TYPE_CHECKING:
    from gopflow.qro.stage import QroGopTask

from gopflow.types import (
    EncodedGop,
    GopRecord,
    GopSpec,
    SourceFormat,
    TranscodeReport,
    VideoInfo,
)


def transcode(
    input: str, output: str, log: Callable[[str], None] | None = None, **options: Any
) -> TranscodeReport:
    """Transcode ``input`` to ``output``; ``options`` are the command line's, by name.

    ``gopflow.transcode("in.mp4", "out.mp4", codec="x265", crf=24)`` does what
    ``gopflow transcode in.mp4 -o out.mp4 --codec x265 --crf 24`` does.
    """
    config = TranscodeOptions.from_kwargs(**options).resolve(input, output)
    return run_transcode(config, log)


def run_transcode(
    config: TranscodeConfig, log: Callable[[str], None] | None = None
) -> TranscodeReport:
    """Run a resolved transcode; write its report (and plot) when asked; return the report.

    A job that fails in a way ``--resume`` cannot help (bad input or options, an encoder
    refusing its settings: ``GopflowError.resumable`` is False) leaves no work dir behind;
    any other failure (Ctrl-C, a lost cluster, a GOP that failed after its retries, a full
    disk) keeps it for ``--resume``. The work dir's lock is dropped either way.
    """
    job = make_job(config)
    with claimed() as workdirs:
        try:
            result = run_gop_job(job, config.input, config.output, config.plan, config.run, log)
            return settle(config, result)
        except GopflowError as exc:
            if not exc.resumable:
                for workdir in workdirs:
                    with contextlib.suppress(OSError):
                        workdir.remove()
            raise
        finally:
            for workdir in workdirs:
                workdir.release()


def make_job(config: TranscodeConfig) -> GopJob:
    """The driver's job for a resolved transcode: learned codec or x264/x265 (QRO or not)."""
    return LearnedJob(config) if config.learned is not None else EncoderJob(config)


def settle(config: TranscodeConfig, result: JobResult) -> TranscodeReport:
    """The report of a finished transcode; writes it (and the plot) when asked and removes
    the work dir unless ``--keep-work``."""
    report = TranscodeReport(
        input=result.info.path,
        output=os.path.abspath(config.output),
        settings=result.settings,
        frames=result.finished.frames,
        bytes=result.finished.bytes,
        duration_seconds=result.info.frame_count / float(result.info.fps),
        wall_seconds=result.wall_seconds,
        gops=result.records,
        output_width=result.finished.width,
        output_height=result.finished.height,
        phases=result.phases,
    )
    if config.report:
        atomic_write_json(os.path.abspath(config.report), report.to_dict())
    if config.plot:
        from gopflow.jobs.plots import plot_gops

        plot_gops(report, config.plot)
    if not config.run.keep_work:
        result.workdir.remove()
    return report


def source_format(info: VideoInfo) -> SourceFormat:
    """How the source's frames are laid out when handed to an encoder: its size, rate and
    pixel format, and the colour of the YUV frames the encoder gets (an RGB source's frames
    are converted to BT.709 limited range on the way, and tagged so)."""
    color_range, color_space = yuv_colour(info.pix_fmt, info.color_range, info.color_space)
    return SourceFormat(
        width=info.width,
        height=info.height,
        fps=info.fps,
        pix_fmt=info.pix_fmt,
        color_range=color_range,
        color_space=color_space,
        color_primaries=info.color_primaries,
        color_trc=info.color_trc,
    )


def source_tags(info: VideoInfo) -> dict[str, str]:
    """Container tags that let ``gopflow restore`` rebuild the source's geometry."""
    return {
        "GOPFLOW_SOURCE_WIDTH": str(info.width),
        "GOPFLOW_SOURCE_HEIGHT": str(info.height),
        "GOPFLOW_SOURCE_FPS": f"{info.fps.numerator}/{info.fps.denominator}",
        "GOPFLOW_SOURCE_FRAMES": str(info.frame_count),
    }


class EncoderJob:
    """x264/x265 per GOP, or QRO's per-GOP search, encode and check; MP4/MKV output."""

    label = "transcode"

    def __init__(self, config: TranscodeConfig) -> None:
        self.config = config
        self.cpus_per_task = config.settings.threads
        self._forced = _forced_candidates(config.decisions_in)
        self._settings = config.settings

    def check_tools(self) -> None:
        find_ffmpeg().require(
            encoders=[ENCODER_NAMES[self.config.settings.codec]], filters=["scdet", "fillborders"]
        )

    def settings(self, info: VideoInfo) -> dict[str, Any]:
        config = self.config
        self._settings = replace(config.settings, keyint=config.plan.keyint(info))
        return {
            "encode": self._settings.to_dict(),
            "copy_audio": config.copy_audio,
            "qro": config.qro.to_dict() if config.qro else None,
            "decisions": _file_digest(config.decisions_in),
        }

    def stage_factory(self) -> Callable[[], Callable[[Any], EncodedGop]]:
        if self.config.qro is None:
            return GopEncodeStage
        # QRO's stage brings the precoders (torch): imported only by jobs that use it.
        from gopflow.qro.stage import QroGopStage

        return QroGopStage

    def task(self, info: VideoInfo, gop: GopSpec, workdir: WorkDir) -> GopTask | QroGopTask:
        base = GopTask(info.path, info.stream_index, info.read_mode, gop, source_format(info),
                       self._settings)
        if self.config.qro is None:
            return base
        from gopflow.qro.stage import QroGopTask

        probes = os.path.join(workdir.path, "probes")
        os.makedirs(probes, exist_ok=True)
        return QroGopTask(
            base=base,
            qro=self.config.qro,
            probe_cache=os.path.join(probes, f"gop_{gop.index:05d}.json"),
            forced=self._forced.get(gop.index),
        )

    def record(self, gop: GopSpec, encoded: EncodedGop, node: str) -> GopRecord:
        return make_record(gop, encoded, node, decision=encoded.details)

    def finish(
        self, info: VideoInfo, gops: list[GopSpec], records: list[GopRecord], workdir: WorkDir
    ) -> Finished:
        config = self.config
        segments = [workdir.segment_path(g.index) for g in gops]
        tags = source_tags(info)
        if config.qro is None:
            expected = output_size(info.width, info.height, config.settings)
            check = assemble(segments, info, config.output, workdir.path, expected,
                             copy_audio=config.copy_audio, tags=tags)
        else:
            tags["GOPFLOW_RESTORE"] = "learned" if config.qro.precoder == "vistra" else "plain"
            coded = sum(int((r.decision or {}).get("coded_frames", r.frames)) for r in records)
            check = assemble(
                segments, info, config.output, workdir.path, None,
                copy_audio=config.copy_audio,
                durations=[g.frame_count / float(info.fps) for g in gops],
                expected_frames=coded, tags=tags,
            )
            if config.decisions_out:
                save_decisions(config.decisions_out,
                               [_as_decision(r, config.settings.crf) for r in records],
                               metric=config.qro.target.metric)
        return Finished(check.frames, os.path.getsize(config.output), check.width, check.height)


class LearnedJob:
    """A learned codec per GOP (one torch thread per worker); one .gflv stream."""

    cpus_per_task = 1

    def __init__(self, config: TranscodeConfig) -> None:
        assert config.learned is not None
        self.config = config
        self.learned = config.learned
        self.label = f"transcode {self.learned.codec}"
        self._ref = self.learned.ref()
        self._codec: Any = None
        self._quality = 0
        self._refine = 0

    def check_tools(self) -> None:
        from gopflow.codecs.learned.engine import refine_steps_for

        self._codec = open_codec(self._ref)
        quality = self.learned.quality
        if quality is None:
            quality = self._codec.levels // 2 + 1
        self._codec.quality_index(quality)
        self._quality = quality
        self._refine = refine_steps_for(self.learned.codec, self.learned.rdo_on,
                                        self.learned.motion_refinement)

    def settings(self, info: VideoInfo) -> dict[str, Any]:
        if not frame_size_fits(info.width, info.height):
            # Checked here, before Ray starts, not when the finished stream is written.
            raise InputError(
                f"{info.path}: a {info.width}x{info.height} video is too large for a .gflv "
                f"stream (at most {MAX_SIDE} pixels a side and {MAX_PIXELS} in all); use "
                "--codec x264 or x265"
            )
        return {"learned": self.learned_settings()}

    def learned_settings(self) -> dict[str, Any]:
        """The codec as resolved by :meth:`check_tools` (default quality applied, the loaded
        weights' model id): what the work dir, a .gflv header and a dataset card record."""
        learned = self.learned
        return {"codec": learned.codec, "quality": self._quality,
                "model_id": self._codec.model_id, "adaptive_intra": learned.adaptive,
                "rdo": learned.rdo_on, "intra_offset": learned.offset,
                "motion_refinement": self._refine}

    def stage_factory(self) -> Callable[[], Callable[[Any], EncodedGop]]:
        # The codec's reference, not the loaded model: each actor loads its own.
        return functools.partial(LearnedEncodeStage, self._ref)

    def task(self, info: VideoInfo, gop: GopSpec, workdir: WorkDir) -> LearnedGopTask:
        return LearnedGopTask(info.path, info.stream_index, info.read_mode, gop, info.width,
                              info.height, self._quality, self.learned.offset)

    def record(self, gop: GopSpec, encoded: EncodedGop, node: str) -> GopRecord:
        details = encoded.details or {}
        if details.get("model_id") != self._codec.model_id:
            raise OutputError(
                f"GOP {gop.index} was coded by model {details.get('model_id')}, "
                f"not {self._codec.model_id} (mixed weights on the cluster?)"
            )
        return make_record(gop, encoded, node, details=details)

    def finish(
        self, info: VideoInfo, gops: list[GopSpec], records: list[GopRecord], workdir: WorkDir
    ) -> Finished:
        kinds = "".join(str((r.details or {}).get("kinds", "")) for r in records)
        if len(kinds) != info.frame_count:
            raise FrameCountError(f"coded {len(kinds)} frames; the input has {info.frame_count}")
        gop_count, gop_size = gop_structure(UnitKind(ord(kind)) for kind in kinds)
        header = StreamHeader(
            model_id=self._codec.model_id,
            width=info.width,
            height=info.height,
            fps=info.fps,
            gop_size=gop_size,
            frame_count=info.frame_count,
            gop_count=gop_count,
            quality=self._quality,
            intra_offset=self.learned.offset,
        )

        def units() -> Iterator[Unit]:
            for gop in gops:
                with open(workdir.segment_path(gop.index), "rb") as handle:
                    yield from units_from_bytes(handle.read(), gop.start_frame,
                                                f"GOP {gop.index}")

        size = write_stream(self.config.output, header, units())
        return Finished(info.frame_count, size, info.width, info.height)


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


def _as_decision(record: GopRecord, crf: float | None) -> Decision:
    details = record.decision or {}
    return Decision(
        gop_index=record.index,
        scale=Fraction(details.get("scale", "1")),
        half_rate=bool(details.get("half_rate", False)),
        crf=float(details.get("crf", crf)),
        probes=(),
        expected_bits=int(details.get("bits", record.bytes * 8)),
        expected_quality=float(details.get("quality", 0.0)),
        meets_target=bool(details.get("passed", True)),
    )
