"""The ``gopflow`` command line: argument parsing only; the jobs live in :mod:`gopflow.jobs`.

Errors gopflow raises on purpose, and bad flag values, print as one line on stderr with a
non-zero exit status; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

from gopflow import __version__
from gopflow.cli.batch import add_batch_parser, run_batch_command
from gopflow.cli.compare import add_compare_parser, run_compare
from gopflow.cli.dataset import add_dataset_parser, run_dataset_command
from gopflow.cli.ladder import add_ladder_parser, run_ladder_command
from gopflow.cli.train import add_train_parser, run_train
from gopflow.cli.transcode import add_transcode_parser, run_transcode_command
from gopflow.errors import GopflowError

EPILOG = """examples:
  gopflow probe input.mp4
  gopflow transcode input.mp4 -o out.mp4 --codec x264 --crf 20 --preset medium
  gopflow transcode input.mkv -o out.mkv --codec x265 --bitrate 3000 --report report.json
  gopflow transcode input.mp4 -o out.mp4 --ray-address 10.0.0.5:6379   # existing cluster
  gopflow transcode input.mp4 -o out.mp4 --resume                      # after a crash/Ctrl-C
  gopflow transcode input.mp4 -o out.mkv --target-vmaf 93 --report r.json --plot r.png
  gopflow batch videos/ -o out/ --codec x265 --crf 24                  # every video under videos/
  gopflow batch videos/ -o out/ --resume                                # after a crash/Ctrl-C
  gopflow ladder input.mp4 -o ladder/ --codec x264 --plot hull.png      # HLS + DASH ladder
  gopflow dataset compress clips/ -o clips.gfd/ --codec x265 --crf 22   # GOP-indexed archive
  gopflow dataset read clips.gfd/ --video street_01 --frames 120:136 -o clip.y4m
  gopflow restore out.mkv -o viewer.mkv                                 # full size and rate
  gopflow transcode input.mp4 -o out.gflv --codec dvc --quality 4      # learned codec
  gopflow decode out.gflv -o decoded.y4m                                # exact frames
  gopflow train precoder --kind dvp --scale 3/4 --data ../shared/media/train --steps 900
  gopflow train evaluate --model dvp-3_4 --clips ../shared/media/white_flower_1280x720.264
"""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``gopflow: error: ...``), not the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"gopflow: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gopflow",
        description=(
            "GOP-parallel video preprocessing and transcoding on Ray. A video is cut into "
            "closed, scene-aligned GOPs; Ray workers decode and encode each GOP with "
            "x264/x265 (through ffmpeg) or a learned codec; the GOPs are joined into one file "
            "with the source's audio."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gopflow {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks instead of one-line errors"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

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
    add_transcode_parser(commands, EPILOG)
    add_batch_parser(commands, EPILOG)
    add_ladder_parser(commands, EPILOG)
    add_dataset_parser(commands, EPILOG, _Parser)
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
    demo = commands.add_parser(
        "demo",
        help="transcode a clip (or a generated one) and show what came out",
        description="What `make demo` runs: transcode INPUT (default: a generated 10 s 720p "
        "clip with a scene change and a tone) on a local Ray cluster and print the output's "
        "size, rate, frames, audio, bitrate and PSNR-Y.",
    )
    demo.add_argument("--input", help="video to transcode (default: a generated clip)")
    demo.add_argument("--out-dir", default="demo-output", help="where to write (demo-output)")
    demo.add_argument("--codec", default="x264", choices=["x264", "x265"])
    demo.add_argument("--crf", type=float, default=20.0)
    add_compare_parser(commands)
    add_train_parser(commands)
    return parser


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
    from gopflow.jobs.decode import decode

    result = decode(args.input, args.output, registry=args.registry, workers=args.workers,
                    ray_address=args.ray_address, progress=args.progress)
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


def _demo(args: argparse.Namespace) -> int:
    from gopflow.jobs.demo import run_demo

    print(run_demo(args.input, args.out_dir, args.codec, args.crf,
                   say=lambda message: print(message, file=sys.stderr)))
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
        "transcode": run_transcode_command,
        "batch": run_batch_command,
        "ladder": run_ladder_command,
        "dataset": run_dataset_command,
        "restore": _restore,
        "decode": _decode,
        "demo": _demo,
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
        # Every finished GOP is already on disk and the cluster is down (the runner's context
        # exited): end here rather than in the interpreter's teardown, where Ray's and PyAV's
        # native threads, stopped mid-job, could still crash the process after the message.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    except BrokenPipeError:
        # The reader of our output went away (``gopflow probe x | head``): not an error of
        # ours. Point stdout at /dev/null so the interpreter's final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"gopflow: internal error: {type(exc).__name__}: {exc} (rerun with --debug)",
            file=sys.stderr,
        )
        return 70
