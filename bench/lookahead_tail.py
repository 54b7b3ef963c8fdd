"""What the look-ahead tail buys: BD-rate of ``--lookahead-tail N`` against 0, and its cost.

Each GOP is a separate x264/x265 run; with a tail, the encoder also sees the next N frames
(then an IDR is forced and the stream cut there), so the GOP's last frames are planned as in
one long encode. This measures, per clip, the BD-rate (PSNR-Y) of each tail against no tail
over CRFs, and the frames encoded (the tail's CPU cost).

Usage::

    .venv/bin/python bench/lookahead_tail.py --tails 0,10 --crfs 19,23,27,31 \
        ../shared/media/white_flower_1280x720.264 ../shared/media/flower_960x540.mp4

One local Ray cluster serves every run. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import gopflow
from gopflow.pipeline.runner import RayRunner
from gopflow.quality.bd import bd_rate
from gopflow.quality.metrics import psnr_y


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clips", nargs="+")
    parser.add_argument("--tails", default="0,10")
    parser.add_argument("--crfs", default="19,23,27,31")
    parser.add_argument("--codec", default="x264")
    parser.add_argument("--preset", default="medium")
    parser.add_argument("--gop-seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    tails = [int(t) for t in args.tails.split(",")]
    crfs = [float(c) for c in args.crfs.split(",")]
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    rows = []
    with RayRunner(), tempfile.TemporaryDirectory(prefix="gopflow-tail-") as scratch:
        for clip in args.clips:
            points: dict[int, list[tuple[float, float]]] = {}
            seconds: dict[int, float] = {}
            for tail in tails:
                for crf in crfs:
                    out = os.path.join(scratch, f"t{tail}_c{crf:g}.mkv")
                    started = time.perf_counter()
                    report = gopflow.transcode(
                        clip, out, codec=args.codec, preset=args.preset, crf=crf,
                        lookahead_tail=tail, gop_seconds=args.gop_seconds, audio=False,
                        progress=False,
                    )
                    seconds[tail] = seconds.get(tail, 0.0) + time.perf_counter() - started
                    kbps = report.to_dict()["totals"]["bitrate_kbps"]
                    points.setdefault(tail, []).append((kbps, psnr_y(clip, out).mean_y))
                    print(f"{os.path.basename(clip)} tail {tail} crf {crf:g}: "
                          f"{points[tail][-1][0]:.1f} kbit/s, {points[tail][-1][1]:.3f} dB",
                          flush=True)
            base = tails[0]
            for tail in tails[1:]:
                ar, aq = zip(*points[base], strict=True)
                tr, tq = zip(*points[tail], strict=True)
                rate = bd_rate(ar, aq, tr, tq)
                rows.append((os.path.basename(clip), tail, rate, seconds[tail] / seconds[base]))
                print(f"{os.path.basename(clip)}: tail {tail} vs {base}: BD-rate {rate:+.2f}% "
                      f"(PSNR-Y), wall {seconds[tail] / seconds[base]:.2f}x; points "
                      f"{points[base]} / {points[tail]}", flush=True)
    print("\nclip                             tail  BD-rate vs 0   wall vs 0")
    for clip, tail, rate, wall in rows:
        print(f"{clip:32s} {tail:4d}  {rate:+11.2f}%  {wall:9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
