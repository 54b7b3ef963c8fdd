"""``gopflow ladder``: flags -> :class:`~gopflow.jobs.config.LadderOptions` -> the job."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gopflow.jobs.config import LADDER_CODECS, PRECODERS, LadderOptions


def add_ladder_parser(commands: Any, epilog: str) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "ladder",
        help="build a per-title streaming ladder (HLS + DASH)",
        description=(
            "Build a per-title adaptive-streaming ladder of INPUT in the folder OUT. Probe "
            "encodes of representative GOPs over a grid of heights (no taller than the "
            "source) and CRFs are scored with VMAF at the source size; rungs are chosen "
            "along the upper convex hull of (bitrate, VMAF): the top near --top-vmaf, the "
            "bottom at --floor-bitrate, neighbours 1.5-2x apart, each at the height that "
            "wins at its bitrate. Every rung is encoded GOP by GOP on Ray from one GOP plan "
            "(IDRs at the same frames in every rung), CRF capped at twice its target rate, "
            "then packaged as CMAF segments of whole GOPs with an AAC audio rendition, an "
            "HLS v7 master playlist (master.m3u8) and a DASH manifest (manifest.mpd). "
            "OUT/ladder.json says which rungs were chosen and why."
        ),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("input", metavar="INPUT", help="video file")
    parser.add_argument("-o", "--output", dest="output_dir", required=True, metavar="OUT",
                        help="output folder (replaced as a whole when done)")
    rungs = parser.add_argument_group("rungs")
    rungs.add_argument("--codec", choices=LADDER_CODECS,
                       help="x264 (H.264) and svtav1 (AV1) play in browsers; x265 (HEVC, "
                       "hvc1) in native players (default: x264)")
    rungs.add_argument("--preset", help="encoder preset of the rungs (default: medium)")
    rungs.add_argument("--probe-preset", help="preset of the hull's probe encodes (default: "
                       "--preset; CRF->bitrate depends on it)")
    rungs.add_argument("--rungs", type=int, help="number of rungs (default: the fewest with "
                       "neighbours at most 2x apart)")
    rungs.add_argument("--max-height", type=int, help="tallest rung (default: the source's)")
    rungs.add_argument("--top-vmaf", type=float, help="VMAF of the top rung (95; with "
                       "--precoder dvp the hull is scored in VMAF NEG, and so is this)")
    rungs.add_argument("--floor-bitrate", help="bottom rung's bitrate (150k)")
    rungs.add_argument("--max-bitrate", help="top rung's bitrate at most this")
    rungs.add_argument("--precoder", choices=PRECODERS,
                       help="dvp: rungs below the source's height are downscaled by the "
                       "learned DVP downscalers (3/4, 2/3, 1/2; below 1/2: DVP 1/2, then "
                       "Lanczos), probes included; players upscale linearly, as DVP assumes. "
                       "vistra is refused (it needs a restoring decoder) (default: none)")
    pack = parser.add_argument_group("packaging")
    pack.add_argument("--segment-seconds", type=float,
                      help="segment length; GOPs are at most half of it (4)")
    pack.add_argument("--no-audio", dest="audio", action="store_false",
                      help="no audio rendition")
    pack.add_argument("--no-scene-detect", dest="scene_detect", action="store_false",
                      help="fixed-length GOPs")
    pack.add_argument("--scene-threshold", type=float, help="ffmpeg scdet threshold (10)")
    run = parser.add_argument_group("execution")
    run.add_argument("--ray-address", help="existing Ray cluster (default: a local one)")
    run.add_argument("--workers", type=int, help="GOPs encoded at once (default: cluster CPUs)")
    run.add_argument("--retries", type=int, help="retries per failed GOP (2)")
    run.add_argument("--work-dir", help="work directory root")
    run.add_argument("--resume", action="store_true", help="reuse GOPs of an earlier run")
    run.add_argument("--keep-work", action="store_true", help="keep the work dirs")
    out = parser.add_argument_group("reporting")
    out.add_argument("--report", help="write the ladder's JSON report (also OUT/ladder.json)")
    out.add_argument("--plot", metavar="PNG", help="plot the probe curves, hull and rungs")
    out.add_argument("--progress", action=argparse.BooleanOptionalAction,
                     help="progress bar (default: when stderr is a terminal)")
    return parser


def run_ladder_command(args: argparse.Namespace) -> int:
    from gopflow.jobs.ladder import run_ladder

    fields = set(LadderOptions.__dataclass_fields__)
    given = {name: value for name, value in vars(args).items() if name in fields}
    config = LadderOptions(**given).resolve(args.input, args.output_dir)
    report = run_ladder(config, log=lambda message: print(message, file=sys.stderr))
    made = report.downscale or ("",) * len(report.ladder.rungs)
    for rung, track, how in zip(report.ladder.rungs, report.packaged.video, made, strict=True):
        scaled = f" ({how})" if how not in ("", "none") else ""
        print(f"  {track.name}: {rung.width}x{rung.height}{scaled}, target {rung.kbps:.0f} kbit/s, "
              f"measured average {track.average_kbps:.0f}, peak {track.peak_kbps:.0f} kbit/s, "
              f"{'VMAF NEG' if config.hull_metric == 'vmaf_neg' else 'VMAF'} ~{rung.vmaf:.1f}",
              file=sys.stderr)
    print(f"wrote {report.output_dir}: {len(report.ladder.rungs)} rungs, master.m3u8, "
          f"manifest.mpd ({report.wall_seconds:.1f} s)", file=sys.stderr)
    return 0
