"""``gopflow compare REF DIST``: flags -> :class:`gopflow.jobs.compare.CompareConfig` ->
:func:`gopflow.jobs.compare.run_compare`, then the summary table on stdout."""

from __future__ import annotations

import argparse
from typing import Any

from gopflow.errors import UsageError
from gopflow.jobs.compare import (
    DEFAULT_METRICS,
    CompareConfig,
    check_threads,
    format_summary,
    parse_metrics,
)
from gopflow.jobs.compare import run_compare as run_compare_job


def _metric_list(text: str) -> tuple[str, ...]:
    try:
        return parse_metrics(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    try:
        check_threads(value)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
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


def run_compare(args: argparse.Namespace) -> int:
    """Measure, write the asked-for files, print the summary; 0 on success."""
    scores = run_compare_job(CompareConfig(
        reference=args.reference, distorted=args.distorted, metrics=args.metrics,
        json=args.json, csv=args.csv, plot=args.plot, scale=args.scale,
        allow_length_mismatch=args.allow_length_mismatch, threads=args.threads,
    ))
    print(format_summary(scores))
    return 0
