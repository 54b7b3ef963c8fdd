"""The ladder job: a per-title streaming ladder, encoded on the spine, packaged for HLS and DASH.

Data flow::

    input --probe--> VideoInfo --scene cuts + plan--> [GopSpec]  (one plan for every rung)
          --probe encodes of representative GOPs over (height, CRF), VMAF at the source size
            (quality.ladder_probe)--> rate points --upper convex hull, rungs along it
            (quality.hull)--> rungs (height, target kbit/s, CRF)
          --run_gop_jobs: (GOP, rung) tasks on Ray, capped CRF per rung, resumable-->
            per rung, one closed GOP per file, IDRs at the same frames in every rung
          --packaging.package_ladder--> CMAF segments of whole GOPs, AAC audio,
            master.m3u8 (HLS v7), manifest.mpd (DASH), ladder.json

With ``precoder="dvp"`` the rungs below the source's height are downscaled by the learned
DVP downscalers instead of Lanczos, in the probe encodes and in the rungs' GOP encodes
(:class:`DvpRungStage`); :mod:`gopflow.precoders.dvp.ladder` says which heights and how.

Rate control per rung is CRF capped at twice the rung's target bitrate (``maxrate``, with
a buffer of twice that), so a complex scene cannot blow a rung's peak far past what a player
budgeted for; ``BANDWIDTH`` and ``AVERAGE-BANDWIDTH`` are measured from the segment files.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

from gopflow.codecs.x26x import (
    EncodeSettings,
    GopTask,
    build_command,
    encoder_failure,
    output_size,
)
from gopflow.errors import FrameCountError, GopflowError, OutputError
from gopflow.jobs.config import LadderConfig, LadderOptions, TranscodeConfig
from gopflow.jobs.transcode import EncoderJob
from gopflow.media.ffmpeg import feed_process, find_ffmpeg
from gopflow.media.probe import probe_with_timestamps
from gopflow.media.reader import ReaderCache, check_frame_size, convert_frame
from gopflow.packaging.package import AudioSource, PackagedLadder, RungSource, package_ladder
from gopflow.pipeline.driver import Finished, GopRequest, check_output_writable, run_gop_jobs
from gopflow.pipeline.plan import plan_video
from gopflow.pipeline.stages import GopEncodeStage
from gopflow.pipeline.workdir import WorkDir, claimed
from gopflow.precoders.dvp.ladder import DvpRung, dvp_rung
from gopflow.quality.hull import Ladder, choose_rungs
from gopflow.quality.ladder_probe import probe_grid
from gopflow.types import EncodedGop, GopRecord, GopSpec, VideoInfo

PROBE_GOPS = 3
"""Representative GOPs probed for the hull: at a sixth, a half and five sixths of the video."""


@dataclass(frozen=True)
class LadderReport:
    """A finished ladder: the rungs chosen (and why), the hull, and what was packaged."""

    input: str
    output_dir: str
    ladder: Ladder
    packaged: PackagedLadder
    settings: dict[str, Any]
    probe_seconds: float
    wall_seconds: float
    phases: dict[str, float]

    downscale: tuple[str, ...] = ()
    """How each rung's pictures are made: ``none``, ``lanczos``, ``dvp 3/4``, ``dvp 1/2 +
    lanczos``..."""

    def to_dict(self) -> dict[str, Any]:
        rungs = []
        for number, (rung, track) in enumerate(zip(self.ladder.rungs, self.packaged.video,
                                                   strict=True)):
            extra = {"downscale": self.downscale[number]} if self.downscale else {}
            rungs.append({**rung.to_dict(), "name": track.name, **extra,
                          "measured": track.to_dict()})
        return {
            "input": self.input,
            "output_dir": self.output_dir,
            "settings": self.settings,
            "rungs": rungs,
            "hull": [p.to_dict() for p in self.ladder.hull],
            "points": [p.to_dict() for p in self.ladder.points],
            "packaged": self.packaged.to_dict(),
            "probe_seconds": round(self.probe_seconds, 2),
            "wall_seconds": round(self.wall_seconds, 2),
            "phases": self.phases,
        }


@dataclass(frozen=True)
class DvpGopTask:
    """One GOP of a rung made with DVP: ``base``'s source and settings (no ``height``: the
    stage scales), downscaled as ``rung`` says, with ``base.settings.threads`` torch
    threads."""

    base: GopTask
    rung: DvpRung

    @property
    def gop(self) -> GopSpec:
        return self.base.gop


class DvpRungStage:
    """The GOP stage of a ladder with ``--precoder dvp`` (Ray-free, one per actor): a
    :class:`DvpGopTask` is decoded frame-accurately, each frame converted to 8-bit 4:2:0 (as
    the plain path's raw feed converts it), downscaled by DVP (learned luma, Lanczos
    chroma), then Lanczos-scaled in ffmpeg where the rung is smaller than DVP's picture,
    and encoded as one closed GOP; a plain :class:`GopTask` (the source-size rung) goes to
    :class:`~gopflow.pipeline.stages.GopEncodeStage`. The run's rungs share one stage (the
    driver uses one stage factory for all its jobs)."""

    def __init__(self) -> None:
        self._plain = GopEncodeStage()
        self._readers = ReaderCache()
        self._precoders: dict[tuple[Fraction, int], Any] = {}

    def _precoder(self, scale: Fraction, threads: int) -> Any:
        from gopflow.precoders.dvp import DvpPrecoder

        key = (scale, threads)
        if key not in self._precoders:
            self._precoders[key] = DvpPrecoder(scale, threads=threads)
        return self._precoders[key]

    def __call__(self, task: GopTask | DvpGopTask) -> EncodedGop:
        if isinstance(task, GopTask):
            return self._plain(task)
        started = time.perf_counter()
        base, rung = task.base, task.rung
        settings, source = base.settings, base.source
        precoder = self._precoder(rung.scale, max(1, settings.threads))
        reader = self._readers.reader(base.input_path, base.stream_index, base.read_mode,
                                      settings.threads)
        count = 0

        def frames() -> Iterator[bytes]:
            nonlocal count
            for frame in reader.read(base.gop):
                check_frame_size(frame, source.width, source.height)
                count += 1
                yield precoder.down(convert_frame(frame, "yuv420p"))

        width, height = rung.dvp_size
        # The pictures fed are DVP's: 8-bit 4:2:0 at its size (a JPEG-range source keeps its
        # samples and its range tag).
        small = replace(source, width=width, height=height, pix_fmt="yuv420p")
        scale = [f"scale={rung.size[0]}:{rung.size[1]}:flags=lanczos"] if rung.then_lanczos \
            else []
        with tempfile.TemporaryDirectory(prefix="gopflow-dvp-") as scratch:
            output = os.path.join(scratch, "gop.mp4")
            log_path = os.path.join(scratch, "ffmpeg.log")
            command = build_command(find_ffmpeg().path, small, replace(settings, height=None),
                                    output, pre_filters=scale)
            code, reason = feed_process(command, frames(), log_path)
            if code != 0 or not os.path.exists(output):
                raise encoder_failure(f"{settings.codec} after DVP {rung.scale}", reason,
                                      log_path)
            with open(output, "rb") as handle:
                data = handle.read()
        if count != base.gop.frame_count:
            raise FrameCountError(f"encoded {count} frames, planned {base.gop.frame_count}")
        return EncodedGop(index=base.gop.index, data=data, frames=count,
                          encode_seconds=time.perf_counter() - started)

    def close(self) -> None:
        self._plain.close()
        self._readers.close()


class RungJob(EncoderJob):
    """One rung: x264/x265/SVT-AV1 per GOP at the rung's size and capped CRF. Its GOP files
    are the rung's output (packaged with the others), so there is nothing to join. With
    ``precoder="dvp"`` every rung's tasks go to :class:`DvpRungStage`, and those of a rung
    below the source's height (``dvp``) are downscaled by DVP."""

    def __init__(self, config: TranscodeConfig, name: str, precoder: str = "none",
                 dvp: DvpRung | None = None) -> None:
        super().__init__(config)
        self.name = name
        self.label = "ladder"
        self.precoder = precoder
        self.dvp = dvp

    def check_tools(self) -> None:
        from gopflow.codecs.x26x import ENCODER_NAMES

        find_ffmpeg().require(encoders=[ENCODER_NAMES[self.config.settings.codec]])
        if self.dvp is not None:
            from gopflow.precoders.dvp import DvpPrecoder

            DvpPrecoder(self.dvp.scale)  # the weights: present and as registered, or refused

    def settings(self, info: VideoInfo) -> dict[str, Any]:
        out = super().settings(info)
        if self.dvp is not None:  # part of the work-dir key: a DVP rung is another encode
            from gopflow.zoo.registry import dvp_name, read_registry

            out["dvp"] = {"scale": str(self.dvp.scale), "dvp_size": list(self.dvp.dvp_size),
                          "size": list(self.dvp.size),
                          "sha256": read_registry()[dvp_name(self.dvp.scale)].sha256}
        return out

    def stage_factory(self) -> Callable[[], Callable[[Any], EncodedGop]]:
        return DvpRungStage if self.precoder == "dvp" else GopEncodeStage

    def task(self, info: VideoInfo, gop: GopSpec, workdir: WorkDir) -> Any:
        base = super().task(info, gop, workdir)
        assert isinstance(base, GopTask)
        return base if self.dvp is None else DvpGopTask(base, self.dvp)

    def finish(
        self, info: VideoInfo, gops: list[GopSpec], records: list[GopRecord], workdir: WorkDir
    ) -> Finished:
        paths = [workdir.segment_path(g.index) for g in gops]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise OutputError(f"rung {self.name}: {len(missing)} GOP files missing")
        width, height = self.dvp.size if self.dvp is not None else output_size(
            info.width, info.height, self.config.settings)
        return Finished(sum(r.frames for r in records), sum(os.path.getsize(p) for p in paths),
                        width, height)


