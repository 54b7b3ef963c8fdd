"""Benchmark ``gopflow ladder`` (per-title) against the fixed H.264 ladder of Apple's HLS
authoring guidelines, encoded by one plain ffmpeg with x264 at the same preset.

TUNING SET: the default clips come from ``../shared/media``, where the ladder's settings were
chosen (the probe CRF grid on flower_960x540, the probe's VMAF subsampling, the walk over the
grid). These are in-sample figures, not unseen content.

Per clip (``--seconds`` cut, x264 CRF 10 "camera file", a 300 Hz AAC tone added where the clip
has no audio; cached under ``--out-dir/inputs``), one after the other in this process:

* ``ladder``: ``gopflow ladder INPUT -o OUT --preset P`` (a fresh local Ray cluster: its
  start-up is part of the cost);
* ``fixed``: one plain ffmpeg decoding the input once and encoding every rung of the fixed
  ladder (416x234 145k, 640x360 365k, 768x432 730k and 1100k, 960x540 2000k, 1280x720 3000k
  and 4500k, 1920x1080 6000k and 7800k; only rungs no taller than the source; the width from
  the source's aspect) with x264 at preset P: average bitrate with the same cap the ladder's
  rungs have (``maxrate`` 2x, ``bufsize`` 4x), Lanczos down-scaling, 2 s closed GOPs without
  scene-cut key frames, plus the AAC audio once.

Both ladders are measured the same way: a rung's bitrate is the bytes of its video files
(the fixed rung's MP4; the per-title rung's CMAF init and media segments) over the clip's
duration; its quality is VMAF (v0.6.1, every frame) against the input after a bicubic
upscale to the input's size, as a player shows it. BD-rate (PCHIP) of (bitrate, VMAF) of
the per-title ladder against the fixed one: negative means fewer bits at equal quality.

Compute: wall seconds, and CPU seconds (user + system) of each command's whole process tree
(``bench/proctree.py``: a cgroup per command, so every descendant counts, Ray's daemons and
workers and the ffmpeg encoders, whoever reaps them). The goal of
issue 28: at least 20% fewer bits at equal quality, in at most 3x the fixed ladder's compute.

Usage::

    .venv/bin/python bench/ladder.py [--clips flower_960x540.mp4,car_traffic_768x432.mp4:30]
        [--seconds 8] [--preset medium]

Prints a table and writes ``--out-dir/results.json``. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from gopflow.errors import BdRateError
from gopflow.media.ffmpeg import find_ffmpeg
from gopflow.media.probe import probe
from gopflow.quality.bd import bd_rate
from gopflow.quality.vmaf import vmaf_scores
from proctree import CpuGroup

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT.parent / "shared" / "media"
DEFAULT_CLIPS = (
    "flower_960x540.mp4",  # nature close-up, camera motion
    "his_girl_friday_640x480.mp4",  # 1940 film: faces, grain
    "car_traffic_768x432.mp4",  # fixed camera, traffic (12.5 fps)
    "white_flower_1280x720.264",  # fine detail, slow drift
    "car_traffic_768x432.mp4:30",  # the same clip at 30 s: the probe's share on a longer title
)
FIXED_LADDER = (  # (height, kbit/s): Apple's HLS authoring guidelines, H.264
    (234, 145), (360, 365), (432, 730), (432, 1100), (540, 2000),
    (720, 3000), (720, 4500), (1080, 6000), (1080, 7800),
)
TUNING_NOTE = ("tuning set: ../shared/media chose the ladder's settings (probe CRF grid on "
               "flower_960x540): in-sample figures")


def _even(value: float) -> int:
    return max(2, round(value / 2) * 2)


def make_input(ffmpeg: str, clip: Path, seconds: float, folder: Path) -> Path:
    """The first ``seconds`` of ``clip`` as x264 CRF 10 with AAC (the clip's own audio, or a
    300 Hz tone)."""
    out = folder / f"{clip.stem}_{seconds:g}s.mp4"
    if out.exists():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    info = probe(str(clip))
    audio = ["-map", "0:a:0"] if info.audio else [
        "-f", "lavfi", "-i", "sine=frequency=300:sample_rate=48000", "-map", "1:a"]
    inputs = ["-i", str(clip)]
    if audio[0] == "-f":
        inputs += audio[:4]
        audio = audio[4:]
    command = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *inputs,
               "-t", f"{seconds:g}", "-map", f"0:{info.stream_index}", *audio,
               "-c:v", "libx264", "-preset", "veryfast", "-crf", "10", "-pix_fmt", "yuv420p",
               "-c:a", "aac", "-b:a", "128k", "-shortest", str(out) + ".part.mp4"]
    subprocess.run(command, check=True)
    os.replace(str(out) + ".part.mp4", out)
    return out


def fixed_rungs(width: int, height: int) -> list[tuple[int, int, int]]:
    """(width, height, kbit/s) of the fixed ladder's rungs no taller than the source."""
    return [(_even(h * width / height), h, kbps) for h, kbps in FIXED_LADDER if h <= height]


