"""Per-frame quality of a distorted video against its reference (``gopflow compare``).

Data flow: :class:`CompareConfig` -> :func:`gopflow.quality.measure.measure` (PSNR/SSIM/MS-SSIM
streamed with PyAV in lockstep, VMAF through libvmaf) -> :class:`FrameScores` (returned) and,
when asked, per-frame scores as JSON and/or CSV and a plot of the scores over time
(matplotlib, Agg canvas); :func:`format_summary` renders the metric x pooling table. Each file
is written under a temporary name in the target's directory and moved into place with
``os.replace``, so a reader never sees a half-written file. Settings are checked before the
(long) measurement starts. Heavy imports (PyAV, torch, matplotlib) happen only when it runs.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gopflow.errors import OutputError, UsageError
from gopflow.fileio import atomic_write

if TYPE_CHECKING:
    from gopflow.quality.metrics import FrameScores

DEFAULT_METRICS = "psnr,ssim,vmaf"
_POOLING_HEADERS = (("mean", "mean"), ("harmonic_mean", "h.mean"), ("min", "min"), ("p5", "p5"))
_PLOT_GROUPS = (
    ("PSNR (dB)", ("psnr_y", "psnr_u", "psnr_v", "psnr_yuv")),
    ("SSIM / MS-SSIM", ("ssim_y", "msssim_y")),
    ("VMAF", ("vmaf", "vmaf_neg")),
)
_PLOT_FORMATS = frozenset({"png", "pdf", "svg"})
_RESIZE_WORDS = {
    "none": "same size",
    "crop": "padding cropped to the reference size",
    "scale": "scaled to the reference size (bicubic)",
}


@dataclass(frozen=True)
class CompareConfig:
    """One comparison: inputs, metrics, optional output files and decoding options."""

    reference: str
    distorted: str
    metrics: str | Sequence[str] = DEFAULT_METRICS
    """Metric groups or single names, as a sequence or comma-separated."""
    json: str | None = None
    """Write the summary and per-frame scores here."""
    csv: str | None = None
    """Write per-frame scores here, one row a frame."""
    plot: str | None = None
    """Plot the scores over time here (.png, .pdf or .svg)."""
    scale: bool = False
    """Scale the distorted video to the reference's size (bicubic) when sizes differ."""
    allow_length_mismatch: bool = False
    """Score the frames both have instead of failing when frame counts differ."""
    threads: int | None = None
    """Decoder/libvmaf/torch threads (``None``: cores, at most 4)."""


def parse_metrics(names: str | Iterable[str]) -> tuple[str, ...]:
    """Canonical metric names from groups and single names (a comma-separated string or a
    sequence); :class:`UsageError` for an unknown name or none at all."""
    from gopflow.quality.metrics import expand_metrics

    return expand_metrics(names.split(",") if isinstance(names, str) else names)


def check_threads(threads: int | None) -> int | None:
    """``threads`` unchanged, or :class:`UsageError` when it is below 1."""
    if threads is not None and threads < 1:
        raise UsageError("threads must be at least 1")
    return threads


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _json_ready(data: Any) -> Any:
    """NaN/inf become null: JSON has no such numbers."""
    if isinstance(data, float):
        return _finite(data)
    if isinstance(data, dict):
        return {key: _json_ready(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_json_ready(value) for value in data]
    return data


def scores_json(scores: Any) -> bytes:
    """Inputs, sizes, the pooled summary and every per-frame series, as UTF-8 JSON."""
    text = json.dumps(_json_ready(scores.to_dict(per_frame=True)), indent=2, allow_nan=False)
    return (text + "\n").encode()


def scores_csv(scores: Any) -> bytes:
    """``frame,<metric>...`` then one row per frame."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["frame", *scores.names])
    columns = [scores[name] for name in scores.names]
    for index in range(scores.frames):
        writer.writerow([index, *(f"{column[index]:.6f}" for column in columns)])
    return buffer.getvalue().encode()


def _plot_format(path: str) -> str:
    fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    if fmt not in _PLOT_FORMATS:
        raise UsageError(f"--plot: unsupported image type .{fmt} (use .png, .pdf or .svg)")
    return fmt


def write_plot(path: str, scores: Any) -> None:
    """Scores over frame index, one panel per scale (dB, 0-1, 0-100); Agg, no pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [
        (title, [n for n in names if n in scores.names]) for title, names in _PLOT_GROUPS
    ]
    panels = [(title, names) for title, names in panels if names]
    fmt = _plot_format(path)
    figure = Figure(figsize=(10, 2.8 * len(panels)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    frames = range(scores.frames)
    for ax, (title, names) in zip(axes, panels, strict=True):
        for name in names:
            mean = scores.summary()[name].mean
            ax.plot(frames, scores[name], linewidth=1.0, label=f"{name} (mean {mean:.3f})")
        ax.set_ylabel(title)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    axes[-1].set_xlabel("frame")
    figure.suptitle(
        f"{os.path.basename(scores.distorted)} vs {os.path.basename(scores.reference)}",
        fontsize="medium",
    )
    atomic_write(path, lambda handle: figure.savefig(handle, format=fmt, dpi=100))


def format_summary(scores: Any) -> str:
    """A metric x pooling table with a header naming the inputs and what was resized."""
    lines = [
        f"reference  {scores.reference} ({scores.width}x{scores.height}, "
        f"{scores.frames} frames scored)",
        f"distorted  {scores.distorted} ({scores.distorted_width}x{scores.distorted_height}, "
        f"{_RESIZE_WORDS[scores.resize]})",
        "",
        f"{'metric':<10}" + "".join(f"{label:>11}" for _, label in _POOLING_HEADERS),
    ]
    for name, pooled in scores.summary().items():
        values = pooled.to_dict()
        lines.append(
            f"{name:<10}" + "".join(f"{values[key]:>11.4f}" for key, _ in _POOLING_HEADERS)
        )
    return "\n".join(lines)


def _check_writable(paths: list[str]) -> None:
    """Fail before the (long) measurement when an output's directory is missing."""
    for path in paths:
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise OutputError(f"cannot write {path}: directory {directory} does not exist")
        if os.path.isdir(path):
            raise OutputError(f"cannot write {path}: it is a directory")


def run_compare(config: CompareConfig) -> FrameScores:
    """Check the settings, measure, write the asked-for files; return the scores."""
    from gopflow.quality.measure import measure

    metrics = parse_metrics(config.metrics)
    check_threads(config.threads)
    outputs = [p for p in (config.json, config.csv, config.plot) if p]
    _check_writable(outputs)
    if config.plot:
        _plot_format(config.plot)
    scores = measure(
        config.reference, config.distorted, metrics, scale=config.scale,
        allow_length_mismatch=config.allow_length_mismatch, threads=config.threads,
    )
    if config.json:
        data = scores_json(scores)
        atomic_write(config.json, lambda handle: handle.write(data))
    if config.csv:
        data_csv = scores_csv(scores)
        atomic_write(config.csv, lambda handle: handle.write(data_csv))
    if config.plot:
        write_plot(config.plot, scores)
    return scores
