"""Benchmark ``gopflow transcode`` against one plain ffmpeg encode of the same input.

For every input (given with ``--input``, else generated 1280x720 30 fps clips of each
``--durations`` length, cached in ``--out-dir``), both tools run side by side with the same
codec, preset and CRF:

* gopflow: ``gopflow transcode INPUT -o OUT --codec C --crf Q --preset P`` (a fresh local Ray
  cluster per run, so Ray's start-up is part of the wall time);
* ffmpeg: ``ffmpeg -i INPUT -c:v libx264|libx265 -preset P -crf Q -c:a copy OUT``.

Measured per run: wall time, CPU seconds of the whole process tree (a cgroup per run:
``bench/proctree.py``), output size on disk, PSNR-Y of the output against the input, and
peak memory. Peak memory is sampled the same way for both
tools: every ``--sample-interval`` seconds the RSS of the launched process, all its descendants
and every process started during the run that carries this run's tag in its environment (Ray's
raylet, gcs_server, dashboard and workers inherit it even when re-parented) is summed; the peak
is the largest sum. RSS sums count shared pages (Ray's object store, shared libraries) once per
process, so they are an upper bound. ``ru_maxrss`` of the launched child (from ``wait4``: the
largest single process among it and its reaped descendants) is reported too.

Usage (full run)::

    .venv/bin/python bench/transcode.py --codec x264 --preset medium --crf 18 --durations 10,60

Results are printed as a table and written as JSON to the out dir. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from gopflow.media.ffmpeg import find_ffmpeg
from gopflow.media.probe import probe
from gopflow.quality.metrics import psnr_y
from proctree import CpuGroup

REPO = Path(__file__).resolve().parent.parent
GOPFLOW = Path(sys.executable).with_name("gopflow")
TAG_VAR = "GOPFLOW_BENCH_TAG"
MB = 1024 * 1024

WIDTH, HEIGHT, FPS = 1280, 720, 30
# Four 640x360 quadrants: a moving test pattern, a zooming fractal, Conway's life and an
# elementary cellular automaton, then a slow hue drift and light temporal noise, so no part of
# the frame is trivially compressible. Audio: a 440 Hz sine (AAC).
_QW, _QH = WIDTH // 2, HEIGHT // 2
_SOURCES = (
    f"testsrc2=s={_QW}x{_QH}:r={FPS}",
    f"mandelbrot=s={_QW}x{_QH}:r={FPS}:maxiter=256",
    f"life=s={_QW}x{_QH}:r={FPS}:mold=10:ratio=0.1:life_color=#00ff00:death_color=#c83232",
    f"cellauto=s={_QW}x{_QH}:r={FPS}:rule=110",
)
_GRAPH = (
    "[0:v][1:v][2:v][3:v]xstack=inputs=4:layout=0_0|w0_0|0_h0|w0_h0,"
    "format=yuv420p,hue=h=20*t,noise=alls=3:allf=t[v]"
)
INPUT_VERSION = "v1"  # bump when the generator changes, so cached inputs are rebuilt


# --------------------------------------------------------------------------- memory sampling


class TreeSampler(threading.Thread):
    """Sample the summed RSS of a process tree plus tagged processes until stopped."""

    def __init__(self, root: psutil.Process, tag: str, before: set[int], interval: float):
        super().__init__(daemon=True)
        self.root = root
        self.tag = tag
        self.interval = interval
        self.seen: set[int] = set(before)  # pids that existed before launch: never ours
        self.tracked: dict[tuple[int, float], psutil.Process] = {}
        self.peak_bytes = 0
        self.peak_procs = 0
        self.peak_breakdown: dict[str, dict[str, float]] = {}
        self.samples = 0
        self.max_procs = 0
        self._halt = threading.Event()

    def _track(self, proc: psutil.Process) -> None:
        with contextlib.suppress(psutil.Error):
            self.tracked.setdefault((proc.pid, proc.create_time()), proc)

    def _tagged(self, pid: int) -> psutil.Process | None:
        try:
            proc = psutil.Process(pid)
            return proc if proc.environ().get(TAG_VAR) == self.tag else None
        except psutil.Error:
            return None

    def tagged_alive(self) -> list[psutil.Process]:
        """Processes still running that were started for this run (after the root exited)."""
        alive = []
        for proc in list(self.tracked.values()):
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.Error:
                pass
        return alive

    def sample(self) -> None:
        self._track(self.root)
        try:
            for child in self.root.children(recursive=True):
                self._track(child)
        except psutil.Error:
            pass
        for pid in set(psutil.pids()) - self.seen:
            self.seen.add(pid)
            proc = self._tagged(pid)
            if proc is not None:
                self._track(proc)
        total, live = 0, []
        for key, proc in list(self.tracked.items()):
            try:
                if not proc.is_running():
                    del self.tracked[key]
                    continue
                rss = proc.memory_info().rss
            except psutil.Error:
                self.tracked.pop(key, None)
                continue
            total += rss
            live.append((proc, rss))
        self.samples += 1
        self.max_procs = max(self.max_procs, len(live))
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_procs = total, len(live)
            breakdown: dict[str, dict[str, float]] = {}
            for proc, rss in live:
                try:
                    name = proc.name()
                except psutil.Error:
                    name = "?"
                row = breakdown.setdefault(name, {"count": 0, "rss_mb": 0.0})
                row["count"] += 1
                row["rss_mb"] = round(row["rss_mb"] + rss / MB, 1)
            self.peak_breakdown = dict(
                sorted(breakdown.items(), key=lambda item: -item[1]["rss_mb"])
            )

    def run(self) -> None:
        while True:
            self.sample()
            if self._halt.wait(self.interval):
                return

    def stop(self) -> None:
        self._halt.set()
        self.join()


# --------------------------------------------------------------------------- running a tool


@dataclass
class Run:
    tool: str
    returncode: int
    wall_s: float
    size_bytes: int
    peak_rss_mb: float
    peak_procs: int
    max_procs: int
    samples: int
    ru_maxrss_mb: float
    loadavg_before: tuple[float, float, float]
    peak_breakdown: dict[str, dict[str, float]] = field(default_factory=dict)
    leftover_procs: list[str] = field(default_factory=list)
    log: str = ""
    cpu_s: float = 0.0
    report_totals: dict[str, Any] | None = None


def subprocess_env(tag: str) -> dict[str, str]:
    env = dict(os.environ)
    env["RAY_AUTH_MODE"] = "disabled"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env[TAG_VAR] = tag
    # A fresh local cluster per run, so its processes are measured too.
    env.pop("RAY_ADDRESS", None)
    return env


def measure(tool: str, cmd: list[str], output: Path, log: Path, interval: float) -> Run:
    """Run ``cmd`` to completion, sampling memory; return its measurements."""
    output.unlink(missing_ok=True)
    tag = uuid.uuid4().hex
    env = subprocess_env(tag)
    before = set(psutil.pids())
    loadavg = os.getloadavg()
    group = CpuGroup()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as sink:
        sink.write((" ".join(cmd) + "\n\n").encode())
        sink.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=env,
            preexec_fn=group.preexec,
        )
        # Not reaped until wait4 below, so the pid stays valid (at worst a zombie).
        sampler = TreeSampler(psutil.Process(proc.pid), tag, before, interval)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop()

    # Ray's daemons should be gone once the driver exits; give them a moment, then report
    # (and end) any process of the run still alive. The group's CPU counter covers them all.
    leftovers = group.remove(grace=15.0)
    cpu = group.seconds()

    return Run(
        tool=tool,
        returncode=proc.returncode,
        wall_s=round(wall, 3),
        cpu_s=round(cpu, 2),
        size_bytes=output.stat().st_size if output.exists() else 0,
        peak_rss_mb=round(sampler.peak_bytes / MB, 1),
        peak_procs=sampler.peak_procs,
        max_procs=sampler.max_procs,
        samples=sampler.samples,
        ru_maxrss_mb=round(usage.ru_maxrss / 1024, 1),  # Linux: kilobytes
        loadavg_before=tuple(round(x, 2) for x in loadavg),  # type: ignore[arg-type]
        peak_breakdown=sampler.peak_breakdown,
        leftover_procs=leftovers,
        log=str(log),
    )


# --------------------------------------------------------------------------- inputs


def generate_input(ffmpeg: str, seconds: int, out_dir: Path, height: int = HEIGHT) -> Path:
    """A cached ``seconds``-long 30 fps clip with AAC audio (x264 veryfast crf 14): the
    1280x720 mosaic, scaled (bicubic) to 16:9 at ``height`` when that is not 720."""
    width = height * 16 // 9 // 2 * 2
    path = out_dir / "inputs" / f"src_{width}x{height}p{FPS}_{seconds}s_{INPUT_VERSION}.mp4"
    if path.exists():
        try:
            if probe(str(path)).frame_count == seconds * FPS:
                print(f"using cached input {path}", flush=True)
                return path
        except Exception as exc:  # a broken cache entry is rebuilt
            print(f"cached input {path} unusable ({exc}); regenerating", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial.mp4")
    cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    for source in _SOURCES:
        cmd += ["-f", "lavfi", "-i", source]
    cmd += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
    graph = _GRAPH
    if height != HEIGHT:
        graph = graph.replace("format=yuv420p,", f"scale={width}:{height}:flags=bicubic,"
                              "format=yuv420p,")
    cmd += ["-filter_complex", graph, "-map", "[v]", "-map", f"{len(_SOURCES)}:a"]
    cmd += ["-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-crf", "14"]
    cmd += ["-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart"]
    cmd += [str(partial)]
    print(f"generating {seconds} s input {path} ...", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    partial.replace(path)
    print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)
    return path


# --------------------------------------------------------------------------- main


def gopflow_cmd(
    args: argparse.Namespace, src: Path, out: Path, work: Path, report: Path
) -> list[str]:
    return [
        str(GOPFLOW), "transcode", str(src), "-o", str(out),
        "--codec", args.codec, "--crf", str(args.crf), "--preset", args.preset,
        "--work-dir", str(work), "--report", str(report), "--no-progress",
    ]  # fmt: skip


def ffmpeg_cmd(ffmpeg: str, args: argparse.Namespace, src: Path, out: Path) -> list[str]:
    encoder = {"x264": "libx264", "x265": "libx265"}[args.codec]
    return [
        ffmpeg, "-hide_banner", "-nostdin", "-y", "-i", str(src),
        "-c:v", encoder, "-preset", args.preset, "-crf", str(args.crf), "-c:a", "copy", str(out),
    ]  # fmt: skip


def psnr_of(src: Path, out: Path) -> tuple[float, str | None]:
    if not out.exists():
        return math.nan, "no output"
    try:
        return psnr_y(str(src), str(out)).mean_y, None
    except Exception as exc:
        return math.nan, f"{type(exc).__name__}: {exc}"


def bench_input(args: argparse.Namespace, ffmpeg: str, src: Path) -> dict[str, Any]:
    info = probe(str(src))
    stem = src.stem
    tag = f"{args.codec}_{args.preset}_crf{args.crf:g}"
    res_dir = args.out_dir / "results"
    outs = {
        "gopflow": res_dir / f"{stem}.{tag}.gopflow.mp4",
        "ffmpeg": res_dir / f"{stem}.{tag}.ffmpeg.mp4",
    }
    report = res_dir / f"{stem}.{tag}.gopflow.report.json"
    work = args.out_dir / "work" / f"{stem}.{tag}"
    res_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[Run]] = {"gopflow": [], "ffmpeg": []}
    for rep in range(args.repeat):
        order = ["gopflow", "ffmpeg"] if rep % 2 == 0 else ["ffmpeg", "gopflow"]
        for tool in order:
            log = args.out_dir / "logs" / f"{stem}.{tag}.{tool}.{rep}.log"
            print(f"[{stem}] run {rep + 1}/{args.repeat}: {tool} ...", flush=True)
            if tool == "gopflow":
                shutil.rmtree(work, ignore_errors=True)
                report.unlink(missing_ok=True)
                cmd = gopflow_cmd(args, src, outs[tool], work, report)
            else:
                cmd = ffmpeg_cmd(ffmpeg, args, src, outs[tool])
            run = measure(tool, cmd, outs[tool], log, args.sample_interval)
            if tool == "gopflow" and report.exists():
                with contextlib.suppress(OSError, ValueError):
                    run.report_totals = json.loads(report.read_text()).get("totals")
            status = "ok" if run.returncode == 0 else f"FAILED rc={run.returncode}, see {log}"
            print(
                f"  {status}: {run.wall_s:.2f} s, {run.size_bytes} B, "
                f"peak {run.peak_rss_mb:.0f} MB ({run.peak_procs} procs)",
                flush=True,
            )
            if run.leftover_procs:
                print(f"  warning: processes left running, ended: {run.leftover_procs}")
            runs[tool].append(run)

    tools: dict[str, Any] = {}
    for tool, tool_runs in runs.items():
        ok = [r for r in tool_runs if r.returncode == 0]
        psnr, psnr_error = psnr_of(src, outs[tool]) if ok else (math.nan, "tool failed")
        tools[tool] = {
            "ok": len(ok) == len(tool_runs),
            "wall_s_median": statistics.median(r.wall_s for r in ok) if ok else math.nan,
            "wall_s_min": min(r.wall_s for r in ok) if ok else math.nan,
            "cpu_s_median": statistics.median(r.cpu_s for r in ok) if ok else math.nan,
            "size_bytes": ok[-1].size_bytes if ok else 0,
            "psnr_y": round(psnr, 4) if not math.isnan(psnr) else None,
            "psnr_error": psnr_error,
            "peak_rss_mb": max(r.peak_rss_mb for r in tool_runs),
            "ru_maxrss_mb": max(r.ru_maxrss_mb for r in tool_runs),
            "output": str(outs[tool]),
            "runs": [asdict(r) for r in tool_runs],
        }
    return {
        "input": str(src),
        "name": stem,
        "duration_s": round(info.duration_seconds, 3),
        "frames": info.frame_count,
        "size": f"{info.width}x{info.height}",
        "fps": float(info.fps),
        "input_bytes": src.stat().st_size,
        "tools": tools,
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b and not (math.isnan(a) or math.isnan(b)) else math.nan


def _fmt(value: float, spec: str) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (format(value, spec))
    )


def print_table(results: list[dict[str, Any]]) -> None:
    header = (
        "input", "dur s", "tool", "wall s", "ratio", "CPU s", "CPU ratio", "size bytes",
        "size ratio",
        "PSNR-Y", "peak MB", "maxrss MB",
    )  # fmt: skip
    rows = []
    for res in results:
        base = res["tools"]["ffmpeg"]
        for tool in ("gopflow", "ffmpeg"):
            t = res["tools"][tool]
            wall = t["wall_s_median"]
            rows.append((
                res["name"],
                _fmt(res["duration_s"], ".1f"),
                tool if t["ok"] else f"{tool} (FAILED)",
                _fmt(wall, ".2f"),
                _fmt(_ratio(wall, base["wall_s_median"]), ".2f"),
                _fmt(t["cpu_s_median"], ".1f"),
                _fmt(_ratio(t["cpu_s_median"], base["cpu_s_median"]), ".2f"),
                str(t["size_bytes"]),
                _fmt(_ratio(t["size_bytes"], base["size_bytes"]), ".3f"),
                _fmt(t["psnr_y"] if t["psnr_y"] is not None else math.nan, ".3f"),
                _fmt(t["peak_rss_mb"], ".0f"),
                _fmt(t["ru_maxrss_mb"], ".0f"),
            ))  # fmt: skip
    left = {0, 2}
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    print()
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
    print()
    print("ratio = tool wall / ffmpeg wall (median of --repeat runs); size ratio = bytes / ffmpeg")
    print("CPU s = user + system seconds of the whole process tree (Ray's daemons included)")
    print("peak MB = peak of the summed RSS of the whole process tree (incl. Ray), sampled;")
    print("maxrss MB = ru_maxrss of the launched child (largest single process it reaped)")


def memory_scaling(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Peak memory of the longest input over the shortest, per tool."""
    if len(results) < 2:
        return None
    by_dur = sorted(results, key=lambda r: r["duration_s"])
    short, long = by_dur[0], by_dur[-1]
    if long["duration_s"] <= short["duration_s"]:
        return None
    out: dict[str, Any] = {
        "long_s": long["duration_s"],
        "short_s": short["duration_s"],
    }
    for tool in ("gopflow", "ffmpeg"):
        a, b = long["tools"][tool]["peak_rss_mb"], short["tools"][tool]["peak_rss_mb"]
        out[tool] = {"long_mb": a, "short_mb": b, "ratio": round(_ratio(a, b), 3)}
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--input", action="append", type=Path,
        help="input video (repeatable); default: generate test clips of --durations",
    )  # fmt: skip
    parser.add_argument("--codec", choices=("x264", "x265"), default="x264")
    parser.add_argument("--preset", default="medium")
    parser.add_argument("--crf", type=float, default=18)
    parser.add_argument(
        "--durations", default="10,60",
        help="comma-separated seconds of the generated inputs (default: 10,60)",
    )  # fmt: skip
    parser.add_argument(
        "--height", type=int, default=HEIGHT,
        help="height of the generated 16:9 inputs (default: 720; e.g. 1080)",
    )
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "out")
    parser.add_argument("--repeat", type=int, default=1, help="runs per tool and input")
    parser.add_argument(
        "--sample-interval", type=float, default=0.2, help="memory sampling period, seconds"
    )
    args = parser.parse_args(argv)
    try:
        args.durations = [int(d) for d in args.durations.split(",") if d.strip()]
    except ValueError:
        parser.error("--durations takes comma-separated whole seconds, e.g. 10,60")
    if not args.durations or min(args.durations) <= 0:
        parser.error("--durations must be positive")
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    args.out_dir = args.out_dir.resolve()
    return args


