"""``gopflow transcode``: flags -> :class:`~gopflow.jobs.config.TranscodeOptions` -> the job.

Every option is parsed with no default of its own (``argparse.SUPPRESS``): only the flags a
user gave reach :class:`TranscodeOptions`, which owns the defaults and the checks, so the
command line and ``gopflow.transcode(...)`` resolve a request the same way.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gopflow.codecs.learned.api import DEFAULT_INTRA_OFFSETS, DEFAULT_MOTION_REFINEMENT
from gopflow.jobs.config import CODECS, MODE_SELECTS, PRECODERS, TranscodeOptions


def add_transcode_parser(commands: Any, epilog: str) -> argparse.ArgumentParser:
    """The ``transcode`` subcommand; its dests are :class:`TranscodeOptions` field names."""
    tr = commands.add_parser(
        "transcode",
        help="encode a video GOP by GOP on Ray",
        description=(
            "Encode INPUT into OUTPUT (.mp4, .m4v, .mov or .mkv). The video is planned into "
            "closed GOPs of at most --gop-seconds, cut at scene changes; Ray workers each "
            "decode their own GOP and encode it; the GOPs are joined without re-encoding, "
            "audio copied. Output has the source's frame count, frame rate and size (odd "
            "sizes are padded by one replicated row/column to even, as 4:2:0 needs). A run "
            "interrupted by a crash or Ctrl-C continues with --resume."
        ),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    tr.add_argument("input", metavar="INPUT", help="video file to transcode")
    tr.add_argument("-o", "--output", required=True, help="output file (.mp4/.m4v/.mov/.mkv)")
    add_transcode_options(tr)
    out = tr.add_argument_group("reporting")
    out.add_argument("--report", help="write a JSON report (per-GOP frames, bytes, seconds)")
    add_progress_option(out)
    out.add_argument("--plot", metavar="PNG", help="plot per-GOP bitrate, quality and decisions")
    return tr


def add_progress_option(group: Any) -> None:
    group.add_argument(
        "--progress", action=argparse.BooleanOptionalAction,
        help="progress bar (default: when stderr is a terminal)",
    )


def add_transcode_options(tr: argparse.ArgumentParser) -> None:
    """How each file is coded and run: the flags ``transcode`` and ``batch`` share."""
    enc = tr.add_argument_group("encoding")
    enc.add_argument(
        "--codec", choices=CODECS,
        help="x264/x265/svtav1 through ffmpeg, or a learned codec writing a .gflv file: dvc (DVC), "
        "fvc (FVC), intra (learned image codec on every frame) (default: x264)",
    )
    enc.add_argument(
        "--quality", type=int, metavar="Q",
        help="learned codecs: quality level 1 (lowest rate) .. the model's level count "
        "(7 for the shipped weights; default: the level above the middle, 4 of 7)",
    )
    enc.add_argument(
        "--registry", metavar="DIR",
        help="learned codecs: weights registry directory (default: the shipped weights)",
    )
    enc.add_argument(
        "--adaptive-intra", action=argparse.BooleanOptionalAction,
        help="dvc/fvc: also code every P frame as an intra frame and keep whichever costs "
        "less in rate + lambda * distortion (an intra frame starts a new GOP; bounds P-frame "
        "drift and catches missed cuts, about 30%% slower encoding) (default: on for dvc/fvc)",
    )
    enc.add_argument(
        "--rdo", action=argparse.BooleanOptionalAction,
        help="dvc/fvc: code each P frame's motion and residual at several quality levels "
        "around --quality and the residual with several quantiser dead zones, keep the "
        "combination with the least rate + lambda * distortion, refine dvc's motion latent "
        "for its prediction, and search each latent's side information for fewer bytes "
        "(slower encoding) (default: on for dvc/fvc)",
    )
    enc.add_argument(
        "--motion-refinement", type=int, metavar="STEPS",
        help="dvc: Adam steps refining each P frame's motion latent for its prediction before "
        "it is coded (encoder only; more steps, fewer bits, slower encoding; 0 turns it off) "
        f"(default with --rdo: {DEFAULT_MOTION_REFINEMENT['dvc']} for dvc, "
        f"{DEFAULT_MOTION_REFINEMENT['fvc']} for fvc)",
    )
    enc.add_argument(
        "--intra-offset", type=int, metavar="N",
        help="dvc/fvc: code the key frame that opens each GOP N quality levels above "
        "--quality (capped at the top level), as x264 gives I frames a finer quantiser; the "
        "P frames predict from it (intra frames chosen by --adaptive-intra stay at --quality) "
        f"(default: {DEFAULT_INTRA_OFFSETS['dvc']} for dvc, {DEFAULT_INTRA_OFFSETS['fvc']} for "
        "fvc)",
    )
    rate = enc.add_mutually_exclusive_group()
    rate.add_argument(
        "--crf", type=float,
        help="constant rate factor 0-51, 0-63 for svtav1 (default: 23 x264, 28 x265, 35 svtav1)"
    )
    rate.add_argument(
        "--bitrate", help="average bitrate with VBV, e.g. 3000k or 3M"
    )
    enc.add_argument(
        "--maxrate",
        help="VBV max rate (default: --bitrate); with CRF, caps it (capped CRF, as streaming "
        "wants)",
    )
    enc.add_argument("--bufsize", help="VBV buffer (default: 2x maxrate)")
    enc.add_argument(
        "--height", type=int,
        help="scale down (Lanczos) to this height, the width in proportion and even "
        "(default: the source's size; never scales up)",
    )
    enc.add_argument(
        "--preset",
        help="x264/x265 preset (default: medium); svtav1: 0-13 or an x264 name mapped onto it "
        "(medium is 7)",
    )
    enc.add_argument("--pix-fmt", help="output pixel format (default: yuv420p)")
    enc.add_argument(
        "--encoder-threads",
        type=int,
        help="threads per GOP encode; part of the output's identity (default: 1, GOP "
        "parallelism uses the cores; workers x threads never exceed the cluster's CPUs)",
    )
    enc.add_argument(
        "--lookahead-tail", type=int, metavar="N",
        help="frames after each GOP shown to the encoder as look-ahead, then cut off at a "
        "forced IDR, so a GOP's last frames are coded as in one long encode (default: 0, "
        "off: on the tuning clips a 10-frame tail cost 14%% more encoded frames and bought no "
        "PSNR at equal rate, see bench/lookahead_tail.py)",
    )
    plan = tr.add_argument_group("GOP planning")
    plan.add_argument("--gop-seconds", type=float, help="max GOP length (2.0)")
    plan.add_argument("--min-gop-seconds", type=float, help="min GOP length (0.5)")
    plan.add_argument(
        "--scene-threshold", type=float, help="ffmpeg scdet threshold (10)"
    )
    plan.add_argument(
        "--no-scene-detect", dest="scene_detect", action="store_false",
        help="fixed-length GOPs, no scene cuts",
    )
    run = tr.add_argument_group("execution")
    run.add_argument(
        "--ray-address",
        help="existing Ray cluster (default: $RAY_ADDRESS, else a new local cluster)",
    )
    run.add_argument("--workers", type=int, help="GOPs encoded at once (default: cluster CPUs)")
    run.add_argument("--retries", type=int, help="retries per failed GOP (2)")
    run.add_argument("--work-dir", help="work directory root (default: OUTPUT's dir/.gopflow-work)")
    run.add_argument("--resume", action="store_true", help="reuse finished GOPs of an earlier run")
    run.add_argument("--keep-work", action="store_true", help="keep the work dir after success")
    run.add_argument(
        "--no-audio", dest="audio", action="store_false", help="drop the audio streams"
    )
    qro = tr.add_argument_group(
        "quality-resolution optimisation (QRO)",
        "Per GOP, choose spatial scale, frame rate and CRF: the cheapest candidate whose "
        "quality, measured on the restored GOP (full size, full rate) against the source, "
        "meets a target, or the best quality within a bitrate budget. Every GOP is checked "
        "after its final encode and re-encoded stricter if below target; a GOP that cannot "
        "reach it is flagged in the report. Output must be .mkv; `gopflow restore` gives the "
        "full-size, full-rate video.",
    )
    goal = qro.add_mutually_exclusive_group()
    goal.add_argument("--target-vmaf", type=float, metavar="V", help="VMAF target (e.g. 93)")
    goal.add_argument(
        "--target-vmaf-neg", type=float, metavar="V",
        help="VMAF NEG target (use when precoding may enhance the picture)",
    )
    goal.add_argument("--target-psnr", type=float, metavar="DB", help="PSNR-Y target in dB")
    goal.add_argument(
        "--max-bitrate", metavar="B",
        help="QRO budget: best VMAF within this average bitrate per GOP (e.g. 2M)",
    )
    qro.add_argument(
        "--qro-scales", help="spatial scales to try (1,3/4,2/3,1/2)"
    )
    qro.add_argument(
        "--no-half-rate", dest="half_rate", action="store_false", help="never halve the frame rate"
    )
    qro.add_argument(
        "--precoder", choices=PRECODERS,
        help="none: Lanczos down, bicubic/repeat restoration; dvp: learned downscalers (Deep "
        "Video Precoding; a player upscales linearly; spatial modes only); vistra: learned "
        "up-sampler and frame interpolator at restoration (ViSTRA)",
    )
    qro.add_argument("--probe-preset", help="preset of probe encodes")
    qro.add_argument(
        "--mode-select", choices=MODE_SELECTS,
        help="probe: search every scale with probe encodes; predict: pick the scale from "
        "the GOP's SI/TI with the shipped predictor (trained on probe results), then search "
        "CRF in that mode only (quality targets only)",
    )
    qro.add_argument(
        "--qro-tolerance", type=float,
        help="a GOP passes its check at target minus this (0.5)",
    )
    qro.add_argument("--max-reencodes", type=int, help="stricter re-encodes (3)")
    qro.add_argument("--decisions", metavar="FILE", help="apply per-GOP decisions (no search)")
    qro.add_argument("--save-decisions", metavar="FILE", help="write per-GOP decisions (JSON)")


def run_transcode_command(args: argparse.Namespace) -> int:
    """Resolve the given flags into a config, run it, print a one-line summary."""
    from gopflow.jobs.transcode import run_transcode

    fields = set(TranscodeOptions.__dataclass_fields__)
    given = {name: value for name, value in vars(args).items() if name in fields}
    config = TranscodeOptions(**given).resolve(args.input, args.output)
    report = run_transcode(config, log=lambda message: print(message, file=sys.stderr))
    totals = report.to_dict()["totals"]
    print(
        f"wrote {report.output}: {report.frames} frames, {report.output_width}x"
        f"{report.output_height}, {totals['gops']} GOPs ({totals['resumed_gops']} resumed), "
        f"{totals['bitrate_kbps']:.0f} kbit/s, {report.wall_seconds:.1f} s "
        f"({totals['fps']:.1f} fps)",
        file=sys.stderr,
    )
    return 0
