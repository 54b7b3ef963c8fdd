"""``gopflow compare REF DIST``: per-frame quality of a distorted video against its reference.

Data flow: arguments -> :func:`gopflow.quality.metrics.measure` (PSNR/SSIM/MS-SSIM streamed
with PyAV in lockstep, VMAF through libvmaf) -> :class:`FrameScores` -> a summary table on
stdout (metric x pooling) and, when asked, per-frame scores as JSON and/or CSV and a plot of
the scores over time (matplotlib, Agg canvas). Each file is written under a temporary name
in the target's directory and moved into place with ``os.replace``, so a reader never sees
a half-written file. Heavy imports (PyAV, torch, matplotlib) happen only when it runs.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
from typing import Any

from gopflow.errors import OutputError, UsageError
from gopflow.fileio import atomic_write

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


def _metric_list(text: str) -> tuple[str, ...]:
    from gopflow.quality.metrics import expand_metrics

    try:
        return expand_metrics(text.split(","))
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("threads must be at least 1")
    return value


def add_compare_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``compare`` subcommand to an ``add_subparsers()`` object."""
    parser = subparsers.add_parser(
        "compare",
        help="per-frame quality (PSNR, SSIM, MS-SSIM, VMAF) of a video against its reference",
        description=(
            "Score every frame of DIST against the same frame of REF (frames paired in "
            "order) at REF's size and print each metric pooled by mean, harmonic mean, "
            "minimum and 5th percentile. A DIST a few pixels larger than REF (encoder "
            "padding) is cropped; a DIST of another size needs --scale (bicubic). Metrics: "
            "psnr (Y, U, V and YUV 6:1:1), ssim (Y, as ffmpeg's ssim filter), msssim (Y), "
            "vmaf (libvmaf vmaf_v0.6.1), vmaf_neg (vmaf_v0.6.1neg: use it when "
            "pre-processing may enhance the picture)."
        ),
    )
    parser.add_argument("reference", metavar="REF", help="reference (source) video")
    parser.add_argument("distorted", metavar="DIST", help="distorted (decoded output) video")
    parser.add_argument(
        "--metrics", type=_metric_list, default=DEFAULT_METRICS,
        help=f"comma-separated: psnr,ssim,msssim,vmaf,vmaf_neg (default: {DEFAULT_METRICS})",
    )
    parser.add_argument("--json", metavar="FILE", help="write summary and per-frame scores")
    parser.add_argument("--csv", metavar="FILE", help="write per-frame scores, one row a frame")
    parser.add_argument("--plot", metavar="FILE", help="plot scores over time (.png/.pdf/.svg)")
    parser.add_argument(
        "--scale", action="store_true",
        help="scale DIST to REF's size with bicubic when their sizes differ",
    )
    parser.add_argument(
        "--allow-length-mismatch", action="store_true",
        help="score the frames both have instead of failing when frame counts differ",
    )
    parser.add_argument(
        "--threads", type=_threads, help="decoder/libvmaf/torch threads (default: cores, max 4)"
    )
    return parser


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


def run_compare(args: argparse.Namespace) -> int:
    """Measure, print the summary, write the asked-for files; 0 on success."""
    from gopflow.quality.metrics import measure

    outputs = [p for p in (args.json, args.csv, args.plot) if p]
    _check_writable(outputs)
    if args.plot:
        _plot_format(args.plot)
    scores = measure(
        args.reference, args.distorted, args.metrics, scale=args.scale,
        allow_length_mismatch=args.allow_length_mismatch, threads=args.threads,
    )
    print(format_summary(scores))
    if args.json:
        data = scores_json(scores)
        atomic_write(args.json, lambda handle: handle.write(data))
    if args.csv:
        data_csv = scores_csv(scores)
        atomic_write(args.csv, lambda handle: handle.write(data_csv))
    if args.plot:
        write_plot(args.plot, scores)
    return 0
