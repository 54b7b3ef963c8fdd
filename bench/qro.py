"""Benchmark QRO (``gopflow transcode --target-vmaf T``) against the best single fixed CRF.

For every clip (``--clips``, names in ``shared/media`` or paths), side by side in one run:

(a) **QRO**: ``gopflow transcode CLIP -o qro.mkv --target-vmaf T --qro-tolerance TOL
    --preset P --probe-preset PP``: per GOP the cheapest spatial scale / half frame rate / CRF
    meeting the target, every GOP checked after its final encode.
(b) **fixed CRF**: ``gopflow transcode CLIP -o fixed_crfC.mkv --crf C --preset P`` (the same
    GOP plan), with C the highest integer CRF in ``--crf-min..--crf-max`` (bisection) whose every
    GOP meets the floor ``T - TOL``.

Quality is measured the same way for both: ``gopflow restore`` (full size, full frame rate,
the source's frame count, FFV1) -> per-frame VMAF (libvmaf vmaf_v0.6.1) of the restored video
against the source over the whole clip -> mean per GOP over the GOP frame ranges of the
transcode report. For (a) the per-GOP VMAF the QRO worker measured on each GOP alone (its
``decision.quality``) is reported too; it can differ slightly, because VMAF's motion feature
of a GOP's first frame sees the previous GOP only in the whole-clip measurement.

Bits are the sum of the report's per-GOP ``bytes`` (the real segment files that were joined),
kbit/s over the source duration. Wall time per frame is the transcode report's
``totals.wall_seconds`` / frames (a fresh local Ray cluster per run, so Ray's start-up is
included for both); for (b) it is the single encode at the CRF found, the search's own cost
(all encodes, restores and VMAF runs) is in the JSON.

Usage (full run)::

    .venv/bin/python bench/qro.py --target 93 --tolerance 0.5 --preset medium

Results are printed as tables and written to ``--out-dir``/qro_results.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gopflow import __version__
from gopflow.quality.metrics import default_threads
from gopflow.quality.vmaf import vmaf_scores

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO.parent / "shared" / "media"
DEFAULT_CLIPS = (
    "his_girl_friday_640x480.mp4",
    "flower_960x540.mp4",
    "car_traffic_768x432.mp4",
    "foreman_cif_352x288.264",
)
RESULT_VERSION = 1  # bump when what a cached result holds changes


def gopflow_command() -> list[str]:
    exe = Path(sys.executable).with_name("gopflow")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("gopflow")
    if found:
        return [found]
    raise SystemExit("gopflow executable not found next to this Python or on PATH")


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["RAY_AUTH_MODE"] = "disabled"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- one encode


@dataclass
class Gop:
    index: int
    start_frame: int
    frames: int
    bytes: int
    vmaf: float  # restored, whole-clip measurement, mean over the GOP's frames
    vmaf_min: float
    worker_vmaf: float | None = None  # QRO: measured by the worker on the GOP alone
    passed: bool | None = None  # QRO report
    flagged: bool | None = None
    scale: str | None = None
    half_rate: bool | None = None
    crf: float | None = None
    probes: int | None = None
    attempts: int | None = None


@dataclass
class Encode:
    """One gopflow transcode of a clip, measured after ``gopflow restore``."""

    key: dict[str, Any]
    output: str
    frames: int
    duration_seconds: float
    bytes: int  # sum of per-GOP segment bytes
    file_bytes: int
    wall_seconds: float  # from the report
    process_seconds: float  # the gopflow transcode process, as timed here
    measure_seconds: float  # restore + VMAF
    vmaf_mean: float
    gops: list[Gop] = field(default_factory=list)

    @property
    def kbps(self) -> float:
        return self.bytes * 8 / self.duration_seconds / 1000

    @property
    def min_gop_vmaf(self) -> float:
        return min(g.vmaf for g in self.gops)

    def meets(self, floor: float) -> bool:
        return all(g.vmaf >= floor for g in self.gops)

    def share_meeting(self, floor: float) -> float:
        return sum(g.vmaf >= floor for g in self.gops) / len(self.gops)

    def plan(self) -> list[tuple[int, int]]:
        return [(g.start_frame, g.frames) for g in self.gops]


def run_logged(command: list[str], log_path: Path, retries: int = 0) -> float:
    """Run ``command`` with its output in ``log_path``; wall seconds of the successful run.
    A failed run (e.g. a local Ray cluster that timed out starting on a busy machine) is
    retried up to ``retries`` times; then the last failure is raised."""
    for attempt in range(retries + 1):
        started = time.perf_counter()
        with log_path.open("w") as out:
            done = subprocess.run(
                command, stdout=out, stderr=subprocess.STDOUT, env=subprocess_env(),
                stdin=subprocess.DEVNULL,
            )
        seconds = time.perf_counter() - started
        if done.returncode == 0:
            return seconds
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        message = (
            f"{' '.join(command)} failed (exit {done.returncode}):\n  " + "\n  ".join(tail)
        )
        if attempt == retries:
            raise RuntimeError(message)
        log(f"    retrying ({attempt + 1}/{retries}) after: {tail[-1] if tail else message}")
        time.sleep(5)
    raise AssertionError("unreachable")


def measure_restored(
    source: Path, output: Path, ranges: list[tuple[int, int]], threads: int, keep: bool
) -> tuple[list[tuple[float, float]], float, float]:
    """Per-GOP (mean, min) VMAF and whole-clip mean of ``output`` restored, vs ``source``."""
    started = time.perf_counter()
    restored = output.with_name(output.stem + ".restored.mkv")
    run_logged(
        [*gopflow_command(), "restore", str(output), "-o", str(restored)],
        output.with_name(output.stem + ".restore.log"),
    )
    try:
        scores = vmaf_scores(str(source), str(restored), ("vmaf",), threads=threads)
    finally:
        if not keep:
            restored.unlink(missing_ok=True)
    per_gop = scores.per_gop([(start, start + frames) for start, frames in ranges])
    pooled = [(q.pooled["vmaf"].mean, q.pooled["vmaf"].min) for q in per_gop]
    return pooled, scores.summary()["vmaf"].mean, time.perf_counter() - started


def encode(
    args: argparse.Namespace, source: Path, out_dir: Path, name: str, mode_args: list[str],
    key: dict[str, Any],
) -> Encode:
    """Transcode ``source`` to ``out_dir/name.mkv`` with ``mode_args``, restore and measure.
    With ``--reuse``, a cached result with the same key is returned instead."""
    output = out_dir / f"{name}.mkv"
    report_path = out_dir / f"{name}.report.json"
    result_path = out_dir / f"{name}.result.json"
    if args.reuse and result_path.exists() and output.exists():
        try:
            cached = json.loads(result_path.read_text())
            if cached.get("key") == key:
                cached["gops"] = [Gop(**g) for g in cached["gops"]]
                log(f"    {name}: reused")
                return Encode(**cached)
        except (ValueError, TypeError, KeyError):
            pass
    command = [
        *gopflow_command(), "transcode", str(source), "-o", str(output),
        "--preset", args.preset, "--report", str(report_path), "--no-progress",
        *mode_args,
    ]
    if args.gop_seconds is not None:
        command += ["--gop-seconds", str(args.gop_seconds)]
    process_seconds = run_logged(command, out_dir / f"{name}.transcode.log", args.retries)
    report = json.loads(report_path.read_text())
    gops_report = sorted(report["gops"], key=lambda g: g["start_frame"])
    totals = report["totals"]
    ranges = [(int(g["start_frame"]), int(g["frames"])) for g in gops_report]
    pooled, whole, measure_seconds = measure_restored(
        source, output, ranges, args.vmaf_threads, args.keep_restored
    )
    gops = []
    for index, (g, (mean, low)) in enumerate(zip(gops_report, pooled, strict=True)):
        gop = Gop(index, int(g["start_frame"]), int(g["frames"]), int(g["bytes"]), mean, low)
        decision = g.get("decision")
        if decision:
            gop.worker_vmaf = decision.get("quality")
            gop.passed = decision.get("passed")
            gop.flagged = decision.get("flagged")
            gop.scale = str(decision.get("scale"))
            gop.half_rate = bool(decision.get("half_rate"))
            gop.crf = decision.get("crf")
            gop.probes = len(decision.get("probes") or ())
            gop.attempts = len(decision.get("attempts") or ())
        gops.append(gop)
    result = Encode(
        key=key, output=str(output), frames=int(totals["frames"]),
        duration_seconds=float(totals["duration_seconds"]),
        bytes=sum(g.bytes for g in gops), file_bytes=output.stat().st_size,
        wall_seconds=float(totals["wall_seconds"]), process_seconds=process_seconds,
        measure_seconds=measure_seconds, vmaf_mean=whole, gops=gops,
    )
    result_path.write_text(json.dumps(asdict(result), indent=1))
    return result


# --------------------------------------------------------------------------- one clip


def clip_key(args: argparse.Namespace, source: Path) -> dict[str, Any]:
    stat = source.stat()
    return {
        "version": RESULT_VERSION, "source": str(source), "size": stat.st_size,
        "mtime": stat.st_mtime, "preset": args.preset, "gop_seconds": args.gop_seconds,
        "gopflow": __version__,
    }


def search_fixed_crf(
    args: argparse.Namespace, source: Path, out_dir: Path, floor: float
) -> tuple[int | None, dict[int, Encode], float]:
    """Highest integer CRF in [crf_min, crf_max] whose every GOP meets ``floor`` (bisection;
    quality is taken as non-increasing in CRF). None when even crf_min misses the floor."""
    tried: dict[int, Encode] = {}

    def passes(crf: int) -> bool:
        key = {**clip_key(args, source), "crf": crf}
        result = encode(args, source, out_dir, f"fixed_crf{crf}", ["--crf", str(crf)], key)
        tried[crf] = result
        log(
            f"    fixed CRF {crf}: {result.kbps:.0f} kbit/s, min GOP VMAF "
            f"{result.min_gop_vmaf:.2f} ({'meets' if result.meets(floor) else 'misses'} "
            f"{floor:g}), {result.process_seconds + result.measure_seconds:.1f} s"
        )
        return result.meets(floor)

    # Invariant: lo meets the floor (virtual below crf_min), hi misses it (virtual above max).
    lo, hi = args.crf_min - 1, args.crf_max + 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(mid):
            lo = mid
        else:
            hi = mid
    found = lo if lo >= args.crf_min else None
    if found is None and args.crf_min not in tried:
        passes(args.crf_min)
    # Seconds of the search's own work (cached results count what they cost when made).
    return found, tried, sum(r.process_seconds + r.measure_seconds for r in tried.values())


def decisions_summary(gops: list[Gop]) -> str:
    scales = Counter(g.scale for g in gops)
    order = sorted(scales, key=lambda s: -_scale_value(s))
    text = " ".join(f"{s}:{scales[s]}" for s in order)
    half = sum(bool(g.half_rate) for g in gops)
    return f"{text} half:{half}"


def _scale_value(scale: str | None) -> float:
    try:
        num, _, den = str(scale).partition("/")
        return float(num) / float(den or 1)
    except ValueError:
        return math.nan


def bench_clip(args: argparse.Namespace, source: Path) -> dict[str, Any]:
    out_dir = args.out_dir / source.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    floor = args.target - args.tolerance
    log(f"{source.name}:")
    started = time.perf_counter()
    key = {
        **clip_key(args, source), "target": args.target, "tolerance": args.tolerance,
        "probe_preset": args.probe_preset, "mode_select": args.mode_select,
    }
    qro = encode(
        args, source, out_dir, f"qro_vmaf{args.target:g}_{args.mode_select}",
        ["--target-vmaf", str(args.target), "--qro-tolerance", str(args.tolerance),
         "--probe-preset", args.probe_preset, "--mode-select", args.mode_select],
        key,
    )
    log(
        f"    QRO: {qro.kbps:.0f} kbit/s, min GOP VMAF {qro.min_gop_vmaf:.2f}, "
        f"{qro.process_seconds + qro.measure_seconds:.1f} s"
    )
    crf, tried, search_seconds = search_fixed_crf(args, source, out_dir, floor)
    fixed = tried[crf if crf is not None else args.crf_min]
    if fixed.plan() != qro.plan():
        log(f"    WARNING: GOP plans differ between QRO and fixed CRF for {source.name}")
    saved = (fixed.bytes - qro.bytes) / fixed.bytes * 100
    log(f"    done in {time.perf_counter() - started:.0f} s")
    return {
        "clip": source.name,
        "source": str(source),
        "frames": qro.frames,
        "duration_seconds": qro.duration_seconds,
        "gops": len(qro.gops),
        "floor": floor,
        "fixed_crf": crf,
        "fixed_meets_floor": crf is not None,
        "same_gop_plan": fixed.plan() == qro.plan(),
        "bitrate_saved_percent": saved,
        "qro": asdict(qro) | {
            "kbps": qro.kbps,
            "share_gops_meeting_floor": qro.share_meeting(floor),
            "share_gops_meeting_floor_worker": _share_worker(qro.gops, floor),
            "share_flagged": sum(bool(g.flagged) for g in qro.gops) / len(qro.gops),
            "decisions": decisions_summary(qro.gops),
            "wall_seconds_per_frame": qro.wall_seconds / qro.frames,
        },
        "fixed": asdict(fixed) | {
            "kbps": fixed.kbps,
            "share_gops_meeting_floor": fixed.share_meeting(floor),
            "wall_seconds_per_frame": fixed.wall_seconds / fixed.frames,
        },
        "fixed_search": {
            "seconds": search_seconds,
            "tried": {
                str(c): {"kbps": r.kbps, "min_gop_vmaf": r.min_gop_vmaf, "meets": r.meets(floor),
                         "wall_seconds": r.wall_seconds, "measure_seconds": r.measure_seconds}
                for c, r in sorted(tried.items())
            },
        },
    }


def _share_worker(gops: list[Gop], floor: float) -> float | None:
    values = [g.worker_vmaf for g in gops if g.worker_vmaf is not None]
    if len(values) != len(gops):
        return None
    return sum(v >= floor for v in values) / len(values)


# --------------------------------------------------------------------------- tables


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def format_table(rows: list[list[str]], left: frozenset[int] = frozenset({0})) -> str:
    """Columns padded to a common width; those in ``left`` left-aligned, others right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.ljust(w) if i in left else c.rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_table(results: list[dict[str, Any]], totals: dict[str, Any]) -> str:
    header = [
        "clip", "frames", "GOPs", "fixed CRF", "fixed kbps", "QRO kbps", "saved",
        ">=floor fixed", ">=floor QRO", ">=floor QRO worker", "QRO flagged",
        "QRO decisions", "QRO s/frame", "fixed s/frame",
    ]
    rows = [header]
    for r in results:
        q, f = r["qro"], r["fixed"]
        crf = str(r["fixed_crf"]) if r["fixed_crf"] is not None else f"none (<{f['key']['crf']})"
        rows.append([
            r["clip"], str(r["frames"]), str(r["gops"]), crf, f"{f['kbps']:.0f}",
            f"{q['kbps']:.0f}", f"{r['bitrate_saved_percent']:.1f}%",
            _pct(f["share_gops_meeting_floor"]), _pct(q["share_gops_meeting_floor"]),
            _pct(q["share_gops_meeting_floor_worker"]), _pct(q["share_flagged"]),
            q["decisions"], f"{q['wall_seconds_per_frame']:.3f}",
            f"{f['wall_seconds_per_frame']:.3f}",
        ])
    t = totals
    rows.append([
        "total", str(t["frames"]), str(t["gops"]), "-", f"{t['fixed_kbps']:.0f}",
        f"{t['qro_kbps']:.0f}", f"{t['bitrate_saved_percent']:.1f}%",
        _pct(t["fixed_share_meeting_floor"]), _pct(t["qro_share_meeting_floor"]),
        _pct(t["qro_share_meeting_floor_worker"]), _pct(t["qro_share_flagged"]),
        t["qro_decisions"], f"{t['qro_wall_seconds_per_frame']:.3f}",
        f"{t['fixed_wall_seconds_per_frame']:.3f}",
    ])
    return format_table(rows, frozenset({0, 11}))