def environment(ffmpeg_path: str, ffmpeg_version: str) -> dict[str, Any]:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
    except OSError:
        rev = ""
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory_total_mb": round(psutil.virtual_memory().total / MB),
        "ffmpeg": ffmpeg_path,
        "ffmpeg_version": ffmpeg_version,
        "git_rev": rev,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tool = find_ffmpeg()
    encoder = {"x264": "libx264", "x265": "libx265"}[args.codec]
    tool.require(encoders=[encoder])
    if not GOPFLOW.exists():
        print(f"gopflow entry point not found at {GOPFLOW}", file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)

    if args.input:
        inputs = [p.resolve() for p in args.input]
    else:
        inputs = [generate_input(tool.path, d, args.out_dir, args.height) for d in args.durations]

    started = time.strftime("%Y%m%d-%H%M%S")
    results = [bench_input(args, tool.path, src) for src in inputs]
    print_table(results)
    scaling = memory_scaling(results)
    if scaling:
        g = scaling["gopflow"]
        f = scaling["ffmpeg"]
        print(
            f"\ngopflow peak memory {scaling['long_s']:g} s vs {scaling['short_s']:g} s: "
            f"{g['long_mb']:.0f} MB / {g['short_mb']:.0f} MB = {_fmt(g['ratio'], '.2f')}x"
            f"  (ffmpeg: {f['long_mb']:.0f} / {f['short_mb']:.0f} MB = "
            f"{_fmt(f['ratio'], '.2f')}x)"
        )

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    doc = {
        "started": started,
        "settings": {
            "codec": args.codec,
            "preset": args.preset,
            "crf": args.crf,
            "repeat": args.repeat,
            "sample_interval_s": args.sample_interval,
            "durations": None if args.input else args.durations,
        },
        "environment": environment(tool.path, tool.version),
        "results": results,
        "memory_scaling": scaling,
        "bench_ru_maxrss_children_mb": round(children.ru_maxrss / 1024, 1),
    }
    out = args.out_dir / f"transcode_{args.codec}_{args.preset}_crf{args.crf:g}_{started}.json"
    out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"\nresults written to {out}")
    failed = any(not t["ok"] for r in results for t in r["tools"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
