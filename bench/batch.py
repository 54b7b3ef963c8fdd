"""Benchmark ``gopflow batch`` against other ways of transcoding the same files.

Inputs: ``--clips`` clips of 5-20 s cut from ``../shared/media`` (the tuning set, never
``train``), scaled to sizes from 320x180 to 1280x720, every third with a stereo AAC track;
generated once into ``--out-dir/batch_inputs`` (x264 CRF 16, so they look like camera
files). Strategies, run one after another in this process, same codec, preset and CRF:

* ``batch``: ``gopflow batch INPUTS -o OUT`` (one local Ray cluster for every file);
* ``transcode-each``: ``gopflow transcode`` once per file (a cluster per file);
* ``ffmpeg-each``: plain ``ffmpeg -i IN -c:v libx264 ... -c:a copy OUT`` once per file, its
  default threads;
* ``ffmpeg-2x1``: two plain ffmpeg processes at a time, ``-threads 1`` each.

With ``--two-node`` it also starts two one-CPU ``ray start`` nodes on this machine (each in a
session, temp dir and ports of its own, stopped by process group) and runs the batch against
one node, then against both (``--ray-address``): the scaling of an existing cluster.

Usage::

    .venv/bin/python bench/batch.py --clips 20 --preset medium --crf 23 [--two-node]

Prints a table (wall seconds, ratio to ``batch``, frames per second) and writes JSON to the
out dir. Nothing here is a test.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gopflow.media.ffmpeg import find_ffmpeg
from gopflow.media.probe import probe

REPO = Path(__file__).resolve().parent.parent
MEDIA = REPO.parent / "shared" / "media"
SOURCES = ("asl_again_640x480.mkv", "car_traffic_768x432.mp4", "flower_960x540.mp4",
           "foreman_cif_352x288.264", "his_girl_friday_640x480.mp4",
           "nasa_jwst_320x180_480x270.mp4", "red_trees_drive_1920x1080.264",
           "white_flower_1280x720.264")
SIZES = ((320, 180), (480, 270), (640, 360), (960, 540), (1280, 720))
DURATIONS = (5, 8, 12, 16, 20, 6, 10, 14, 18, 9)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    return env


def make_inputs(ffmpeg: str, count: int, folder: Path) -> list[Path]:
    """``count`` clips (cached): source, size, duration and audio chosen round-robin."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(count):
        source = MEDIA / SOURCES[i % len(SOURCES)]
        width, height = SIZES[(i * 3) % len(SIZES)]
        seconds = DURATIONS[i % len(DURATIONS)]
        # A raw stream cannot be looped (no seeking back): at most its own length.
        raw = source.suffix in (".264", ".265")
        if raw:
            seconds = min(seconds, int(probe(str(source)).duration_seconds))
        audio = i % 3 == 0
        path = folder / f"clip{i:02d}_{width}x{height}_{seconds}s{'_a' if audio else ''}.mp4"
        clips.append(path)
        if path.exists():
            continue
        command = [ffmpeg, "-nostdin", "-loglevel", "error", "-y",
                   *([] if raw else ["-stream_loop", "-1"]), "-i", str(source)]
        if audio:
            command += ["-f", "lavfi", "-i", f"sine=frequency={220 + 40 * i}:sample_rate=48000",
                        "-ac", "2", "-c:a", "aac", "-b:a", "128k"]
        command += ["-t", str(seconds), "-map", "0:v:0", *(["-map", "1:a"] if audio else []),
                    "-vf", f"scale={width}:{height}:flags=lanczos,fps=30", "-c:v", "libx264",
                    "-preset", "veryfast", "-crf", "16", "-pix_fmt", "yuv420p",
                    str(path.with_suffix(".tmp.mp4"))]
        subprocess.run(command, check=True)
        path.with_suffix(".tmp.mp4").rename(path)
    return clips


