"""``gopflow train``: flags -> training configs -> the jobs in :mod:`gopflow.training`.

Subcommands: ``precoder`` (:func:`gopflow.training.precoders.run_training`),
``mode-predictor`` (:func:`gopflow.training.mode.run_mode_training`), ``codec``
(:func:`gopflow.training.codecs.run_codec_training`) and ``evaluate``
(:func:`gopflow.training.evaluate.evaluate_model`). Results go to stdout (JSON or a report
table), progress and notes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from fractions import Fraction
from typing import Any

from gopflow.codecs.learned.api import CODEC_NAMES
from gopflow.errors import UsageError
from gopflow.fileio import atomic_write_json
from gopflow.training.codecs import DEFAULT_LAMBDAS
from gopflow.training.precoders import KINDS


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def _progress(args: argparse.Namespace) -> bool:
    """``--progress``/``--no-progress``, else a bar only when stderr is a terminal."""
    return args.progress if args.progress is not None else sys.stderr.isatty()


# ----------------------------------------------------------------------------- argument types
def _scale_arg(text: str) -> str:
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a scale: {text!r} (e.g. 3/4)") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError("scale must be in (0, 1)")
    return str(value)


def _steps_arg(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a step count: {text!r} (e.g. 800, or 200,800 per stage)") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError("step counts must be positive")
    return values


def _stages_arg(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_lambdas(text: str) -> tuple[float, ...]:
    """``"0.0018,0.0035"`` -> ``(0.0018, 0.0035)``."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--lmbda must be comma-separated numbers, got {text!r}") from None


# ----------------------------------------------------------------------------- parsers
def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``train precoder``, ``mode-predictor``, ``codec`` and ``evaluate`` to the CLI."""
    parser = subparsers.add_parser(
        "train",
        help="train or evaluate the learned precoders and codecs (CPU)",
        description="Train the learned precoders (Deep Video Precoding downscalers, ViSTRA "
        "up-samplers and frame interpolator) on CPU, or evaluate a registered model on "
        "held-out clips against plain resampling.",
    )
    sub = parser.add_subparsers(dest="train_command", metavar="WHAT", required=True)
    pre = sub.add_parser(
        "precoder",
        help="train one learned precoder",
        description="Train a learned precoder on the video files in --data (random crops of "
        "decoded luma, through a differentiable H.264-like codec proxy). Writes NAME.pt, "
        "NAME.json (metadata), NAME-loss.png and a checkpoint into --out.",
    )
    add_mode_parser(sub)
    add_codec_parser(sub)
    pre.add_argument("--kind", required=True, choices=KINDS)
    pre.add_argument("--data", required=True, metavar="DIR", help="directory of video clips")
    pre.add_argument("--scale", type=_scale_arg, default="1/2",
                     help="spatial scale (dvp, vistra-up): 3/4, 2/3, 1/2 (default 1/2)")
    pre.add_argument("--steps", type=int, default=2000, help="optimiser steps (2000)")
    pre.add_argument("--out", default="train-out", metavar="DIR", help="output dir (train-out)")
    pre.add_argument("--seed", type=int, default=0, help="random seed (0)")
    pre.add_argument("--crop", type=int, default=128, help="luma crop size in pixels (128)")
    pre.add_argument("--batch", type=int, default=16, help="crops per step (16)")
    pre.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (2e-3)")
    pre.add_argument("--rate-weight", type=float, default=0.0,
                     help="dvp: weight of the proxy's bits-per-pixel term (0)")
    pre.add_argument("--msssim-weight", type=float, default=1.0,
                     help="weight of (1 - MS-SSIM) next to L1 (1)")
    pre.add_argument("--qp-min", type=float,
                     help="lowest proxy QP (default: 10 vistra-up, else 20)")
    pre.add_argument("--qp-max", type=float,
                     help="highest proxy QP (default: 38 vistra-up, else 40)")
    pre.add_argument("--proxy", choices=["noise", "round", "x264"],
                     help="proxy quantisation while training: additive noise (default) or "
                     "rounding with a dead zone (default for vistra-up); x264: vistra-up "
                     "inputs really Lanczos-downscaled and coded by x264 (CRF range: "
                     "--qp-min/--qp-max, default 18-45)")
    pre.add_argument("--base", choices=["bicubic", "lanczos"],
                     help="dvp: the plain downscale the learned residual is added to "
                     "(default bicubic: antialiased; lanczos: swscale's Lanczos-3)")
    pre.add_argument("--init", metavar="NAME",
                     help="start from the registered model NAME (fine-tune) instead of the "
                     "plain resampler")
    pre.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    pre.add_argument("--checkpoint-every", type=int, default=100, help="steps (100)")
    pre.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    pre.add_argument("--install", action="store_true",
                     help="register the result in the weights registry (see --registry)")
    pre.add_argument("--registry", metavar="DIR",
                     help="weights registry directory (default: the one inside gopflow)")
    pre.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar (default: when stderr is a terminal)")
    ev = sub.add_parser(
        "evaluate",
        help="compare a registered model with plain resampling on held-out clips",
        description="PSNR-Y after the codec proxy and after real x264 encodes, learned vs "
        "Lanczos/bicubic (dvp), vs bicubic up-sampling (vistra-up), vs average and frame "
        "repetition (vistra-interp).",
    )
    ev.add_argument("--model", required=True, help="registry name, e.g. dvp-3_4")
    ev.add_argument("--clips", nargs="+", required=True, metavar="FILE")
    ev.add_argument("--frames", type=int, default=16, help="frames per clip (16)")
    ev.add_argument("--crf", type=float, nargs="+", default=[23, 28, 33, 38])
    ev.add_argument("--preset", default="medium")
    ev.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    ev.add_argument("--registry", metavar="DIR",
                    help="weights registry directory (default: the one inside gopflow)")
    ev.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    return parser


def add_mode_parser(sub: Any) -> None:
    """Add ``train mode-predictor`` to ``gopflow train``'s subcommands."""
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


