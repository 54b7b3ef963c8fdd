"""Rate-distortion benchmark of the precoders (issue 4, item 7), all methods side by side.

Per clip, the first ``--frames`` frames are decoded once to a y4m file (scratch under
``bench/out/precoders``), then coded with x264 ``medium`` at each ``--crfs`` point as:

* ``x264``       no precoding (full size);
* ``lanczos``    ffmpeg ``scale=...:flags=lanczos`` to 3/4, 2/3, 1/2, restored bicubically
                 (:func:`gopflow.precoders.restore.restore_frames`);
* ``dvp``        the learned DVP downscaler (:class:`DvpPrecoder`, learned luma, Lanczos
                 chroma) at each scale, restored bicubically;
* ``dvp-select`` DVP with mode selection: the union of the full-size and all DVP points,
                 reduced to its Pareto front in (log-rate, quality) -- for each rate the
                 best quality any scale gives. It is an oracle choice, made per metric (the
                 VMAF NEG front for VMAF NEG BD-rates, the PSNR-Y front for PSNR);
* ``dvp-qro``    the real pipeline's DVP mode selection (``--pipeline-targets``):
                 ``gopflow transcode --precoder dvp --target-vmaf-neg V --no-half-rate`` (the
                 metric of the tables; ``--pipeline-metric`` picks another) on the
                 same source, where QRO probe encodes choose the scale and CRF per GOP; the
                 output file (sizes changing per GOP) restored bicubically like every
                 other point. Unlike ``dvp-select`` this is no oracle: it is what users get.
* ``vistra``     the Lanczos streams (the very same .mp4 files as ``lanczos``) at each scale
                 restored with the learned up-sampler (:class:`LearnedRestorer`) instead of
                 bicubic.
* ``lanczos-t`` / ``vistra-t``  ViSTRA's spatio-temporal mode: Lanczos 1/2 *and* every other
                 frame dropped (coded at half the frame rate), restored to full size and
                 rate with bicubic + frame repetition, or with the learned up-sampler +
                 learned frame interpolator (the same .mp4 files for both).

A clip given as ``NAME@WxH`` is Lanczos-resized to ``W x H`` first (the 1080p clip at 720p).
With more than four CRFs, the BD-rate table is printed twice: over all points, and over
the four lowest-rate points (the low-rate end).

Bits are the bytes of the written .mp4 files. Quality is measured at source resolution
after restoration: VMAF NEG (libvmaf ``vmaf_v0.6.1neg``, mean over frames) and PSNR-Y
(mean of per-frame luma PSNR) against the decoded source. BD-rates (``--bd-method``,
PCHIP by default) are negative when the test method needs fewer bits for the same quality.

Usage::

    .venv/bin/python bench/precoders.py [--frames 60] [--crfs 23,28,33,38] [CLIP[@WxH] ...]
    # one scale, no ViSTRA rows, candidate weights from another registry:
    .venv/bin/python bench/precoders.py --scales 1/2 --no-vistra --registry DIR --tag T ...
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from gopflow.errors import BdRateError
from gopflow.media.ffmpeg import find_ffmpeg
from gopflow.precoders import restore
from gopflow.precoders.dvp import DvpPrecoder
from gopflow.precoders.resample import scaled_size
from gopflow.precoders.restore import RestoreTarget
from gopflow.precoders.vistra import LearnedRestorer
from gopflow.quality.bd import bd_rate
from gopflow.quality.metrics import psnr_from_mse
from gopflow.quality.vmaf import vmaf_scores

MEDIA = Path("/work/shared/media")
DEFAULT_CLIPS = ("white_flower_1280x720.264", "flower_960x540.mp4")
RAW_FPS = {".264": Fraction(30), ".h264": Fraction(30)}  # elementary streams carry no rate
SCALES = (Fraction(3, 4), Fraction(2, 3), Fraction(1, 2))
VISTRA_SCALE = Fraction(1, 2)
OUT = Path(__file__).resolve().parent / "out" / "precoders"
THREADS = 2
TORCH_THREADS = 1
"""Torch threads for the learned models: with the other core busy, 2 OpenMP threads wait on
a descheduled peer and run 5-20x slower (see ``precoders.inference.default_threads``)."""


def ffmpeg(*args: str) -> None:
    command = [find_ffmpeg().path, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
               *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"ffmpeg failed ({done.returncode}): {done.stderr.strip()}")


class Source:
    """The first ``frames`` frames of a clip, decoded once to y4m, with luma in memory."""

    def __init__(self, clip: Path, frames: int, work: Path, size: str | None = None) -> None:
        self.clip, self.work = clip, work
        self.y4m = work / "source.y4m"
        rate = RAW_FPS.get(clip.suffix)
        pre = ["-framerate", str(rate)] if rate else []
        resize = ["-vf", f"scale={size.replace('x', ':')}:flags=lanczos"] if size else []
        ffmpeg(*pre, "-i", str(clip), "-frames:v", str(frames), "-an", *resize,
               "-pix_fmt", "yuv420p", "-f", "yuv4mpegpipe", str(self.y4m))
        with av.open(str(self.y4m)) as box:
            stream = box.streams.video[0]
            self.fps = Fraction(stream.average_rate)
            self.width, self.height = stream.codec_context.width, stream.codec_context.height
        with self.y4m.open("rb") as fh:
            self.header = fh.readline()
        self.luma = [plane for plane in self._lumas()]
        self.frames = len(self.luma)
        self.target = RestoreTarget(self.width, self.height, self.fps, self.frames)

    def _lumas(self) -> Iterator[np.ndarray]:
        for frame in self.decoded():
            yield frame.to_ndarray()[: frame.height].copy()

    def decoded(self) -> Iterator[av.VideoFrame]:
        with av.open(str(self.y4m)) as box:
            yield from box.decode(video=0)

    def kbps(self, path: Path) -> float:
        return path.stat().st_size * 8 / (self.frames / float(self.fps)) / 1000.0


def downscale_raw(
    source: Source, scale: Fraction, method: str, half_rate: bool = False
) -> tuple[Path, int, int]:
    """The source at ``scale`` as packed yuv420p (Lanczos via ffmpeg, or the learned DVP);
    ``half_rate``: every other frame only (Lanczos)."""
    width, height = scaled_size(source.width, source.height, scale)
    tag = "-t" if half_rate else ""
    path = source.work / f"{method}{tag}-{scale.numerator}_{scale.denominator}.yuv"
    if method == "lanczos":
        select = "select='not(mod(n\\,2))'," if half_rate else ""
        ffmpeg("-i", str(source.y4m), "-vf", f"{select}scale={width}:{height}:flags=lanczos",
               "-fps_mode", "passthrough", "-pix_fmt", "yuv420p", "-f", "rawvideo", str(path))
    else:
        precoder = DvpPrecoder(scale, threads=TORCH_THREADS, registry_dir=REGISTRY)
        assert precoder.size(source.width, source.height) == (width, height)
        with path.open("wb") as fh:
            for frame in source.decoded():
                fh.write(precoder.down(frame))
    return path, width, height


def encode(source: Source, raw: Path | None, size: tuple[int, int], crf: int,
           out: Path, half_rate: bool = False) -> None:
    """x264 medium at ``crf`` of the y4m source (``raw`` None) or a packed yuv420p file
    (at half the frame rate if ``half_rate``)."""
    if raw is None:
        inputs = ["-i", str(source.y4m)]
    else:
        rate = source.fps / 2 if half_rate else source.fps
        inputs = ["-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{size[0]}x{size[1]}",
                  "-framerate", str(rate), "-i", str(raw)]
    ffmpeg(*inputs, "-an", "-c:v", "libx264", "-preset", "medium", "-crf", str(crf),
           "-pix_fmt", "yuv420p", "-threads", str(THREADS), str(out))


def measure(source: Source, stream: Path, restorer: LearnedRestorer | None) -> dict:
    """Restore ``stream`` to the source geometry, write it as y4m, score it, delete it."""
    restored = stream.with_suffix(".restored.y4m")
    mses = []
    y_size = source.width * source.height
    with av.open(str(stream)) as box, restored.open("wb") as fh:
        fh.write(source.header)
        frames: Iterable[av.VideoFrame] = box.decode(video=0)
        packed = (restorer.restore_frames(frames, source.target) if restorer
                  else restore.restore_frames(frames, source.target))
        for index, data in enumerate(packed):
            fh.write(b"FRAME\n")
            fh.write(data)
            luma = np.frombuffer(data, np.uint8, y_size).reshape(source.height, source.width)
            diff = luma.astype(np.int32) - source.luma[index]
            mses.append(float(np.mean(diff * diff)))
    vmaf = vmaf_scores(str(source.y4m), str(restored), models=("vmaf_neg",), threads=THREADS)
    restored.unlink()
    return {
        "psnr_y": float(np.mean([psnr_from_mse(m) for m in mses])),
        "vmaf_neg": float(np.mean(vmaf["vmaf_neg"])),
    }


def pareto(points: list[dict], metric: str) -> list[dict]:
    """Points no other point beats on both rate and quality, by rate (mode selection)."""
    front: list[dict] = []
    for point in sorted(points, key=lambda p: (p["kbps"], -p[metric])):
        if not front or point[metric] > front[-1][metric]:
            front.append(point)
    return front


REGISTRY: str | None = None
"""Weights registry for the fixed-scale ``dvp`` rows (``--registry``; default the package's)."""
PIPELINE_METRIC = "vmaf-neg"
"""The pipeline's QRO target metric: the one the BD-rate tables measure (``--pipeline-metric``)."""


def pipeline_encode(source: Source, target: float, out: Path) -> list[str]:
    """``gopflow transcode`` with DVP mode selection at a ``PIPELINE_METRIC`` target; the
    chosen modes."""
    report = out.with_suffix(".json")
    command = [str(Path(sys.executable).with_name("gopflow")), "transcode", str(source.y4m),
               "-o", str(out), f"--target-{PIPELINE_METRIC}", f"{target:g}", "--precoder", "dvp",
               "--no-half-rate", "--no-progress", "--report", str(report)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"gopflow transcode failed: {done.stderr.strip()[-500:]}")
    gops = json.loads(report.read_text())["gops"]
    return [f"{g['decision']['scale']}@{g['decision']['crf']}" for g in gops]


def run_clip(clip: Path, frames: int, crfs: list[int], size: str | None = None,
             targets: list[float] | None = None, pipeline_only: bool = False,
             scales: tuple[Fraction, ...] = SCALES, vistra: bool = True, label: str = "") -> dict:
    suffix = ("-pipeline" if pipeline_only else "") + (f"-{label}" if label else "")
    work = OUT / (clip.stem + (f"@{size}" if size else "") + suffix)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    source = Source(clip, frames, work, size)
    print(f"\n== {clip.name}: {source.width}x{source.height} @ {source.fps} fps, "
          f"{source.frames} frames", flush=True)
    learned = LearnedRestorer(threads=TORCH_THREADS, temporal=False)
    learned_st = LearnedRestorer(threads=TORCH_THREADS, temporal=True)
    points: list[dict] = []

    def add(method: str, scale: Fraction, crf: int, stream: Path,
            restorer: LearnedRestorer | None = None) -> None:
        started = time.perf_counter()
        point = {"method": method, "scale": str(scale), "crf": crf,
                 "kbps": source.kbps(stream), **measure(source, stream, restorer)}
        points.append(point)
        print(f"   {method:<8} {scale!s:>4} crf {crf}: {point['kbps']:8.1f} kbps "
              f"PSNR-Y {point['psnr_y']:6.2f} VMAF NEG {point['vmaf_neg']:6.2f} "
              f"({time.perf_counter() - started:.1f} s)", flush=True)

    for crf in crfs:
        stream = work / f"x264-crf{crf}.mp4"
        encode(source, None, (source.width, source.height), crf, stream)
        add("x264", Fraction(1), crf, stream)
    for method in () if pipeline_only else ("lanczos", "dvp"):
        for scale in scales:
            raw, width, height = downscale_raw(source, scale, method)
            for crf in crfs:
                stream = work / f"{method}-{scale.numerator}_{scale.denominator}-crf{crf}.mp4"
                encode(source, raw, (width, height), crf, stream)
                add(method, scale, crf, stream)
                if method == "lanczos" and vistra:
                    add("vistra", scale, crf, stream, learned)
            raw.unlink()
    for crf in crfs if vistra and not pipeline_only else []:
        if crf == crfs[0]:
            raw, width, height = downscale_raw(source, VISTRA_SCALE, "lanczos", half_rate=True)
        tag = f"{VISTRA_SCALE.numerator}_{VISTRA_SCALE.denominator}"
        stream = work / f"lanczos-t-{tag}-crf{crf}.mp4"
        encode(source, raw, (width, height), crf, stream, half_rate=True)
        add("lanczos-t", VISTRA_SCALE, crf, stream)
        add("vistra-t", VISTRA_SCALE, crf, stream, learned_st)
        if crf == crfs[-1]:
            raw.unlink()
    for target in targets or []:
        stream = work / f"dvp-qro-vmaf{target:g}.mkv"
        modes = pipeline_encode(source, target, stream)
        add("dvp-qro", Fraction(0), int(target), stream)
        points[-1]["modes"] = modes
        print(f"   (dvp-qro target {target:g}: scale@crf per GOP {', '.join(modes)})")
    name = clip.name + (f"@{size}" if size else "")
    return {"clip": name, "width": source.width, "height": source.height,
            "fps": str(source.fps), "frames": source.frames, "points": points}


def curve(points: list[dict], method: str, scale: str | None = None) -> list[dict]:
    return [p for p in points if p["method"] == method and (scale is None or p["scale"] == scale)]


def bd(anchor: list[dict], test: list[dict], metric: str, method: str) -> float | None:
    try:
        return bd_rate([p["kbps"] for p in anchor], [p[metric] for p in anchor],
                       [p["kbps"] for p in test], [p[metric] for p in test], method=method)
    except BdRateError as exc:
        print(f"   (BD-rate n/a: {exc})")
        return None


def report(result: dict, bd_method: str) -> None:
    # dvp-qro points carry their VMAF target, not a CRF: they join every table, and the
    # BD-rate integrates over the rates both curves cover.
    fixed = [p for p in result["points"] if p["method"] != "dvp-qro"]
    crfs = sorted({p["crf"] for p in fixed})
    bd_table(result, bd_method, result["points"], "all points")
    if len(crfs) > 4:
        low = set(crfs[-4:])
        bd_table(result, bd_method,
                 [p for p in result["points"] if p["method"] == "dvp-qro" or p["crf"] in low],
                 f"low-rate end: CRF {min(low)}-{max(low)}", key="bd_rate_low")


def merge(files: list[Path]) -> list[dict]:
    """Results of earlier runs, points of the same clip merged (same-setting points once)."""
    clips: dict[str, dict] = {}
    for path in files:
        for result in json.loads(path.read_text())["clips"]:
            into = clips.setdefault(result["clip"], {**result, "points": []})
            seen = {(p["method"], p["scale"], p["crf"]) for p in into["points"]}
            into["points"] += [p for p in result["points"]
                               if (p["method"], p["scale"], p["crf"]) not in seen]
    for result in clips.values():
        result.pop("dvp_select", None)
    return list(clips.values())


def bd_table(result: dict, bd_method: str, points: list[dict], title: str,
             key: str = "bd_rate") -> None:
    print(f"\n## {result['clip']} ({result['width']}x{result['height']}, "
          f"{result['frames']} frames @ {result['fps']} fps), x264 medium")
    if key == "bd_rate":
        print(f"{'method':<10} {'scale':>5} {'crf':>4} {'kbps':>9} {'PSNR-Y':>7} "
              f"{'VMAF NEG':>9}")
        for p in points:
            print(f"{p['method']:<10} {p['scale']:>5} {p['crf']:>4} {p['kbps']:9.1f} "
                  f"{p['psnr_y']:7.2f} {p['vmaf_neg']:9.2f}")
    full = curve(points, "x264")
    dvp_union = full + curve(points, "dvp")
    selections = {m: pareto(dvp_union, m) for m in ("vmaf_neg", "psnr_y")}
    result.setdefault("dvp_select", selections)
    for metric, front in selections.items():
        chosen = ", ".join(f"{p['scale']}@{p['crf']}" for p in front)
        print(f"dvp-select front ({metric}): {chosen}")
    rows: list[tuple[str, list[dict], dict[str, list[dict]]]] = []
    for scale in SCALES:
        rows.append((f"lanczos {scale} vs x264", full, {"": curve(points, "lanczos", str(scale))}))
    for scale in SCALES:
        rows.append((f"dvp {scale} vs x264", full, {"": curve(points, "dvp", str(scale))}))
    rows.append(("dvp-select (oracle) vs x264", full, {m: f for m, f in selections.items()}))
    if curve(points, "dvp-qro"):
        rows.append(("dvp-qro (pipeline) vs x264", full, {"": curve(points, "dvp-qro")}))
    rows.append((f"vistra {VISTRA_SCALE} (learned up) vs x264", full,
                 {"": curve(points, "vistra", str(VISTRA_SCALE))}))
    for scale in SCALES:
        rows.append((f"dvp {scale} vs lanczos {scale}", curve(points, "lanczos", str(scale)),
                     {"": curve(points, "dvp", str(scale))}))
    for scale in SCALES:
        rows.append((f"vistra learned-up vs bicubic-up ({scale})",
                     curve(points, "lanczos", str(scale)),
                     {"": curve(points, "vistra", str(scale))}))
    rows.append((f"vistra-t learned vs bicubic+repeat ({VISTRA_SCALE}, half)",
                 curve(points, "lanczos-t"), {"": curve(points, "vistra-t")}))
    rows.append(("vistra-t learned vs x264", full, {"": curve(points, "vistra-t")}))
    print(f"\nBD-rate ({bd_method}, {title}), negative = fewer bits for the same quality")
    print(f"{'comparison':<42} {'VMAF NEG':>9} {'PSNR-Y':>8}")
    table = []
    for label, anchor, tests in rows:
        if not anchor or not any(tests.values()):
            continue  # a method this run skipped (--pipeline-only)
        values = {m: bd(anchor, tests.get(m, tests.get("")), m, bd_method)
                  for m in ("vmaf_neg", "psnr_y")}
        table.append({"comparison": label, **values})
        cells = " ".join(f"{'n/a' if v is None else f'{v:+.1f}%':>{w}}"
                         for v, w in zip(values.values(), (9, 8), strict=True))
        print(f"{label:<42} {cells}")
    result[key] = {"method": bd_method, "points": title, "rows": table}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 5.5), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        points = result["points"]
        series = [("x264 (full size)", curve(points, "x264"), ("-", "black"))]
        for scale, colour in zip(SCALES, ("tab:blue", "tab:green", "tab:red"), strict=True):
            series.append((f"lanczos {scale}", curve(points, "lanczos", str(scale)),
                           ("--", colour)))
            series.append((f"dvp {scale}", curve(points, "dvp", str(scale)), ("-", colour)))
        series.append(("dvp-select (front)", result["dvp_select"]["vmaf_neg"], ("-", "purple")))
        series.append((f"vistra {VISTRA_SCALE} learned up",
                       curve(points, "vistra", str(VISTRA_SCALE)), (":", "orange")))
        if curve(points, "dvp-qro"):
            series.append(("dvp-qro (pipeline)", curve(points, "dvp-qro"), ("-.", "magenta")))
        for label, pts, style in series:
            pts = sorted(pts, key=lambda p: p["kbps"])
            x, y = [p["kbps"] for p in pts], [p["vmaf_neg"] for p in pts]
            width = 2.5 if label.startswith(("dvp-select", "x264")) else 1.2
            ax.plot(x, y, linestyle=style[0], color=style[1], marker=".",
                    linewidth=width, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("kbps")
        ax.set_ylabel("VMAF NEG (at source resolution)")
        ax.set_title(f"{result['clip']} ({result['frames']} frames, x264 medium)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clips", nargs="*", default=list(DEFAULT_CLIPS),
                        help=f"clips (names under {MEDIA} or paths)")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--crfs", default="23,28,33,38")
    parser.add_argument("--bd-method", choices=("pchip", "cubic"), default="pchip")
    parser.add_argument("--pipeline-only", action="store_true",
                        help="only x264 and the pipeline's dvp-qro points (results-pipeline.json)")
    parser.add_argument("--pipeline-targets", default="",
                        help="quality targets for gopflow transcode --precoder dvp "
                        "(e.g. 70,80,86,91)")
    parser.add_argument("--pipeline-metric", choices=("vmaf-neg", "vmaf", "psnr"),
                        default="vmaf-neg", help="the metric the pipeline's QRO targets "
                        "(default vmaf-neg: the one the BD-rate tables measure)")
    parser.add_argument("--scales", default="3/4,2/3,1/2",
                        help="fixed scales for the lanczos/dvp/vistra rows (3/4,2/3,1/2)")
    parser.add_argument("--no-vistra", action="store_true",
                        help="skip the ViSTRA rows (learned restoration, half rate)")
    parser.add_argument("--registry", metavar="DIR",
                        help="weights registry for the fixed-scale dvp rows (e.g. a candidate "
                        "installed with gopflow train precoder --install --registry DIR)")
    parser.add_argument("--tag", default="",
                        help="suffix for the scratch dir and the results/plot file names")
    parser.add_argument("--report", nargs="+", type=Path, metavar="JSON",
                        help="no encoding: print the tables of earlier results files (merged "
                        "per clip, e.g. results.json results-pipeline.json) and plot them")
    args = parser.parse_args()
    if args.report:
        results = merge(args.report)
        for result in results:
            report(result, args.bd_method)
        plot(results, OUT / "rd_vmaf_neg-merged.png")
        print(f"\nplot: {OUT / 'rd_vmaf_neg-merged.png'}")
        return
    crfs = [int(c) for c in args.crfs.split(",")]
    if len(crfs) < 4:
        parser.error("BD-rates need at least 4 rate points (--crfs)")
    global PIPELINE_METRIC, REGISTRY
    PIPELINE_METRIC, REGISTRY = args.pipeline_metric, args.registry
    scales = tuple(Fraction(s) for s in args.scales.split(","))
    if not all(s in SCALES for s in scales):
        parser.error(f"--scales must be among {', '.join(map(str, SCALES))}")
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = []
    for spec in args.clips:
        name, _, size = spec.partition("@")
        clip = Path(name) if Path(name).exists() else MEDIA / name
        targets = [float(t) for t in args.pipeline_targets.split(",") if t]
        results.append(run_clip(clip, args.frames, crfs, size or None, targets,
                                args.pipeline_only, scales, not args.no_vistra, args.tag))
    for result in results:
        report(result, args.bd_method)
    suffix = ("-pipeline" if args.pipeline_only else "") + (f"-{args.tag}" if args.tag else "")
    png, js = OUT / f"rd_vmaf_neg{suffix}.png", OUT / f"results{suffix}.json"
    plot(results, png)
    js.write_text(json.dumps({"frames": args.frames, "crfs": crfs, "clips": results},
                             indent=1, default=str))
    elapsed = time.perf_counter() - started
    print(f"\nplot: {png}\njson: {js}\nelapsed: {elapsed:.0f} s ({math.floor(elapsed / 60)} min)")


if __name__ == "__main__":
    main()
