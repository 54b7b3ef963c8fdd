"""What the ladder's probe costs, and what its cost cuts change: the probe of ``gopflow
ladder`` (the job's GOP plan and representative GOPs, x264, 2 workers of 1 thread) run three
ways on one input: every grid point with VMAF on every frame; every point with VMAF on every
3rd frame (the default); and the walk over the grid that a ladder runs (the default). Prints
wall seconds, CPU seconds of the probe's child processes (ffmpeg encodes and libvmaf), the
points measured and the rungs :func:`choose_rungs` picks from each.

Usage::

    .venv/bin/python bench/ladder_probe.py INPUT [--preset veryfast]

Settings were chosen on flower_960x540 from ``../shared/media`` (the tuning set).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time

from gopflow.jobs.config import LadderOptions
from gopflow.jobs.ladder import _probe_ranges
from gopflow.media.probe import probe_with_timestamps
from gopflow.pipeline.plan import plan_video
from gopflow.quality.hull import choose_rungs
from gopflow.quality.ladder_probe import probe_grid

VARIANTS = {
    "full grid, VMAF every frame": {"vmaf_subsample": 1},
    "full grid, VMAF every 3rd frame": {},
    "walk, VMAF every 3rd frame (the job's)": {"floor_kbps": 150, "top_vmaf": 95.0},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input")
    parser.add_argument("--preset", default="veryfast")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        config = LadderOptions(preset=args.preset).resolve(args.input, folder + "/out")
    info, stamps = probe_with_timestamps(args.input)
    ranges = _probe_ranges(plan_video(info, config.plan, stamps))
    print(f"{args.input}: {info.width}x{info.height}, {info.frame_count} frames; probe ranges "
          f"(first frame, frames) {ranges}; x264 {args.preset}")
    for name, options in VARIANTS.items():
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        result = probe_grid(args.input, ranges, codec="x264", preset=args.preset, workers=2,
                            threads=1, keyint=config.plan.keyint(info), **options)  # type: ignore[arg-type]
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        rungs = choose_rungs(result.points, source_height=info.height).rungs
        print(f"- {name}: {len(result.points)} points, wall {wall:.1f} s, child CPU "
              f"{cpu:.1f} s; rungs " + ", ".join(
                  f"{r.height}p {r.kbps:.0f}k CRF {r.crf:.1f}" for r in rungs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