def add_codec_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``train codec`` to ``gopflow train``'s subcommands."""
    parser = subparsers.add_parser(
        "codec",
        help="train a learned video codec (intra, dvc, fvc)",
        description="Train one variable-rate learned codec on RGB crops of the clips in "
        "--data (staged; P-frame models use the installed codec-intra as reference). "
        "Writes codec-MODEL.pt, .json (metadata with real-bytes bpp/PSNR per level), "
        "-loss.png and a checkpoint into --out.",
    )
    parser.add_argument("--model", required=True, choices=CODEC_NAMES)
    parser.add_argument("--lmbda", default=",".join(map(str, DEFAULT_LAMBDAS)),
                        metavar="L1,L2,..",
                        help="lambda per quality level, increasing (default: "
                        f"{','.join(map(str, DEFAULT_LAMBDAS))}; with --init, levels whose "
                        "lambda the installed model lacks start from resampled gains)")
    parser.add_argument("--data", required=True, action="append", metavar="DIR",
                        help="directory of video clips (repeatable)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=_steps_arg, default=(1000,),
                        help="steps per stage: N, or N1,N2 for each stage (1000)")
    budget.add_argument("--minutes", type=float, help="wall-clock budget instead of --steps")
    parser.add_argument("--crop", type=int, default=128, help="crop size, multiple of 64 (128)")
    parser.add_argument("--batch", type=int, default=8, help="samples per step (8)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (1e-3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--out", default="train-out", metavar="DIR", help="output dir (train-out)")
    parser.add_argument("--checkpoint-minutes", type=float, default=3.0,
                        help="minutes between checkpoints (3)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--init", action="store_true",
                        help="start from the installed codec-MODEL weights (fine-tune) "
                        "instead of a random initialisation")
    parser.add_argument("--frames", type=int, metavar="N",
                        help="dvc/fvc: P frames unrolled per training sample, each predicted "
                        "from the previous reconstruction (default 2); more frames train "
                        "against drift over a GOP")
    parser.add_argument("--stride", type=int, default=1, metavar="N",
                        help="dvc/fvc: the frames of a training sample are s source frames "
                        "apart, s drawn from 1..N per sample (larger motion; default 1)")
    parser.add_argument("--stages", type=_stages_arg, metavar="S1,S2",
                        help="stages to run, in order (default: all of the model's: intra "
                        "rd; dvc motion,rd; fvc align,rd); dvc also has residual, a "
                        "fine-tune of the residual coder on frozen motion (needs --init)")
    parser.add_argument("--stop-after", type=int, metavar="N",
                        help="finish after N steps of the schedule (evaluate and write the "
                        "weights; --resume later continues the schedule)")
    parser.add_argument("--install", action="store_true",
                        help="register the result in the weights registry (see --registry)")
    parser.add_argument("--registry", metavar="DIR",
                        help="weights registry: where codec-intra is read from and --install "
                        "writes (default: the one inside gopflow)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar (default: when stderr is a terminal)")
    return parser


