"""Learn fast mode selection from real QRO probe searches (``gopflow train mode-predictor``).

Data flow: for every clip in ``data_dir`` and every target: a QRO transcode (probe encodes,
spatial modes only, real x264 + libvmaf on a local Ray cluster) -> each GOP's chosen scale
from the report + the GOP's SI/TI from the source frames -> ModeSample rows ->
``ModePredictor`` JSON (written atomically) and, with ``install``, the file in the package
with its SHA-256 in ``weights/registry.json``, where ``transcode --mode-select predict``
finds it. Train only on ``../shared/media/train`` (or synthetic clips).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
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
    from gopflow.codecs.x26x import EncodeSettings
    from gopflow.jobs.config import TranscodeConfig
    from gopflow.jobs.transcode import run_transcode
    from gopflow.pipeline.driver import RunOptions
    from gopflow.pipeline.runner import RayRunner
    from gopflow.qro.target import QroSettings, QroTarget

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
                    run=RunOptions(progress=False),
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


@dataclass(frozen=True)
class ModeTrainConfig:
    """A mode-predictor training run."""

    data_dir: str
    targets: tuple[float, ...] = (90.0, 94.0)
    metric: str = "vmaf"
    precoder: str = "none"
    out: str = "mode_predictor.json"
    install: bool = False
    """Write the predictor into the package (``DEFAULT_PATH``, ``out`` unused) and record
    its SHA-256 in ``registry.json`` next to it."""


@dataclass(frozen=True)
class ModeTrainResult:
    """Where the predictor went, its sample count and its SHA-256."""

    path: str
    samples: int
    sha256: str


def run_mode_training(
    config: ModeTrainConfig, log: Callable[[str], None] | None = None
) -> ModeTrainResult:
    """Train as ``config`` says; with ``install``, register the file in ``registry.json``."""
    out = str(DEFAULT_PATH) if config.install else config.out
    predictor, digest = train_mode_predictor(
        config.data_dir, list(config.targets), out, config.metric, config.precoder, log=log,
    )
    if config.install:
        registry = DEFAULT_PATH.parent / "registry.json"
        data = json.loads(registry.read_text())
        data["mode_predictor"] = {"file": DEFAULT_PATH.name, "sha256": digest,
                                  "samples": len(predictor.samples)}
        atomic_write_json(registry, data)
    return ModeTrainResult(out, len(predictor.samples), digest)