def timed(run: Any) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def _check(command: list[str], log: Path) -> None:
    with open(log, "ab") as sink:
        sink.write((" ".join(command) + "\n").encode())
        sink.flush()
        done = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, env=_env())
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}; see {log}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--preset", default="medium")
    parser.add_argument("--crf", type=float, default=23)
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "out")
    parser.add_argument("--two-node", action="store_true",
                        help="also: one vs two one-CPU ray start nodes (--ray-address)")
    parser.add_argument("--only", default="batch,transcode-each,ffmpeg-each,ffmpeg-2x1",
                        help="strategies to run, comma-separated")
    args = parser.parse_args(argv)
    ffmpeg = find_ffmpeg().path
    clips = make_inputs(ffmpeg, args.clips, args.out_dir / "batch_inputs")
    frames = sum(probe(str(c)).frame_count for c in clips)
    work = Path(tempfile.mkdtemp(prefix="gopflow-bench-batch-", dir=args.out_dir))
    log = work / "log.txt"
    gopflow = [sys.executable, "-m", "gopflow"]
    codec = ["--preset", args.preset, "--crf", f"{args.crf:g}", "--no-progress"]

    def ffmpeg_cmd(clip: Path, out: Path, *extra: str) -> list[str]:
        return [ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", str(clip), "-map", "0:v:0",
                "-map", "0:a?", "-c:v", "libx264", "-preset", args.preset, "-crf",
                f"{args.crf:g}", *extra, "-c:a", "copy", str(out)]

    def batch(name: str, *extra: str) -> None:
        _check([*gopflow, "batch", *map(str, clips), "-o", str(work / name), *codec, *extra],
               log)

    def transcode_each() -> None:
        (work / "each").mkdir()
        for clip in clips:
            _check([*gopflow, "transcode", str(clip), "-o", str(work / "each" / clip.name),
                    *codec], log)

    def ffmpeg_each() -> None:
        (work / "ffmpeg").mkdir()
        for clip in clips:
            _check(ffmpeg_cmd(clip, work / "ffmpeg" / clip.name), log)

    def ffmpeg_two() -> None:
        (work / "ffmpeg2").mkdir()
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(lambda c: _check(ffmpeg_cmd(c, work / "ffmpeg2" / c.name,
                                                      "-threads", "1"), log), clips))

    strategies = {"batch": lambda: batch("batch"), "transcode-each": transcode_each,
                  "ffmpeg-each": ffmpeg_each, "ffmpeg-2x1": ffmpeg_two}
    results: dict[str, float] = {}
    for name in args.only.split(","):
        results[name] = timed(strategies[name])
        print(f"{name}: {results[name]:.1f} s", file=sys.stderr)
    if args.two_node:
        sys.path.insert(0, str(REPO / "tests"))
        from integration.helpers import free_port, start_ray_node, stop_ray_node

        ray = str(Path(sys.executable).with_name("ray"))
        temp_root = tempfile.mkdtemp(prefix="rb-", dir="/tmp")  # Ray's socket paths are short
        port = free_port()
        nodes = [start_ray_node(ray, temp_root, "head", "--head", f"--port={port}",
                                "--include-dashboard=false", f"--dashboard-port={free_port()}",
                                "--disable-usage-stats")]
        address = ["--ray-address", f"127.0.0.1:{port}"]
        try:
            results["cluster-1-node"] = timed(lambda: batch("one-node", *address))
            nodes.append(start_ray_node(ray, temp_root, "worker", f"--address=127.0.0.1:{port}"))
            results["cluster-2-nodes"] = timed(lambda: batch("two-nodes", *address))
        finally:
            for node in reversed(nodes):
                stop_ray_node(node)
            shutil.rmtree(temp_root, ignore_errors=True)

    base = results.get("batch") or next(iter(results.values()))
    rows = [f"{len(clips)} clips, {frames} frames, x264 {args.preset} CRF {args.crf:g}, "
            f"{os.cpu_count()} CPUs", "| strategy | wall s | x batch | fps |", "|---|---|---|---|"]
    for name, seconds in results.items():
        rows.append(f"| {name} | {seconds:.1f} | {seconds / base:.2f} | {frames / seconds:.1f} |")
    if "cluster-1-node" in results and "cluster-2-nodes" in results:
        rows.append(f"two nodes / one node throughput: "
                    f"{results['cluster-1-node'] / results['cluster-2-nodes']:.2f}x")
    print("\n".join(rows))
    (args.out_dir / "batch.json").write_text(json.dumps(
        {"clips": [c.name for c in clips], "frames": frames, "preset": args.preset,
         "crf": args.crf, "wall_seconds": results}, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