def fixed_command(ffmpeg: str, source: Path, info: Any, rungs: list[tuple[int, int, int]],
                  preset: str, folder: Path) -> list[str]:
    """One ffmpeg: decode once, every rung scaled and encoded, AAC once."""
    keyint = max(1, round(2 * float(info.fps)))
    split = "".join(f"[s{i}]" for i in range(len(rungs)))
    graph = f"[0:v:0]split={len(rungs)}{split}" + "".join(
        f";[s{i}]scale={w}:{h}:flags=lanczos[o{i}]" for i, (w, h, _) in enumerate(rungs))
    command = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
               "-i", str(source), "-filter_complex", graph]
    for i, (_, h, kbps) in enumerate(rungs):
        command += ["-map", f"[o{i}]", "-c:v", "libx264", "-preset", preset,
                    "-b:v", f"{kbps}k", "-maxrate", f"{2 * kbps}k", "-bufsize", f"{4 * kbps}k",
                    "-g", str(keyint), "-keyint_min", str(keyint), "-sc_threshold", "0",
                    "-pix_fmt", "yuv420p", "-an", str(folder / f"{h}p_{kbps}k.mp4")]
    if info.audio:
        command += ["-map", "0:a:0", "-c:a", "aac", "-b:a", "128k", "-vn",
                    str(folder / "audio.m4a")]
    return command


# ------------------------------------------------------------------ measuring a process tree


