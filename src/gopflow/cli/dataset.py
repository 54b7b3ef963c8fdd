"""``gopflow dataset``: compress videos into a GOP-indexed archive, describe, read, verify."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from gopflow.cli.transcode import add_progress_option
from gopflow.errors import CorruptInputError, UsageError
from gopflow.jobs.config import TranscodeOptions


def add_dataset_parser(commands: Any, epilog: str, parser_class: Any) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "dataset",
        help="compress videos into a GOP-indexed archive; read clips from it",
        description=(
            "A video dataset as a GOP-indexed archive (a .gfd folder): short closed GOPs "
            "in shards, a Parquet index and a dataset card, so a clip decodes only the GOPs "
            "that cover it. From Python: gopflow.dataset.open(ROOT).read(video, start, n), "
            ".to_torch(clip_len), .to_ray(clip_len)."
        ),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="dataset_command", metavar="ACTION",
                                    parser_class=parser_class)
    compress = actions.add_parser(
        "compress", help="compress videos (files, folders, globs) into an archive",
        description="Compress every INPUT into the archive OUT (created, or appended to: "
        "videos already in it are skipped, other settings are refused). Runs GOP-parallel "
        "on Ray like gopflow batch; --resume after a crash reuses finished GOPs.",
        argument_default=argparse.SUPPRESS,
    )
    compress.add_argument("inputs", nargs="+", metavar="INPUT")
    compress.add_argument("-o", "--output", dest="output_dir", required=True, metavar="OUT")
    for flag, kind, text in (
        ("--codec", str, "x264, x265, svtav1, ffv1 (lossless), or a learned codec: dvc, fvc, "
         "intra (default: x264)"),
        ("--crf", float, "quality (default: the codec's)"),
        ("--quality", int, "learned codecs: quality level 1 (lowest rate) .. 7 (default: 4)"),
        ("--preset", str, "encoder preset (default: medium)"),
        ("--height", int, "scale down to this height"),
        ("--gop-seconds", float, "longest GOP: the unit a read decodes (default: 1.0)"),
        ("--min-gop-seconds", float, "shortest GOP at a scene cut (default: 0.25)"),
        ("--ray-address", str, "existing Ray cluster"),
        ("--workers", int, "GOPs coded at once"),
        ("--work-dir", str, "work directory root (default: OUT/.gopflow-work)"),
    ):
        compress.add_argument(flag, type=kind, help=text)
    compress.add_argument("--resume", action="store_true", help="reuse finished GOPs")
    add_progress_option(compress)
    info = actions.add_parser("info", help="videos, frames, size, ratio")
    info.add_argument("root", metavar="ARCHIVE")
    info.add_argument("--json", action="store_true", help="the card and per-video totals")
    read = actions.add_parser("read", help="write frames of one video as .y4m")
    read.add_argument("root", metavar="ARCHIVE")
    read.add_argument("--video", required=True)
    read.add_argument("--frames", required=True, metavar="START:END",
                      help="frames START to END-1")
    read.add_argument("-o", "--output", required=True, help="a .y4m file")
    verify = actions.add_parser("verify", help="check every GOP's hash and that it decodes")
    verify.add_argument("root", metavar="ARCHIVE")
    return parser


def run_dataset_command(args: argparse.Namespace) -> int:
    action = getattr(args, "dataset_command", None)
    if action == "compress":
        from gopflow.jobs.dataset import compress

        fields = set(TranscodeOptions.__dataclass_fields__)
        given = {name: value for name, value in vars(args).items() if name in fields}
        given.setdefault("gop_seconds", 1.0)
        given.setdefault("min_gop_seconds", 0.25)
        card = compress(args.inputs, args.output_dir, TranscodeOptions(**given),
                        log=lambda message: print(message, file=sys.stderr))
        print(_summary(card), file=sys.stderr)
        return 0
    from gopflow.dataset import open as open_dataset

    if action == "info":
        dataset = open_dataset(args.root)
        if args.json:
            videos = {v: dataset.frames(v) for v in dataset.videos}
            quality = {v: _psnr_json(dataset.quality(v)) for v in dataset.videos}
            print(json.dumps({**dataset.card, "frames_per_video": videos,
                              "psnr_y_per_video": quality}, indent=2))
        else:
            print(_summary(dataset.card))
            for video in dataset.videos:
                print(f"  {video}: {dataset.frames(video)} frames, "
                      f"{_psnr_text(dataset.quality(video))}")
        return 0
    if action == "read":
        start, _, end = args.frames.partition(":")
        try:
            first, last = int(start), int(end)
        except ValueError:
            raise UsageError(f"--frames {args.frames!r}: give START:END") from None
        dataset = open_dataset(args.root)
        frames = dataset.read(args.video, first, last - first)
        from gopflow.fileio import atomic_write
        from gopflow.media.y4m import y4m_frame, y4m_header

        def write(handle: Any) -> None:
            handle.write(y4m_header(frames.shape[2], frames.shape[1], dataset.fps(args.video)))
            for frame in frames:
                handle.write(y4m_frame(frame))

        atomic_write(args.output, write)
        print(f"wrote {args.output}: {len(frames)} frames", file=sys.stderr)
        return 0
    if action == "verify":
        dataset = open_dataset(args.root)
        bad = [(row, problem) for row, problem in dataset.verify() if problem]
        for row, problem in bad:
            print(f"{row.video_id} GOP {row.gop_index}: {problem}", file=sys.stderr)
        if bad:
            raise CorruptInputError(f"{len(bad)} of {len(dataset.rows)} GOPs are damaged")
        print(f"ok: {len(dataset.rows)} GOPs of {len(dataset.videos)} videos", file=sys.stderr)
        return 0
    raise UsageError("name an action: compress, info, read or verify")


def _psnr_text(quality: tuple[float, float] | None) -> str:
    if quality is None:
        return "quality not measured"
    pooled, worst = quality
    if math.isinf(worst):
        return "lossless (every GOP decodes to exactly the frames coded)"
    return f"PSNR-Y {pooled:.2f} dB (worst GOP {worst:.2f} dB)"


def _psnr_json(quality: tuple[float, float] | None) -> dict[str, Any] | None:
    """JSON has no infinity: an exact value is null with ``"exact": true``."""
    if quality is None:
        return None
    pooled, worst = quality
    return {"pooled": None if math.isinf(pooled) else round(pooled, 4),
            "worst_gop": None if math.isinf(worst) else round(worst, 4),
            "exact": math.isinf(worst)}


def _ratio_text(ratio: float) -> str:
    """How the archive compares with its sources (a lossless one is often larger)."""
    if ratio >= 1 or ratio == 0:
        return f"{ratio:.1f}x smaller than the sources"
    return f"{1 / ratio:.1f}x the sources' size"


def _summary(card: dict[str, Any]) -> str:
    from gopflow.jobs.dataset import settings_text

    ratio = card["source_bytes"] / card["bytes"] if card.get("bytes") else 0.0
    return (f"{card['videos']} videos, {card['gops']} GOPs, {card['frames']} frames, "
            f"{card['bytes'] / 1e6:.2f} MB ({_ratio_text(ratio)}), {settings_text(card)}")