def gop_table(results: list[dict[str, Any]]) -> str:
    header = [
        "clip", "GOP", "frames", "QRO scale", "half", "CRF", "VMAF worker", "VMAF QRO",
        "VMAF fixed", "QRO kbps", "fixed kbps", "status",
    ]
    rows = [header]
    for r in results:
        q, f = r["qro"], r["fixed"]
        fps = r["frames"] / r["duration_seconds"]
        for gq, gf in zip(q["gops"], f["gops"], strict=True):
            worker = gq["worker_vmaf"]
            status = "flagged" if gq["flagged"] else ("pass" if gq["passed"] else "FAIL")
            rows.append([
                r["clip"], str(gq["index"]), str(gq["frames"]), str(gq["scale"]),
                "yes" if gq["half_rate"] else "no",
                "-" if gq["crf"] is None else f"{gq['crf']:g}",
                "-" if worker is None else f"{worker:.2f}", f"{gq['vmaf']:.2f}",
                f"{gf['vmaf']:.2f}",
                f"{gq['bytes'] * 8 * fps / gq['frames'] / 1000:.0f}",
                f"{gf['bytes'] * 8 * fps / gf['frames'] / 1000:.0f}",
                status,
            ])
    return format_table(rows)


def combine(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over clips: bits and durations summed, GOP shares over all GOPs."""
    qro_gops = [g for r in results for g in r["qro"]["gops"]]
    fixed_gops = [(g, r["floor"]) for r in results for g in r["fixed"]["gops"]]
    qro_floor = [(g, r["floor"]) for r in results for g in r["qro"]["gops"]]
    duration = sum(r["duration_seconds"] for r in results)
    frames = sum(r["frames"] for r in results)
    qro_bytes = sum(r["qro"]["bytes"] for r in results)
    fixed_bytes = sum(r["fixed"]["bytes"] for r in results)
    workers = [(g["worker_vmaf"], fl) for g, fl in qro_floor]
    scales = Counter(g["scale"] for g in qro_gops)
    order = sorted(scales, key=lambda s: -_scale_value(s))
    half = sum(bool(g["half_rate"]) for g in qro_gops)
    return {
        "frames": frames,
        "gops": len(qro_gops),
        "duration_seconds": duration,
        "qro_bytes": qro_bytes,
        "fixed_bytes": fixed_bytes,
        "qro_kbps": qro_bytes * 8 / duration / 1000,
        "fixed_kbps": fixed_bytes * 8 / duration / 1000,
        "bitrate_saved_percent": (fixed_bytes - qro_bytes) / fixed_bytes * 100,
        "fixed_share_meeting_floor": sum(g["vmaf"] >= fl for g, fl in fixed_gops)
        / len(fixed_gops),
        "qro_share_meeting_floor": sum(g["vmaf"] >= fl for g, fl in qro_floor) / len(qro_floor),
        "qro_share_meeting_floor_worker": (
            sum(v >= fl for v, fl in workers) / len(workers)
            if all(v is not None for v, _ in workers) else None
        ),
        "qro_share_flagged": sum(bool(g["flagged"]) for g in qro_gops) / len(qro_gops),
        "qro_decisions": " ".join(f"{s}:{scales[s]}" for s in order) + f" half:{half}",
        "qro_wall_seconds_per_frame": sum(r["qro"]["wall_seconds"] for r in results) / frames,
        "fixed_wall_seconds_per_frame": sum(r["fixed"]["wall_seconds"] for r in results)
        / frames,
        "fixed_search_seconds": sum(r["fixed_search"]["seconds"] for r in results),
        "all_fixed_meet_floor": all(r["fixed_meets_floor"] for r in results),
    }


# --------------------------------------------------------------------------- main


def resolve_clip(name: str) -> Path:
    path = Path(name)
    if not path.exists():
        path = MEDIA / name
    if not path.exists():
        raise SystemExit(f"clip not found: {name} (looked in {MEDIA})")
    return path.resolve()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--clips", default=",".join(DEFAULT_CLIPS),
        help=f"comma-separated names in {MEDIA} or paths (default: %(default)s)",
    )
    parser.add_argument("--target", type=float, default=93.0, help="QRO VMAF target")
    parser.add_argument(
        "--tolerance", type=float, default=0.5,
        help="per-GOP floor is target minus this, for QRO's checks and the CRF search",
    )
    parser.add_argument("--preset", default="medium", help="final encode preset (both)")
    parser.add_argument("--probe-preset", default="veryfast", help="QRO probe preset")
    parser.add_argument(
        "--mode-select", choices=["probe", "predict"], default="probe",
        help="QRO mode selection: probe encodes, or the shipped SI/TI predictor",
    )
    parser.add_argument("--crf-min", type=int, default=10)
    parser.add_argument("--crf-max", type=int, default=40)
    parser.add_argument("--gop-seconds", type=float, default=None, help="passed to both")
    parser.add_argument(
        "--vmaf-threads", type=int, default=default_threads(), help="libvmaf threads"
    )
    parser.add_argument(
        "--retries", type=int, default=2,
        help="reruns of a failed gopflow transcode (Ray start-up timeouts on busy machines)",
    )
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "out" / "qro")
    parser.add_argument(
        "--reuse", action="store_true",
        help="reuse encodes and scores of an earlier run in --out-dir with the same settings "
        "(to finish an interrupted run; not after changing gopflow's code)",
    )
    parser.add_argument(
        "--keep-restored", action="store_true", help="keep the restored FFV1 files"
    )
    args = parser.parse_args(argv)
    if not args.crf_min <= args.crf_max:
        parser.error("--crf-min must not exceed --crf-max")
    if args.tolerance < 0:
        parser.error("--tolerance must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clips = [resolve_clip(c.strip()) for c in args.clips.split(",") if c.strip()]
    args.out_dir = args.out_dir.resolve()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = [bench_clip(args, clip) for clip in clips]
    totals = combine(results)
    floor = args.target - args.tolerance
    print(
        f"QRO --target-vmaf {args.target:g} vs the highest fixed CRF with every GOP's VMAF >= "
        f"{floor:g}; x264 --preset {args.preset}, QRO probes --preset {args.probe_preset}; "
        "VMAF of the restored output vs the source, mean per GOP"
    )
    print()
    print(summary_table(results, totals))
    print()
    print(gop_table(results))
    print()
    print(
        f"fixed-CRF search: {totals['fixed_search_seconds']:.0f} s in all (encodes, restores, "
        f"VMAF); whole benchmark {time.perf_counter() - started:.0f} s; "
        f"{os.cpu_count()} CPUs"
    )
    out = args.out_dir / "qro_results.json"
    out.write_text(json.dumps({
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "floor": floor,
        "environment": {
            "gopflow": __version__, "python": platform.python_version(),
            "platform": platform.platform(), "cpus": os.cpu_count(),
        },
        "clips": results,
        "totals": totals,
        "seconds": time.perf_counter() - started,
    }, indent=1))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
