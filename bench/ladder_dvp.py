"""``gopflow ladder --precoder dvp`` against the same ladder with Lanczos, one clip.

TUNING SET: the clip comes from ``../shared/media``, where the ladder's settings were chosen
(and the DVP downscalers' training clips overlap it): in-sample figures, not unseen content.

Both ladders run with the same settings (``--preset``, everything else the job's defaults),
one after the other in this process, each a fresh local Ray cluster; wall and process-tree
CPU seconds as ``bench/ladder.py`` measures them. Each rung is measured as ``bench/ladder.py``
measures it: bitrate from the bytes of its CMAF init and media segments over the clip's
length, VMAF (v0.6.1, every frame) against the input after a bicubic upscale to its size,
and in the same libvmaf pass VMAF NEG (v0.6.1neg, "no enhancement gain"): DVP sharpens, which
plain VMAF rewards, so a gain seen only on VMAF is not a gain. BD-rate (PCHIP) of (bitrate,
VMAF) and of (bitrate, VMAF NEG) of the DVP ladder against the Lanczos one: negative means
fewer bits at equal display quality.

Usage::

    .venv/bin/python bench/ladder_dvp.py [--clip flower_960x540.mp4] [--seconds 8]
        [--preset medium]

Prints the rungs and the comparison; writes ``--out-dir/results.json``. Nothing here is a
test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from gopflow.errors import BdRateError
from gopflow.media.ffmpeg import find_ffmpeg
from gopflow.media.probe import probe
from gopflow.quality.bd import bd_rate
from ladder import MEDIA, ROOT, TUNING_NOTE, make_input, measure, per_title_points


def bd(reference: list[dict[str, Any]], test: list[dict[str, Any]], metric: str) -> float | str:
    try:
        return round(bd_rate([p["kbps"] for p in reference], [p[metric] for p in reference],
                             [p["kbps"] for p in test], [p[metric] for p in test],
                             method="pchip"), 1)
    except BdRateError as exc:
        return f"n/a ({exc})"


def run_ladder(source: Path, out: Path, preset: str, extra: list[str], log: Path,
               threads: int, seconds: float) -> dict[str, Any]:
    run = measure([sys.executable, "-m", "gopflow", "ladder", str(source), "-o", str(out),
                   "--preset", preset, "--no-progress", *extra], log)
    summary = json.loads((out / "ladder.json").read_text())
    with tempfile.TemporaryDirectory(prefix="ladder-dvp-", dir=out.parent) as scratch:
        points = per_title_points(source, out, seconds, threads, Path(scratch),
                                  ("vmaf", "vmaf_neg"))
    return {"run": run, "probe_s": summary.get("probe_seconds"),
            "phases": summary.get("phases"), "points": points,
            "probe_points": summary["points"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", default="flower_960x540.mp4",
                        help="a clip in ../shared/media (the tuning set)")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--preset", default="medium")
    parser.add_argument("--vmaf-threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "out" / "ladder_dvp")
    args = parser.parse_args(argv)
    clip = MEDIA / args.clip
    if not clip.is_file():
        print(f"error: no such clip in {MEDIA}: {args.clip}", file=sys.stderr)
        return 2
    print(TUNING_NOTE, flush=True)
    ffmpeg = find_ffmpeg().path
    source = make_input(ffmpeg, clip, args.seconds, ROOT / "bench" / "out" / "ladder" / "inputs")
    info = probe(str(source))
    seconds = info.frame_count / float(info.fps)
    work = args.out_dir / source.stem
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"{source.name}: {info.width}x{info.height}, {info.frame_count} frames", flush=True)
    results: dict[str, Any] = {"clip": args.clip, "input": str(source), "preset": args.preset,
                               "seconds": round(seconds, 3)}
    for name, extra in (("lanczos", []), ("dvp", ["--precoder", "dvp"])):
        results[name] = run_ladder(source, work / name, args.preset, extra,
                                   work / f"{name}.log", args.vmaf_threads, seconds)
        print(f"{name}: done", flush=True)
    for metric in ("vmaf", "vmaf_neg"):
        results[f"bd_rate_{metric}_pct"] = bd(results["lanczos"]["points"],
                                              results["dvp"]["points"], metric)
    (args.out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print()
    for name in ("lanczos", "dvp"):
        r = results[name]
        print(f"{name}: wall {r['run']['wall_s']:.1f} s, CPU {r['run']['cpu_s']:.1f} s, "
              f"probe wall {r['probe_s']:.1f} s")
        for p in r["points"]:
            print(f"  {p['width']}x{p['height']} ({p['downscale']}, CRF {p['crf']:.1f}): "
                  f"{p['kbps']:.0f} kbit/s, VMAF {p['vmaf']:.2f}, VMAF NEG {p['vmaf_neg']:.2f}")
    for metric in ("vmaf", "vmaf_neg"):
        value = results[f"bd_rate_{metric}_pct"]
        shown = f"{value:+.1f}%" if isinstance(value, float) else value
        print(f"BD-rate ({metric} at the source size), dvp against lanczos: {shown}")
    print(f"CPU ratio dvp/lanczos: "
          f"{results['dvp']['run']['cpu_s'] / results['lanczos']['run']['cpu_s']:.2f}x")
    print(TUNING_NOTE)
    print(f"JSON: {args.out_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