# ----------------------------------------------------------------------------- handlers
def run_train(args: argparse.Namespace) -> int:
    """``gopflow train WHAT``: run the job ``args.train_command`` names; 0 on success."""
    if args.train_command == "mode-predictor":
        return _run_mode(args)
    if args.train_command == "codec":
        return _run_codec(args)
    if args.train_command == "evaluate":
        return _run_evaluate(args)
    return _run_precoder(args)


def _run_precoder(args: argparse.Namespace) -> int:
    from gopflow.training.precoders import TrainConfig, install, run_training

    progress = _progress(args)
    config = TrainConfig(
        kind=args.kind, data_dir=args.data, scale=args.scale, steps=args.steps,
        out_dir=args.out, seed=args.seed, crop=args.crop, batch=args.batch, lr=args.lr,
        rate_weight=args.rate_weight, msssim_weight=args.msssim_weight,
        threads=args.threads, checkpoint_every=args.checkpoint_every,
        qp_min=args.qp_min, qp_max=args.qp_max, proxy=args.proxy, init=args.init,
        arch={"base": args.base} if args.base else {},
    )
    result = run_training(config, resume=args.resume, progress=progress, log=_log)
    if args.install:
        install(result, args.registry)
        _log(f"installed {result.name} in the weights registry")
    print(json.dumps(asdict(result), indent=2))
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from gopflow.training.evaluate import evaluate_model, format_report

    report = evaluate_model(args.model, args.clips, frames=args.frames, crfs=args.crf,
                            preset=args.preset, threads=args.threads,
                            registry_dir=args.registry, log=_log)
    print(format_report(report))
    if args.json:
        atomic_write_json(args.json, report)
    return 0


def _run_codec(args: argparse.Namespace) -> int:
    from gopflow.training.codecs import CodecTrainConfig, install_codec, run_codec_training

    config = CodecTrainConfig(
        model=args.model, data_dirs=tuple(args.data), lmbdas=parse_lambdas(args.lmbda),
        steps=tuple(args.steps), minutes=args.minutes, crop=args.crop, batch=args.batch,
        lr=args.lr, threads=args.threads, seed=args.seed, out_dir=args.out,
        registry=args.registry, checkpoint_minutes=args.checkpoint_minutes, init=args.init,
        frames=args.frames, stride=args.stride, stages=args.stages,
    )
    result = run_codec_training(config, resume=args.resume, progress=_progress(args),
                                log=_log, stop_after=args.stop_after)
    if args.install:
        install_codec(result, args.registry)
        _log(f"installed {result.name} in the weights registry")
    print(json.dumps(asdict(result), indent=2))
    return 0


def _run_mode(args: argparse.Namespace) -> int:
    from gopflow.training.mode import ModeTrainConfig, run_mode_training

    targets = tuple(float(t) for t in args.targets.split(",") if t.strip())
    config = ModeTrainConfig(data_dir=args.data, targets=targets, metric=args.metric,
                             precoder=args.precoder, out=args.out, install=args.install)
    result = run_mode_training(config, log=_log)
    _log(f"wrote {result.path}: {result.samples} GOP samples, sha256 {result.sha256}")
    return 0