def measure(command: list[str], log: Path) -> dict[str, Any]:
    """Run ``command``; its wall seconds and the CPU seconds of its whole process tree."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    group = CpuGroup()
    load = os.getloadavg()[0]
    with open(log, "w") as sink:
        start = time.perf_counter()
        done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=sink,
                              stderr=subprocess.STDOUT, env=env, preexec_fn=group.preexec)
        wall = time.perf_counter() - start
    leftovers = group.remove(grace=30.0)
    cpu = group.seconds()
    if done.returncode != 0:
        raise SystemExit(f"{command[0]} failed (exit {done.returncode}); see {log}")
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load_before": round(load, 2),
            "leftovers": leftovers}


# ------------------------------------------------------------------ rate and quality


def rung_point(source: Path, video: Path, files: list[Path], seconds: float,
               threads: int, models: tuple[str, ...] = ("vmaf",)) -> dict[str, Any]:
    """Bitrate from the bytes of ``files``; each of ``models`` (VMAF, VMAF NEG) of ``video``
    at the source size."""
    size = sum(f.stat().st_size for f in files)
    scores = vmaf_scores(str(source), str(video), models, scale=True, threads=threads)
    summary = scores.summary()
    info = probe(str(video))
    return {"width": info.width, "height": info.height, "bytes": size,
            "kbps": round(size * 8 / seconds / 1000, 1),
            **{model: round(summary[model].mean, 3) for model in models},
            "frames": scores.frames}


def per_title_points(source: Path, out: Path, seconds: float, threads: int,
                     scratch: Path, models: tuple[str, ...] = ("vmaf",)) -> list[dict[str, Any]]:
    """Each rung of the ladder in ``out``, measured by :func:`rung_point` on its CMAF init
    and media segments joined, with how ``ladder.json`` says it was made."""
    summary = json.loads((out / "ladder.json").read_text())
    points = []
    for rung in summary["rungs"]:
        folder = out / rung["name"]
        files = [folder / "init.mp4", *sorted(folder.glob("seg_*.m4s"))]
        joined = scratch / f"{rung['name']}.mp4"
        joined.write_bytes(b"".join(part.read_bytes() for part in files))
        point = rung_point(source, joined, files, seconds, threads, models)
        points.append({"name": rung["name"], **point,
                       "downscale": rung.get("downscale", "?"), "crf": rung["crf"]})
        joined.unlink()
    return points


def _bd(fixed: list[dict[str, Any]], ladder: list[dict[str, Any]]) -> float | str:
    try:
        return round(bd_rate([p["kbps"] for p in fixed], [p["vmaf"] for p in fixed],
                             [p["kbps"] for p in ladder], [p["vmaf"] for p in ladder],
                             method="pchip"), 1)
    except BdRateError as exc:
        return f"n/a ({exc})"


# ------------------------------------------------------------------ the run


def bench_clip(clip: Path, seconds: float, args: argparse.Namespace,
               ffmpeg: str) -> dict[str, Any]:
    out_dir: Path = args.out_dir
    source = make_input(ffmpeg, clip, seconds, out_dir / "inputs")
    info = probe(str(source))
    seconds = info.frame_count / float(info.fps)  # the cut's own length
    work = out_dir / "runs" / source.stem
    shutil.rmtree(work, ignore_errors=True)
    (work / "fixed").mkdir(parents=True)
    print(f"{clip.name}: {info.width}x{info.height}, {info.frame_count} frames", flush=True)

    ladder_out = work / "ladder"
    ladder_run = measure([sys.executable, "-m", "gopflow", "ladder", str(source), "-o",
                          str(ladder_out), "--preset", args.preset, "--no-progress"],
                         work / "ladder.log")
    rungs = fixed_rungs(info.width, info.height)
    fixed_run = measure(fixed_command(ffmpeg, source, info, rungs, args.preset,
                                      work / "fixed"), work / "fixed.log")
    with tempfile.TemporaryDirectory(prefix="ladder-bench-", dir=work) as scratch:
        ladder_points = per_title_points(source, ladder_out, seconds, args.vmaf_threads,
                                         Path(scratch))
    fixed_points = []
    for _, h, kbps in rungs:
        path = work / "fixed" / f"{h}p_{kbps}k.mp4"
        fixed_points.append({"name": path.stem,
                             **rung_point(source, path, [path], seconds, args.vmaf_threads)})
    summary = json.loads((ladder_out / "ladder.json").read_text())
    return {
        "clip": f"{clip.name}:{seconds:.0f}s", "input": str(source), "width": info.width,
        "height": info.height,
        "frames": info.frame_count, "fps": str(Fraction(info.fps)), "seconds": round(seconds, 3),
        "preset": args.preset, "ladder": ladder_run, "fixed": fixed_run,
        "ladder_probe_s": summary.get("probe_seconds"), "ladder_phases": summary.get("phases"),
        "ladder_points": ladder_points, "fixed_points": fixed_points,
        "bd_rate_vmaf_pct": _bd(fixed_points, ladder_points),
    }


def _rungs(points: list[dict[str, Any]]) -> str:
    return " ".join(f"{p['height']}p:{p['kbps']:.0f}k/{p['vmaf']:.1f}" for p in points)


def print_table(results: list[dict[str, Any]]) -> None:
    head = ("clip", "BD-rate", "ladder wall", "ffmpeg wall", "x", "ladder CPU", "ffmpeg CPU",
            "x", "probe s")
    rows = []
    for r in results:
        bd = r["bd_rate_vmaf_pct"]
        rows.append((
            r["clip"], f"{bd:+.1f}%" if isinstance(bd, float) else "n/a",
            f"{r['ladder']['wall_s']:.1f}", f"{r['fixed']['wall_s']:.1f}",
            f"{r['ladder']['wall_s'] / r['fixed']['wall_s']:.1f}",
            f"{r['ladder']['cpu_s']:.1f}", f"{r['fixed']['cpu_s']:.1f}",
            f"{r['ladder']['cpu_s'] / r['fixed']['cpu_s']:.1f}",
            f"{r['ladder_probe_s']:.1f}" if r["ladder_probe_s"] is not None else "?"))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    for line in (head, *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)))
    print()
    for r in results:
        print(f"{r['clip']} ({r['width']}x{r['height']}, {r['seconds']:g} s, preset "
              f"{r['preset']}); rungs as height:kbit/s/VMAF at display size")
        print(f"  per-title: {_rungs(r['ladder_points'])}")
        print(f"  fixed:     {_rungs(r['fixed_points'])}")
        if not isinstance(r["bd_rate_vmaf_pct"], float):
            print(f"  BD-rate: {r['bd_rate_vmaf_pct']}")
    print()
    print("BD-rate: PCHIP over (bitrate from the files' bytes, VMAF at the source size after "
          "a bicubic upscale), per-title against fixed; negative = fewer bits.")
    print("CPU: user+system seconds of the whole process tree (Ray included). Goal: BD-rate "
          "<= -20% in <= 3x the fixed ladder's compute.")
    print(TUNING_NOTE)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", default=",".join(DEFAULT_CLIPS),
                        help="comma-separated names in ../shared/media (the tuning set), "
                        "each with :SECONDS to cut that much instead of --seconds")
    parser.add_argument("--seconds", type=float, default=8.0, help="length cut from each clip")
    parser.add_argument("--preset", default="medium", help="x264 preset of both ladders")
    parser.add_argument("--vmaf-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "out" / "ladder")
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 120:
        parser.error(f"--seconds must be 1 to 120, got {args.seconds:g}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clips: list[tuple[Path, float]] = []
    for spec in filter(None, (name.strip() for name in args.clips.split(","))):
        name, _, length = spec.partition(":")
        try:
            seconds = float(length) if length else args.seconds
        except ValueError:
            print(f"error: bad clip length in {spec!r}", file=sys.stderr)
            return 2
        if not (MEDIA / name).is_file() or not 1 <= seconds <= 120:
            print(f"error: no such clip, or a length outside 1-120 s: {spec}", file=sys.stderr)
            return 2
        clips.append((MEDIA / name, seconds))
    print(TUNING_NOTE, flush=True)
    ffmpeg = find_ffmpeg().path
    results = [bench_clip(clip, seconds, args, ffmpeg) for clip, seconds in clips]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print()
    print_table(results)
    print(f"\nJSON: {args.out_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