def ladder(input: str, output_dir: str, log: Callable[[str], None] | None = None,
           **options: Any) -> LadderReport:
    """Build the ladder of ``input`` into ``output_dir``; ``options`` are ``gopflow
    ladder``'s, by name (``codec="svtav1"``, ``rungs=6``, ``max_height=1080``...)."""
    return run_ladder(LadderOptions.from_kwargs(**options).resolve(input, output_dir), log)


def _probe_ranges(gops: list[GopSpec]) -> list[tuple[int, int]]:
    """(first frame, frame count) of the representative GOPs the hull is probed on."""
    if len(gops) <= PROBE_GOPS:
        return [(g.start_frame, g.frame_count) for g in gops]
    picks = sorted({min(len(gops) - 1, int(len(gops) * (2 * k + 1) / (2 * PROBE_GOPS)))
                    for k in range(PROBE_GOPS)})
    return [(gops[i].start_frame, gops[i].frame_count) for i in picks]


def run_ladder(config: LadderConfig, log: Callable[[str], None] | None = None) -> LadderReport:
    """Probe, choose the rungs, encode them on Ray, package; return the report."""
    say = log or (lambda message: None)
    started = time.perf_counter()
    phases: dict[str, float] = {}

    def mark(phase: str) -> None:
        phases[phase] = round(time.perf_counter() - started, 3)

    info, stamps = probe_with_timestamps(config.input)
    out_dir = os.path.abspath(config.output_dir)
    parent = os.path.dirname(out_dir)
    check_output_writable(os.path.join(parent, "x"))
    mark("probed")
    gops = plan_video(info, config.plan, stamps)
    mark("planned")
    ranges = _probe_ranges(gops)
    say(f"probing {len(ranges)} GOPs ({sum(c for _, c in ranges)} frames) for the hull")
    probed = probe_grid(config.input, ranges, codec=config.codec, preset=config.probe_preset,  # type: ignore[arg-type]
                        workers=max(1, min(4, os.cpu_count() or 1)), threads=1,
                        keyint=config.plan.keyint(info), floor_kbps=config.floor_kbps,
                        top_vmaf=config.top_vmaf, max_kbps=config.max_kbps,
                        precoder=config.precoder, metric=config.hull_metric)
    mark("hull_probed")
    chosen = choose_rungs(
        probed.points, source_height=min(info.height, config.max_height or info.height),
        top_vmaf=config.top_vmaf, floor_kbps=config.floor_kbps, max_kbps=config.max_kbps,
        rungs=config.rungs,
    )
    names = [f"{r.height}p_{round(r.kbps)}k" for r in chosen.rungs]
    say("rungs: " + ", ".join(f"{n} (CRF {r.crf:.1f})" for n, r in zip(names, chosen.rungs,
                                                                       strict=True)))
    requests: list[GopRequest] = []
    configs: list[TranscodeConfig] = []
    downscale: list[str] = []
    base = os.path.basename(out_dir)
    for name, rung in zip(names, chosen.rungs, strict=True):
        maxrate = max(1, round(2 * rung.kbps))
        learned = dvp_rung(info.width, info.height, rung.height) if (
            config.precoder == "dvp") else None
        scaled = rung.height < info.height
        settings = EncodeSettings(
            codec=config.codec, preset=config.preset, crf=round(rung.crf, 2),
            maxrate_kbps=maxrate, bufsize_kbps=2 * maxrate, threads=1,
            keyint=config.plan.keyint(info),
            height=rung.height if scaled and learned is None else None,
        )
        downscale.append(learned.describe() if learned else "lanczos" if scaled else "none")
        # Never written: the rung's work-dir key and its place beside the output folder.
        virtual = os.path.join(parent, f".{base}.{name}.mp4")
        rung_config = TranscodeConfig(input=config.input, output=virtual, settings=settings,
                                      plan=config.plan, run=config.run, copy_audio=False)
        configs.append(rung_config)
        requests.append(GopRequest(RungJob(rung_config, name, config.precoder, learned),
                                   config.input, virtual,
                                   config.plan, config.run.resume, gops=tuple(gops)))
    with claimed() as workdirs:
        try:
            results = {}
            for outcome in run_gop_jobs(requests, config.run, log, label="ladder"):
                if outcome.error is not None:
                    raise outcome.error
                results[outcome.index] = outcome.result
            mark("encoded")
            ordered = [results[i] for i in range(len(requests))]
            assert all(r is not None for r in ordered)
            rung_sources = [
                RungSource(name, tuple(r.workdir.segment_path(g.index) for g in r.gops))
                for name, r in zip(names, ordered, strict=True) if r is not None
            ]
            audio = None
            if config.audio and info.audio:
                stream = info.audio[0]
                audio = AudioSource(config.input, stream.index,
                                    stream.start_seconds - info.start_seconds)
            settings = {"codec": config.codec, "preset": config.preset,
                        "plan": config.plan.to_dict(), "top_vmaf": config.top_vmaf,
                        "floor_kbps": config.floor_kbps, "max_kbps": config.max_kbps,
                        "segment_seconds": config.segment_seconds,
                        "probe_preset": config.probe_preset, "precoder": config.precoder,
                        "hull_metric": config.hull_metric}
            def describe(packaged: PackagedLadder) -> dict[str, bytes]:
                # ladder.json goes into the temporary folder, so it lands with the rename.
                mark("packaged")
                report = LadderReport(info.path, out_dir, chosen, packaged, settings,
                                      probed.wall_seconds, time.perf_counter() - started,
                                      phases, tuple(downscale))
                reports.append(report)
                text = json.dumps(report.to_dict(), indent=2, sort_keys=True, allow_nan=False)
                return {"ladder.json": (text + "\n").encode()}

            reports: list[LadderReport] = []
            package_ladder(
                rung_sources, out_dir, gop_frames=[g.frame_count for g in gops], fps=info.fps,
                audio=audio, segment_seconds=config.segment_seconds, describe=describe,
                overwrite=True,
            )
            report = reports[0]
            from gopflow.fileio import atomic_write_json

            if config.report:
                atomic_write_json(os.path.abspath(config.report), report.to_dict())
            if config.plot:
                from gopflow.jobs.plots import plot_hull

                plot_hull(report.to_dict(), config.plot)
            if not config.run.keep_work:
                for result in ordered:
                    if result is not None:
                        result.workdir.remove()
            return replace(report, wall_seconds=time.perf_counter() - started)
        except GopflowError as exc:
            if not exc.resumable:
                for workdir in workdirs:
                    workdir.remove()
            raise
        finally:
            for workdir in workdirs:
                workdir.release()
