"""``gopflow train mode-predictor``: learn fast mode selection from real QRO probe searches.

Data flow: for every clip in ``--data`` and every ``--targets`` value: a QRO transcode
(probe encodes, spatial modes only, real x264 + libvmaf on a local Ray cluster) -> each GOP's
chosen scale from the report + the GOP's SI/TI from the source frames -> ModeSample rows ->
``ModePredictor`` JSON (written atomically) + its SHA-256 in ``weights/registry.json`` when
``--install``. Train only on ``../shared/media/train`` (or synthetic clips).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

from gopflow.errors import UsageError
from gopflow.fileio import atomic_write_json
from gopflow.media.probe import probe_with_timestamps
from gopflow.media.reader import GopReader
from gopflow.qro.mode_predictor import (
    DEFAULT_PATH,
    ModePredictor,
    ModeSample,
    gop_features,
)
from gopflow.types import GopSpec

_VIDEO_EXTENSIONS = {".mp4", ".mkv", ".mov", ".264", ".h264", ".265", ".hevc", ".webm", ".y4m"}


def _gop_lumas(path: str, gop: GopSpec, reader: GopReader) -> Any:
    from gopflow.precoders.inference import luma_array

    for frame in reader.read(gop):
        yield luma_array(frame)


def train_mode_predictor(
    data_dir: str,
    targets: list[float],
    out: str,
    metric: str = "vmaf",
    precoder: str = "none",
    log: Callable[[str], None] | None = None,
) -> tuple[ModePredictor, str]:
    """Run QRO on every clip at every target; fit and write the predictor; return it and
    its SHA-256."""
    from gopflow.jobs.transcode import TranscodeConfig, run_transcode
    from gopflow.pipeline.runner import RayRunner
    from gopflow.qro.stage import QroSettings
    from gopflow.qro.target import QroTarget
    from gopflow.types import EncodeSettings

    say = log or (lambda message: None)
    clips = sorted(
        p for p in Path(data_dir).iterdir() if p.suffix.lower() in _VIDEO_EXTENSIONS
    )
    if not clips:
        raise UsageError(f"no video clips in {data_dir}")
    samples: list[ModeSample] = []
    with RayRunner(), tempfile.TemporaryDirectory(prefix="gopflow-mode-") as scratch:
        for clip in clips:
            for target in targets:
                output = os.path.join(scratch, f"{clip.stem}-{target:g}.mkv")
                report = run_transcode(TranscodeConfig(
                    input=str(clip), output=output,
                    settings=EncodeSettings(preset="veryfast"),
                    qro=QroSettings(
                        QroTarget(metric, target=target), half_rate=False, precoder=precoder,
                        refinements=0,
                    ),
                    progress=False,
                ))
                info, stamps = probe_with_timestamps(str(clip))
                with GopReader(info.path, info.stream_index, info.read_mode) as reader:
                    for record in report.gops:
                        start_pts = stamps[record.start_frame] if info.read_mode == "seek" else None
                        gop = GopSpec(record.index, record.start_frame, record.frames, start_pts,
                                      False)
                        features = gop_features(_gop_lumas(info.path, gop, reader))
                        scale = str(Fraction((record.decision or {}).get("scale", "1")))
                        samples.append(ModeSample(features.si, features.ti, target, scale))
                say(f"{clip.name} @ {target:g}: {len(report.gops)} GOPs")
    predictor = ModePredictor(samples, metric)
    digest = predictor.save(out)
    return predictor, digest


def add_mode_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "mode-predictor",
        help="learn fast QRO/DVP mode selection from real probe searches",
        description=(
            "Run QRO (real probe encodes) on every clip in --data at every --targets value, "
            "record the scale chosen for each GOP with the GOP's SI/TI, and write a "
            "k-nearest-neighbour mode predictor (JSON). --install puts it in the package "
            "(gopflow/weights/mode_predictor.json, SHA-256 in registry.json), where "
            "`transcode --mode-select predict` finds it."
        ),
    )
    parser.add_argument("--data", required=True, metavar="DIR", help="directory of clips")
    parser.add_argument("--targets", default="90,94", help="QRO targets to learn (90,94)")
    parser.add_argument("--metric", default="vmaf", choices=["vmaf", "vmaf_neg"])
    parser.add_argument("--precoder", default="none", choices=["none", "dvp"])
    parser.add_argument("--out", default="mode_predictor.json", metavar="FILE")
    parser.add_argument("--install", action="store_true", help="install into the package")


def run_mode(args: argparse.Namespace) -> int:
    targets = [float(t) for t in args.targets.split(",") if t.strip()]
    out = str(DEFAULT_PATH) if args.install else args.out
    predictor, digest = train_mode_predictor(
        args.data, targets, out, args.metric, args.precoder,
        log=lambda m: print(m, file=sys.stderr),
    )
    if args.install:
        registry = DEFAULT_PATH.parent / "registry.json"
        data = json.loads(registry.read_text())
        data["mode_predictor"] = {"file": DEFAULT_PATH.name, "sha256": digest,
                                  "samples": len(predictor.samples)}
        atomic_write_json(registry, data)
    print(f"wrote {out}: {len(predictor.samples)} GOP samples, sha256 {digest}", file=sys.stderr)
    return 0
