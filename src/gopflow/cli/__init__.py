"""The ``gopflow`` command line: parse arguments into job configs and call ``gopflow.jobs``.

Errors gopflow raises on purpose print as one line on stderr with a non-zero exit status;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from gopflow import __version__
from gopflow.codecs.learned.api import DEFAULT_INTRA_OFFSETS, DEFAULT_MOTION_REFINEMENT
from gopflow.errors import GopflowError, UsageError
from gopflow.jobs.compare import add_compare_parser, run_compare
from gopflow.training.precoders import add_train_parser, run_train

if TYPE_CHECKING:
    from gopflow.jobs.decode import LearnedSettings
    from gopflow.qro.stage import QroSettings

LEARNED = ("dvc", "fvc", "intra")

EPILOG = """examples:
  gopflow probe input.mp4
  gopflow transcode input.mp4 -o out.mp4 --codec x264 --crf 20 --preset medium
  gopflow transcode input.mkv -o out.mkv --codec x265 --bitrate 3000 --report report.json
  gopflow transcode input.mp4 -o out.mp4 --ray-address 10.0.0.5:6379   # existing cluster
  gopflow transcode input.mp4 -o out.mp4 --resume                      # after a crash/Ctrl-C
  gopflow transcode input.mp4 -o out.mkv --target-vmaf 93 --report r.json --plot r.png
  gopflow restore out.mkv -o viewer.mkv                                 # full size and rate
  gopflow transcode input.mp4 -o out.gflv --codec dvc --quality 4      # learned codec
  gopflow decode out.gflv -o decoded.y4m                                # exact frames
  gopflow train precoder --kind dvp --scale 3/4 --data ../shared/media/train --steps 900
  gopflow train evaluate --model dvp-3_4 --clips ../shared/media/white_flower_1280x720.264
