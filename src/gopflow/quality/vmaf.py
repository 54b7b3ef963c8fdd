"""VMAF (default and NEG models) through the bundled ffmpeg's libvmaf filter.

Data flow: ``probe`` both inputs (stream index, size, pixel format, frame count) -> one
ffmpeg run: each input's video stream -> timestamps renumbered by frame order (``setpts``
on a common nominal clock: both start at 0 and frame n meets frame n, even where a container's
millisecond timestamps would make libvmaf's timestamp sync pair neighbours) ->
distorted cropped (padding) or bicubic-scaled (only when asked) to the reference's size ->
both in the reference's planar layout -> ``libvmaf`` with every asked model at once and
``n_threads`` -> libvmaf's JSON log (in a temporary directory) -> per-frame scores ->
:class:`gopflow.quality.metrics.FrameScores`, pooled like every other metric.

Use the NEG model (``vmaf_neg``, "no enhancement gain") whenever processing before the
encoder can sharpen or enhance the picture, which precoding does: the default model rewards
such enhancement.
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from gopflow.errors import FrameCountError, MetricError, UsageError
from gopflow.media.ffmpeg import find_ffmpeg, vmaf_command
from gopflow.media.probe import probe
from gopflow.quality.metrics import (
    FrameScores,
    MetricSeries,
    check_frame_counts,
    compare_format,
    default_threads,
    expand_metrics,
    plan_resize,
)
from gopflow.quality.names import VMAF_METRICS

# gopflow metric name -> libvmaf built-in model version.
VMAF_MODELS: Mapping[str, str] = {"vmaf": "vmaf_v0.6.1", "vmaf_neg": "vmaf_v0.6.1neg"}
# Layouts libvmaf reads; anything else is compared as 8- or 10-bit 4:2:0.
_VMAF_FORMATS = frozenset(
    {"yuv420p", "yuv422p", "yuv444p", "yuv420p10le", "yuv422p10le", "yuv444p10le",
     "yuv420p12le", "yuv422p12le", "yuv444p12le"}
)
_LOG_NAME = "vmaf.json"


def _vmaf_format(pix_fmt: str) -> str:
    fmt = compare_format(pix_fmt)
    if fmt in _VMAF_FORMATS:
        return fmt
    return "yuv420p" if fmt == "gray" else "yuv420p10le"


def read_vmaf_log(path: str | Path, models: Iterable[str]) -> dict[str, tuple[float, ...]]:
    """Per-frame scores of each model (by its name) from a libvmaf JSON log."""
    try:
        data = json.loads(Path(path).read_text())
        frames = sorted(data["frames"], key=lambda f: int(f["frameNum"]))
        return {m: tuple(float(f["metrics"][m]) for f in frames) for m in models}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MetricError(f"unreadable libvmaf log {path}: {exc}") from exc


def vmaf_scores(
    reference: str,
    distorted: str,
    models: Iterable[str] = ("vmaf",),
    *,
    scale: bool = False,
    allow_length_mismatch: bool = False,
    threads: int | None = None,
    subsample: int = 1,
) -> FrameScores:
    """Per-frame VMAF of ``distorted`` against ``reference`` with each of ``models``
    (``vmaf``: vmaf_v0.6.1, ``vmaf_neg``: vmaf_v0.6.1neg), all in one libvmaf pass.
    ``subsample`` N scores every Nth frame only (0, N, 2N...: libvmaf's ``n_subsample``),
    so the series has ceil(frames / N) entries."""
    wanted = [m for m in expand_metrics(models) if m in VMAF_METRICS]
    if not wanted or len(wanted) != len(expand_metrics(models)):
        raise UsageError(f"vmaf_scores takes models from {', '.join(VMAF_METRICS)}")
    tool = find_ffmpeg()
    tool.require(filters=["libvmaf"])
    ref, dist = probe(reference), probe(distorted)
    check_frame_counts(
        reference, ref.frame_count, distorted, dist.frame_count, allow_length_mismatch
    )
    if subsample < 1:
        raise UsageError(f"the VMAF subsample step must be at least 1, got {subsample}")
    expected = -(-min(ref.frame_count, dist.frame_count) // subsample)
    resize = plan_resize((ref.width, ref.height), (dist.width, dist.height), scale)
    threads = threads or default_threads()
    command = vmaf_command(
        dist.path, ref.path, distorted_stream=dist.stream_index,
        reference_stream=ref.stream_index, size=(ref.width, ref.height), resize=resize,
        pix_fmt=_vmaf_format(ref.pix_fmt), models={m: VMAF_MODELS[m] for m in wanted},
        threads=threads, log_name=_LOG_NAME, subsample=subsample, exe=tool.path,
    )
    with tempfile.TemporaryDirectory(prefix="gopflow-vmaf-") as work:
        done = subprocess.run(command, cwd=work, capture_output=True, text=True)
        if done.returncode != 0:
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])
            raise MetricError(
                f"libvmaf failed on {distorted} vs {reference} (exit {done.returncode}): {tail}"
            )
        per_frame = read_vmaf_log(Path(work) / _LOG_NAME, wanted)
    got = len(per_frame[wanted[0]])
    if got != expected:
        raise FrameCountError(
            f"libvmaf scored {got} frames of {distorted}, expected {expected} "
            "(timestamps of the two inputs do not line up?)"
        )
    for name, values in per_frame.items():
        if not all(math.isfinite(v) for v in values):
            raise MetricError(f"libvmaf gave non-finite {name} scores for {distorted}")
    return FrameScores(
        reference=reference, distorted=distorted, frames=got,
        width=ref.width, height=ref.height,
        distorted_width=dist.width, distorted_height=dist.height, resize=resize,
        series=tuple(MetricSeries(name, per_frame[name]) for name in wanted),
    )
