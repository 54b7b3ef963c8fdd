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

Rate control per rung is CRF capped at twice the rung's target bitrate (``maxrate``, with
a buffer of twice that), so a complex scene cannot blow a rung's peak far past what a player
budgeted for; ``BANDWIDTH`` and ``AVERAGE-BANDWIDTH`` are measured from the segment files.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from gopflow.codecs.x26x import EncodeSettings, output_size
from gopflow.errors import GopflowError, OutputError
from gopflow.jobs.config import LadderConfig, LadderOptions, TranscodeConfig
from gopflow.jobs.transcode import EncoderJob
from gopflow.media.probe import probe_with_timestamps
from gopflow.packaging.package import AudioSource, PackagedLadder, RungSource, package_ladder
from gopflow.pipeline.driver import Finished, GopRequest, check_output_writable, run_gop_jobs
from gopflow.pipeline.plan import plan_video
from gopflow.pipeline.workdir import WorkDir, claimed
from gopflow.quality.hull import Ladder, choose_rungs
from gopflow.quality.ladder_probe import probe_grid
from gopflow.types import GopRecord, GopSpec, VideoInfo

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

    def to_dict(self) -> dict[str, Any]:
        rungs = []
        for rung, track in zip(self.ladder.rungs, self.packaged.video, strict=True):
            rungs.append({**rung.to_dict(), "name": track.name,
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


class RungJob(EncoderJob):
    """One rung: x264/x265/SVT-AV1 per GOP at the rung's size and capped CRF. Its GOP files
    are the rung's output (packaged with the others), so there is nothing to join."""

    def __init__(self, config: TranscodeConfig, name: str) -> None:
        super().__init__(config)
        self.name = name
        self.label = "ladder"

    def check_tools(self) -> None:
        from gopflow.codecs.x26x import ENCODER_NAMES
        from gopflow.media.ffmpeg import find_ffmpeg

        find_ffmpeg().require(encoders=[ENCODER_NAMES[self.config.settings.codec]])

    def finish(
        self, info: VideoInfo, gops: list[GopSpec], records: list[GopRecord], workdir: WorkDir
    ) -> Finished:
        paths = [workdir.segment_path(g.index) for g in gops]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise OutputError(f"rung {self.name}: {len(missing)} GOP files missing")
        width, height = output_size(info.width, info.height, self.config.settings)
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
                        top_vmaf=config.top_vmaf, max_kbps=config.max_kbps)
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
    base = os.path.basename(out_dir)
    for name, rung in zip(names, chosen.rungs, strict=True):
        maxrate = max(1, round(2 * rung.kbps))
        settings = EncodeSettings(
            codec=config.codec, preset=config.preset, crf=round(rung.crf, 2),
            maxrate_kbps=maxrate, bufsize_kbps=2 * maxrate, threads=1,
            keyint=config.plan.keyint(info),
            height=rung.height if rung.height < info.height else None,
        )
        # Never written: the rung's work-dir key and its place beside the output folder.
        virtual = os.path.join(parent, f".{base}.{name}.mp4")
        rung_config = TranscodeConfig(input=config.input, output=virtual, settings=settings,
                                      plan=config.plan, run=config.run, copy_audio=False)
        configs.append(rung_config)
        requests.append(GopRequest(RungJob(rung_config, name), config.input, virtual,
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
                        "probe_preset": config.probe_preset}
            def describe(packaged: PackagedLadder) -> dict[str, bytes]:
                # ladder.json goes into the temporary folder, so it lands with the rename.
                mark("packaged")
                report = LadderReport(info.path, out_dir, chosen, packaged, settings,
                                      probed.wall_seconds, time.perf_counter() - started,
                                      phases)
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
