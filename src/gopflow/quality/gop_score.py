"""Quality of one restored GOP against its source frames, measured inside a worker.

Data flow: restored full-size frames (packed planar bytes, from
:func:`gopflow.precoders.restore.restore_frames`) on ffmpeg's stdin + the source GOP's raw
frames from a file -> libvmaf (default or NEG model) or ffmpeg's psnr filter -> per-frame
scores from the filter's log -> mean and minimum.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

from gopflow.errors import EncoderError, MetricError, UsageError
from gopflow.media.ffmpeg import (
    feed_process,
    find_ffmpeg,
    raw_psnr_command,
    raw_vmaf_command,
)
from gopflow.precoders.restore import RestoreTarget
from gopflow.quality.names import GOP_METRICS, canonical_metric
from gopflow.quality.vmaf import VMAF_MODELS, read_vmaf_log

_PSNR_Y = re.compile(r"psnr_y:(\S+)")


@dataclass(frozen=True)
class GopScore:
    """A GOP's pooled quality."""

    metric: str
    mean: float
    minimum: float
    frames: int


def score_restored(
    restored: Iterable[bytes],
    source_raw: str,
    target: RestoreTarget,
    metric: str = "vmaf",
    threads: int = 1,
    full_range: bool = False,
) -> GopScore:
    """Score restored frames against the source GOP's raw file with ``metric``."""
    metric = canonical_metric(metric)
    if metric not in GOP_METRICS:
        raise UsageError(f"unknown quality metric {metric!r}; use {', '.join(GOP_METRICS)}")
    tool = find_ffmpeg()
    with tempfile.TemporaryDirectory(prefix="gopflow-score-") as scratch:
        if metric == "psnr_y":
            log = os.path.join(scratch, "psnr.log")
            command = raw_psnr_command(
                source_raw, width=target.width, height=target.height, fps=target.fps,
                pix_fmt=target.pix_fmt, stats_name=os.path.basename(log), threads=threads,
                full_range=full_range, exe=tool.path,
            )
        else:
            tool.require(filters=["libvmaf"])
            log = os.path.join(scratch, "vmaf.json")
            # Full-range sources are converted to limited range (VMAF's models expect
            # it), both sides alike, exactly as `gopflow compare` does.
            command = raw_vmaf_command(
                source_raw, width=target.width, height=target.height, fps=target.fps,
                pix_fmt=target.pix_fmt, model_name=metric, model_version=VMAF_MODELS[metric],
                log_name=os.path.basename(log), threads=threads, full_range=full_range,
                exe=tool.path,
            )
        code, reason = feed_process(
            command, restored, os.path.join(scratch, "ffmpeg.log"), cwd=scratch
        )
        if code != 0:
            raise EncoderError(f"quality measurement failed: {reason}")
        if metric == "psnr_y":
            with open(log, encoding="utf-8") as handle:
                values = [float(m.group(1)) for m in _PSNR_Y.finditer(handle.read())]
            values = [100.0 if math.isinf(v) else v for v in values]
        else:
            values = list(read_vmaf_log(log, [metric])[metric])
    if len(values) != target.frame_count:
        raise MetricError(
            f"scored {len(values)} frames, the GOP has {target.frame_count}"
        )
    return GopScore(metric, sum(values) / len(values), min(values), len(values))