"""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    return value


def _bitrate_kbps(text: str) -> int:
    """``3000``, ``3000k`` or ``3M`` -> kbit/s."""
    raw = text.strip().lower()
    scale = 1.0
    if raw.endswith("k"):
        raw = raw[:-1]
    elif raw.endswith("m"):
        raw, scale = raw[:-1], 1000.0
    try:
        value = float(raw) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a bitrate: {text!r} (e.g. 3000k or 3M)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("bitrate must be positive")
    return round(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gopflow",
        description=(
            "GOP-parallel video preprocessing and transcoding on Ray. A video is cut into "
            "closed, scene-aligned GOPs; Ray workers decode and encode each GOP with "
            "x264/x265 (through ffmpeg); the GOPs are joined into one file with the source's "
            "audio."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gopflow {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks instead of one-line errors"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    probe = commands.add_parser(
        "probe",
        help="describe a video as JSON",
        description=(
            "Print a JSON description of INPUT: container, video stream (size, fps and "
            "whether it is variable, frame count, duration, pixel format, colour range and "
            "space, rotation) and audio streams."
        ),
    )
    probe.add_argument("input", metavar="INPUT", help="video file")

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
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tr.add_argument("input", metavar="INPUT", help="video file to transcode")
    tr.add_argument("-o", "--output", required=True, help="output file (.mp4/.m4v/.mov/.mkv)")
    enc = tr.add_argument_group("encoding")
    enc.add_argument(
        "--codec", choices=["x264", "x265", *LEARNED], default="x264",
        help="x264/x265 through ffmpeg, or a learned codec writing a .gflv file: dvc (DVC), "
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
        "--adaptive-intra", action=argparse.BooleanOptionalAction, default=None,
        help="dvc/fvc: also code every P frame as an intra frame and keep whichever costs "
        "less in rate + lambda * distortion (an intra frame starts a new GOP; bounds P-frame "
        "drift and catches missed cuts, about 30%% slower encoding) (default: on for dvc/fvc)",
    )
    enc.add_argument(
        "--rdo", action=argparse.BooleanOptionalAction, default=None,
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
        "--crf", type=_positive_float, help="constant rate factor 0-51 (default: 23 x264, 28 x265)"
    )
    rate.add_argument(
        "--bitrate", type=_bitrate_kbps, help="average bitrate with VBV, e.g. 3000k or 3M"
    )
    enc.add_argument("--maxrate", type=_bitrate_kbps, help="VBV max rate (default: --bitrate)")
    enc.add_argument("--bufsize", type=_bitrate_kbps, help="VBV buffer (default: 2x maxrate)")
    enc.add_argument("--preset", help="x264/x265 preset (default: medium)")
    enc.add_argument("--pix-fmt", help="output pixel format (default: yuv420p)")
    enc.add_argument(
        "--encoder-threads",
        type=int,
        default=1,
        help="threads per GOP encode; part of the output's identity (default: 1, GOP "
        "parallelism uses the cores; workers x threads never exceed the cluster's CPUs)",
    )
    enc.add_argument(
        "--lookahead-tail", type=int, metavar="N",
        help="frames after each GOP shown to the encoder as look-ahead, then cut off at a "
        "forced IDR, so a GOP's last frames are coded as in one long encode (10; 0: off)",
    )
    plan = tr.add_argument_group("GOP planning")
    plan.add_argument("--gop-seconds", type=float, default=2.0, help="max GOP length (2.0)")
    plan.add_argument("--min-gop-seconds", type=float, default=0.5, help="min GOP length (0.5)")
    plan.add_argument(
        "--scene-threshold", type=float, default=10.0, help="ffmpeg scdet threshold (10)"
    )
    plan.add_argument(
        "--no-scene-detect", action="store_true", help="fixed-length GOPs, no scene cuts"
    )
    run = tr.add_argument_group("execution")
    run.add_argument(
        "--ray-address",
        help="existing Ray cluster (default: $RAY_ADDRESS, else a new local cluster)",
    )
    run.add_argument("--workers", type=int, help="GOPs encoded at once (default: cluster CPUs)")
    run.add_argument("--retries", type=int, default=2, help="retries per failed GOP (2)")
    run.add_argument("--work-dir", help="work directory root (default: OUTPUT's dir/.gopflow-work)")
    run.add_argument("--resume", action="store_true", help="reuse finished GOPs of an earlier run")
    run.add_argument("--keep-work", action="store_true", help="keep the work dir after success")
    run.add_argument("--no-audio", action="store_true", help="drop the audio streams")
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
        "--max-bitrate", type=_bitrate_kbps, metavar="B",
        help="QRO budget: best VMAF within this average bitrate per GOP (e.g. 2M)",
    )
    qro.add_argument(
        "--qro-scales", default="1,3/4,2/3,1/2", help="spatial scales to try (1,3/4,2/3,1/2)"
    )
    qro.add_argument("--no-half-rate", action="store_true", help="never halve the frame rate")
    qro.add_argument(
        "--precoder", choices=["none", "dvp", "vistra"], default="none",
        help="none: Lanczos down, bicubic/repeat restoration; dvp: learned downscalers (Deep "
        "Video Precoding; a player upscales linearly; spatial modes only); vistra: learned "
        "up-sampler and frame interpolator at restoration (ViSTRA)",
    )
    qro.add_argument("--probe-preset", default="veryfast", help="preset of probe encodes")
    qro.add_argument(
        "--mode-select", choices=["probe", "predict"], default="probe",
        help="probe: search every scale with probe encodes; predict: pick the scale from "
        "the GOP's SI/TI with the shipped predictor (trained on probe results), then search "
        "CRF in that mode only (quality targets only)",
    )
    qro.add_argument(
        "--qro-tolerance", type=float, default=0.5,
        help="a GOP passes its check at target minus this (0.5)",
    )
    qro.add_argument("--max-reencodes", type=int, default=3, help="stricter re-encodes (3)")
    qro.add_argument("--decisions", metavar="FILE", help="apply per-GOP decisions (no search)")
    qro.add_argument("--save-decisions", metavar="FILE", help="write per-GOP decisions (JSON)")
    out = tr.add_argument_group("reporting")
    out.add_argument("--report", help="write a JSON report (per-GOP frames, bytes, seconds)")
    out.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    tr_plot = out.add_argument
    tr_plot("--plot", metavar="PNG", help="plot per-GOP bitrate, quality and decisions")

    restore = commands.add_parser(
        "restore",
        help="full-size, full-rate video from a gopflow output",
        description=(
            "Write what the viewer of OUTPUT gets: every frame at the source's size, frame "
            "rate and frame count (from OUTPUT's tags), down-scaled GOPs up-scaled (bicubic) "
            "and half-rate GOPs restored by frame repetition; audio copied. FILE: .y4m (raw), "
            ".mkv (FFV1 lossless) or .mp4 (x264 lossless)."
        ),
    )
    restore.add_argument("input", metavar="OUTPUT", help="a file written by gopflow transcode")
    restore.add_argument("-o", "--output", required=True, metavar="FILE")
    decode = commands.add_parser(
        "decode",
        help="decode a .gflv file written by a learned codec",
        description=(
            "Decode FILE.gflv (gopflow transcode --codec dvc|fvc|intra) GOP by GOP on Ray, in "
            "order, to OUTPUT: .y4m holds the exact decoded RGB frames as 16-bit 4:4:4 "
            "full-range BT.601 YCbCr (C444p16; any player reads it, gopflow's reader inverts it "
            "bit for bit); .mp4/.mkv hold them losslessly as RGB H.264 (libx264rgb -qp 0). "
            "Frame rate and size come from the stream. A truncated or corrupt file is refused "
            "before anything is decoded."
        ),
    )
    decode.add_argument("input", metavar="FILE", help="a .gflv stream")
    decode.add_argument("-o", "--output", required=True, help="output .y4m, .mp4 or .mkv")
    decode.add_argument("--workers", type=int, help="GOPs decoded at once (default: cluster CPUs)")
    decode.add_argument("--registry", metavar="DIR", help="weights registry (default: shipped)")
    decode.add_argument("--ray-address", help="existing Ray cluster (default: a local one)")
    decode.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    add_compare_parser(commands)
    add_train_parser(commands)
    return parser


def _learned_settings(args: argparse.Namespace) -> LearnedSettings | None:
    """The learned codec asked for, after refusing options that belong to x264/x265."""
    from gopflow.jobs.decode import LearnedSettings

    if args.codec not in LEARNED:
        for flag, value in (("--quality", args.quality), ("--registry", args.registry),
                            ("--adaptive-intra", args.adaptive_intra), ("--rdo", args.rdo),
                            ("--intra-offset", args.intra_offset),
                            ("--motion-refinement", args.motion_refinement)):
            if value is not None:
                raise UsageError(f"{flag} is for the learned codecs (dvc, fvc, intra), not "
                                 f"{args.codec}; use --crf or --bitrate")
        return None
    x264_only = {
        "--crf": args.crf, "--bitrate": args.bitrate, "--maxrate": args.maxrate,
        "--bufsize": args.bufsize, "--preset": args.preset, "--pix-fmt": args.pix_fmt,
        "--lookahead-tail": args.lookahead_tail, "--target-vmaf": args.target_vmaf,
        "--target-vmaf-neg": args.target_vmaf_neg, "--target-psnr": args.target_psnr,
        "--max-bitrate": args.max_bitrate, "--decisions": args.decisions,
        "--save-decisions": args.save_decisions, "--plot": args.plot,
    }
    given = [flag for flag, value in x264_only.items() if value is not None]
    if args.precoder != "none":
        given.append("--precoder")
    if args.encoder_threads != 1:
        given.append("--encoder-threads")
    if given:
        raise UsageError(f"{', '.join(given)} apply to x264/x265, not --codec {args.codec}; "
                         "use --quality Q (learned codecs run one thread per GOP)")
    return LearnedSettings(args.codec, args.quality, args.registry, args.adaptive_intra,
                           args.rdo, args.intra_offset, args.motion_refinement)


def _transcode(args: argparse.Namespace) -> int:
    from gopflow.jobs.transcode import TranscodeConfig, run_transcode
    from gopflow.types import EncodeSettings

    learned = _learned_settings(args)
    if args.bitrate is None and (args.maxrate or args.bufsize):
        raise UsageError("--maxrate/--bufsize need --bitrate")
    crf = args.crf
    if crf is None and args.bitrate is None:
        crf = 28.0 if args.codec == "x265" else 23.0
    settings = EncodeSettings(
        codec=args.codec if learned is None else "x264",  # unused by the learned path
        preset=args.preset or "medium",
        crf=crf if args.bitrate is None else None,
        bitrate_kbps=args.bitrate,
        maxrate_kbps=args.maxrate,
        bufsize_kbps=args.bufsize,
        pix_fmt=args.pix_fmt or "yuv420p",
        threads=args.encoder_threads,
        lookahead_tail=max(0, 10 if args.lookahead_tail is None else args.lookahead_tail),
    )
    config = TranscodeConfig(
        input=args.input,
        output=args.output,
        settings=settings,
        gop_seconds=args.gop_seconds,
        min_gop_seconds=args.min_gop_seconds,
        scene_detect=not args.no_scene_detect,
        scene_threshold=args.scene_threshold,
        ray_address=args.ray_address,
        workers=args.workers,
        max_retries=max(0, args.retries),
        work_dir=args.work_dir,
        resume=args.resume,
        keep_work=args.keep_work,
        report=args.report,
        progress=args.progress,
        copy_audio=not args.no_audio,
    )
    config = replace(
        config,
        learned=learned,
        qro=_qro_settings(args),
        decisions_in=args.decisions,
        decisions_out=args.save_decisions,
        plot=args.plot,
    )
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


def _qro_settings(args: argparse.Namespace) -> QroSettings | None:
    from fractions import Fraction

    from gopflow.qro.stage import QroSettings
    from gopflow.qro.target import QroTarget, parse_scale

    if args.mode_select == "predict" and args.target_vmaf is None and args.target_vmaf_neg is None:
        raise UsageError("--mode-select predict needs --target-vmaf or --target-vmaf-neg")
    if args.target_vmaf is not None:
        target = QroTarget("vmaf", target=args.target_vmaf)
    elif args.target_vmaf_neg is not None:
        target = QroTarget("vmaf_neg", target=args.target_vmaf_neg)
    elif args.target_psnr is not None:
        target = QroTarget("psnr_y", target=args.target_psnr)
    elif args.max_bitrate is not None:
        target = QroTarget("vmaf", max_bitrate_kbps=float(args.max_bitrate))
    else:
        target = None
    if target is not None and args.mode_select == "predict":
        from gopflow.qro.mode_predictor import ModePredictor, shipped_sha256

        trained_for = ModePredictor.load(sha256=shipped_sha256()).metric
        if trained_for != target.metric:
            option = "--target-" + trained_for.replace("_", "-")
            raise UsageError(f"the shipped mode predictor was trained on {trained_for} targets: "
                             f"use {option}, or --mode-select probe")
    if target is None:
        if args.decisions or args.save_decisions or args.precoder != "none":
            raise UsageError(
                "--decisions/--save-decisions/--precoder need a QRO target or --max-bitrate"
            )
        return None
    scales = tuple(sorted({parse_scale(part.strip()) for part in args.qro_scales.split(",")},
                          reverse=True))
    if Fraction(1) not in scales:
        scales = (Fraction(1), *scales)
    return QroSettings(
        target=target,
        probe_preset=args.probe_preset,
        scales=scales,
        half_rate=not args.no_half_rate,
        tolerance=args.qro_tolerance,
        max_reencodes=max(0, args.max_reencodes),
        precoder=args.precoder,
        mode_select=args.mode_select,
    )


def _restore(args: argparse.Namespace) -> int:
    from gopflow.jobs.restore import run_restore

    result = run_restore(args.input, args.output)
    print(
        f"wrote {result.output}: {result.frames} frames, {result.width}x{result.height}, "
        f"{float(result.fps):.3f} fps",
        file=sys.stderr,
    )
    return 0


def _decode(args: argparse.Namespace) -> int:
    from gopflow.jobs.decode import DecodeConfig, run_decode

    result = run_decode(
        DecodeConfig(
            input=args.input, output=args.output, registry=args.registry,
            workers=args.workers, ray_address=args.ray_address,
            progress=args.progress,
        )
    )
    print(
        f"wrote {result.output}: {result.frames} frames, {result.width}x{result.height}, "
        f"{float(result.fps):.3f} fps, {result.gops} GOPs, {result.wall_seconds:.1f} s",
        file=sys.stderr,
    )
    return 0


def _probe(args: argparse.Namespace) -> int:
    from gopflow.media.probe import probe

    print(json.dumps(probe(args.input).to_dict(), indent=2))
    return 0


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    # A polite kill (SIGTERM) stops a job like Ctrl-C: finished GOPs stay resumable.
    signal.signal(signal.SIGTERM, _terminated)
    # CompressAI scripts a helper with torch.jit at import: a deprecation note for its
    # maintainers, not for gopflow's users (who must see one-line messages only).
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script", category=FutureWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handlers = {
        "probe": _probe,
        "transcode": _transcode,
        "restore": _restore,
        "decode": _decode,
        "compare": run_compare,
        "train": run_train,
    }
    try:
        return handlers[args.command](args)
    except GopflowError as exc:
        if args.debug:
            raise
        print(f"gopflow: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("gopflow: interrupted; run again with --resume to continue", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"gopflow: internal error: {type(exc).__name__}: {exc} (rerun with --debug)",
            file=sys.stderr,
        )
        return 70


if __name__ == "__main__":
    raise SystemExit(main())
