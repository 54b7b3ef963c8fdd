"""RD benchmark of the learned codecs (DVC, FVC, learned intra) against x264 and x265.

For each clip (first ``--frames`` frames; red_trees_drive down-scaled to 1280x720 with
Lanczos; none of them trained on) a lossless 4:2:0 reference is made with ffmpeg (FFV1), then:

- learned ``dvc``/``fvc``/``intra`` (shipped weights, or ``--registry``) at every quality
  level, GOPs of ``--gop`` frames, written as a real .gflv file (``write_stream``); the file
  is decoded again from disk (decode speed; the decode must equal the encoder's recon);
  encoder options as ``+`` suffixes: ``+ai`` the adaptive intra decision
  (``gopflow transcode --adaptive-intra``; each point lists its frame types), ``+rdo`` the
  residual dead-zone choice (``--rdo``), ``+kN`` intra frames N levels up (``--intra-offset``);
  e.g. ``dvc+ai+k2``;
- x264 and x265 at ``veryfast`` and ``medium`` with the same GOP length (``-g``, no scene
  cut) and no B-frames (``-bf 0``), plus each encoder's defaults (medium, default GOP and
  B-frames) for reference, at ``--crfs``; raw elementary streams, decoded with PyAV.

Rates: ``8 * file size / (width * height * frames)`` bits per pixel, from the written files
(never from likelihoods). Quality against the reference frames: PSNR over RGB (PyAV's RGB24
of both), PSNR-Y and MS-SSIM (Y) from :func:`gopflow.quality.metrics.compare_frames`; per
frame, then averaged. BD-rate (:mod:`gopflow.quality.bd`, cubic) of every codec against
x264 veryfast on PSNR-RGB and on MS-SSIM. Everything runs on one thread (torch and the
encoders), so the fps columns are single-core speeds on this CPU. Writes
``bench/out/codecs/results.json``, ``rd-<clip>.png`` and prints the table.

    .venv/bin/python bench/codecs.py --frames 10              # all clips
    .venv/bin/python bench/codecs.py --quick                  # one small clip, a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from gopflow.codecs.learned.api import CodedFrame
from gopflow.codecs.learned.bitstream import (
    StreamHeader,
    Unit,
    gop_structure,
    read_gop,
    read_header,
    scan_gops,
    write_stream,
)
from gopflow.errors import BdRateError
from gopflow.media.ffmpeg import find_ffmpeg
from gopflow.pipeline.stages import rgb_frames
from gopflow.quality.bd import bd_rate
from gopflow.quality.metrics import compare_frames

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO.parent / "shared" / "media"
CLIPS = {
    "white_flower": ("white_flower_1280x720.264", None),
    "red_trees_drive": ("red_trees_drive_1920x1080.264", "1280:720"),
    "flower": ("flower_960x540.mp4", None),
}
LEARNED = ("dvc", "fvc", "intra")
ANCHOR = "x264-veryfast"


@dataclass(frozen=True)
class Point:
    """One RD point."""

    clip: str
    codec: str
    setting: str
    bytes: int
    bpp: float
    psnr_rgb: float
    psnr_y: float
    msssim: float
    encode_fps: float
    decode_fps: float
    frame_types: str = ""
    """Learned codecs: the coded frame types in order (I intra, P inter)."""


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _reference(name: str, frames: int, out: Path) -> Path:
    source, scale = CLIPS[name]
    path = out / f"{name}-{frames}f.mkv"
    if not path.exists():
        chain = (f"scale={scale}:flags=lanczos," if scale else "") + "format=yuv420p"
        subprocess.run(
            [find_ffmpeg().path, "-nostdin", "-v", "error", "-y", "-i", str(MEDIA / source),
             "-frames:v", str(frames), "-vf", chain, "-c:v", "ffv1", "-an", str(path)],
            check=True,
        )
    return path


def _decode(path: Path) -> list[Any]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        return list(container.decode(stream))


def _quality(ref: list[Any], ref_rgb: list[np.ndarray], dist: list[Any]) -> dict[str, float]:
    """PSNR-RGB, PSNR-Y, MS-SSIM (Y) of PyAV frames ``dist`` against the reference."""
    scores = compare_frames(ref, dist, ("psnr", "msssim"), threads=1)
    values = {s.name: float(np.mean(s.values)) for s in scores.series}
    dist_rgb = rgb_frames(dist)
    return {
        "psnr_rgb": float(np.mean([_psnr(a, b) for a, b in zip(ref_rgb, dist_rgb, strict=True)])),
        "psnr_y": values["psnr_y"],
        "msssim": values["msssim_y"],
    }


def _ffmpeg_point(
    clip: str, ref_path: Path, ref: list[Any], ref_rgb: list[np.ndarray], codec: str,
    preset: str, gop: int | None, crf: int, out: Path,
) -> Point:
    tag = f"{codec}-{preset}" + ("" if gop else "-default")
    stream = out / f"{clip}-{tag}-crf{crf}.{'h264' if codec == 'x264' else 'hevc'}"
    command = [find_ffmpeg().path, "-nostdin", "-v", "error", "-y", "-i", str(ref_path),
               "-preset", preset, "-crf", str(crf), "-threads", "1"]
    if codec == "x264":
        command += ["-c:v", "libx264", "-x264-params", "threads=1"]
        if gop:
            command += ["-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0", "-bf", "0"]
    else:
        params = "pools=1:frame-threads=1:log-level=error"
        if gop:
            params += f":keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0"
        command += ["-c:v", "libx265", "-x265-params", params]
    started = time.perf_counter()
    subprocess.run([*command, str(stream)], check=True)
    encode = time.perf_counter() - started
    started = time.perf_counter()
    dist = _decode(stream)
    decode = time.perf_counter() - started
    size = stream.stat().st_size
    width, height = ref[0].width, ref[0].height
    return Point(clip, tag, f"crf {crf}", size, 8 * size / (width * height * len(ref)),
                 **_quality(ref, ref_rgb, dist), encode_fps=len(ref) / encode,
                 decode_fps=len(ref) / decode)


def parse_label(label: str) -> tuple[str, bool, bool, int]:
    """``"dvc+ai+rdo+k2"`` -> ``("dvc", True, True, 2)``: codec, adaptive intra, dead-zone
    choice, intra offset."""
    name, *options = label.split("+")
    offsets = [int(o[1:]) for o in options if o[:1] == "k" and o[1:].isdigit()]
    if len(options) != len({"ai", "rdo"} & set(options)) + len(offsets) or len(offsets) > 1:
        raise SystemExit(f"bad codec label {label!r}: options are +ai, +rdo, +kN")
    return name, "ai" in options, "rdo" in options, offsets[0] if offsets else 0


def _learned_point(
    clip: str, label: str, codec: Any, level: int, ref: list[Any], ref_rgb: list[np.ndarray],
    gop: int, fps: Any, out: Path,
) -> Point:
    offset = parse_label(label)[3]
    path = out / f"{clip}-{label}-q{level}.gflv"
    started = time.perf_counter()
    units: list[Unit] = []
    recon: list[np.ndarray] = []
    for first in range(0, len(ref_rgb), gop):
        coded = codec.encode_gop(ref_rgb[first : first + gop], level, offset)
        units += [Unit(f.kind, first + i, f.payload) for i, f in enumerate(coded.frames)]
        recon += coded.recon
    height, width = ref_rgb[0].shape[:2]
    gops, longest = gop_structure(unit.kind for unit in units)
    header = StreamHeader(codec.model_id, width, height, fps, longest, len(ref_rgb), gops, level,
                          offset)
    size = write_stream(str(path), header, units)
    encode = time.perf_counter() - started
    started = time.perf_counter()
    decoded: list[np.ndarray] = []
    with open(path, "rb") as handle:
        header = read_header(handle, str(path))
        for extent in scan_gops(handle, header, str(path)):
            frames = [CodedFrame(u.kind, u.payload) for u in read_gop(handle, extent)]
            decoded += codec.decode_gop(frames, width, height, level, header.intra_offset)
    decode = time.perf_counter() - started
    if any(not np.array_equal(a, b) for a, b in zip(decoded, recon, strict=True)):
        raise SystemExit(f"{path}: the decode differs from the encoder's reconstruction")
    dist = [av.VideoFrame.from_ndarray(frame, format="rgb24") for frame in decoded]
    return Point(clip, label, f"q{level}", size, 8 * size / (width * height * len(ref)),
                 **_quality(ref, ref_rgb, dist), encode_fps=len(ref) / encode,
                 decode_fps=len(ref) / decode,
                 frame_types="".join(chr(unit.kind) for unit in units))


def _bd_table(points: list[Point]) -> list[dict[str, Any]]:
    rows = []
    for clip in sorted({p.clip for p in points}):
        anchor = [p for p in points if p.clip == clip and p.codec == ANCHOR]
        for codec in sorted({p.codec for p in points if p.clip == clip}):
            test = [p for p in points if p.clip == clip and p.codec == codec]
            row: dict[str, Any] = {"clip": clip, "codec": codec}
            # Levels whose files are identical (an intra offset capped at the top level) are
            # one point on the curve.
            test = list({(p.bytes, p.psnr_rgb, p.msssim): p for p in test}.values())
            for metric in ("psnr_rgb", "msssim"):
                try:
                    row[metric] = round(bd_rate(
                        [p.bpp for p in anchor], [getattr(p, metric) for p in anchor],
                        [p.bpp for p in test], [getattr(p, metric) for p in test]), 2)
                except BdRateError as exc:
                    row[metric] = None
                    row[f"{metric}_why"] = str(exc)
            rows.append(row)
    return rows


def _plot(points: list[Point], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for clip in sorted({p.clip for p in points}):
        figure, axes = plt.subplots(1, 2, figsize=(12, 5))
        for codec in sorted({p.codec for p in points if p.clip == clip}):
            curve = sorted((p for p in points if p.clip == clip and p.codec == codec),
                           key=lambda p: p.bpp)
            style = "o-" if codec.split("+")[0] in LEARNED else ".--"
            for axis, metric in zip(axes, ("psnr_rgb", "msssim"), strict=True):
                axis.plot([p.bpp for p in curve], [getattr(p, metric) for p in curve], style,
                          label=codec)
        for axis, label in zip(axes, ("PSNR RGB (dB)", "MS-SSIM (Y)"), strict=True):
            axis.set_xlabel("bits per pixel (from file sizes)")
            axis.set_ylabel(label)
            axis.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        figure.suptitle(f"{clip}: learned codecs vs x264/x265")
        figure.tight_layout()
        path = out / f"rd-{clip}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(str(path))
    return written


def _model_sizes(registry: str | None) -> dict[str, int]:
    from gopflow.codecs.learned.engine import registry_name
    from gopflow.zoo.registry import WEIGHTS_DIR, read_registry

    root = Path(registry) if registry else WEIGHTS_DIR
    entries = read_registry(registry)
    return {name: (root / entries[registry_name(name)].file).stat().st_size
            for name in LEARNED if registry_name(name) in entries}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", default=",".join(CLIPS), help="comma-separated clip names")
    parser.add_argument("--frames", type=int, default=10, help="frames per clip (10)")
    parser.add_argument("--gop", type=int, default=10, help="GOP length, all codecs (10)")
    parser.add_argument("--codecs", default=",".join(LEARNED),
                        help="learned codecs to run: NAME[+ai][+rdo][+kN] (dvc, fvc with "
                        "adaptive intra, rate-distortion choices of levels and dead zones, "
                        "intra frames N levels up)")
    parser.add_argument("--crfs", default="20,24,28,32,36,40", help="x264 CRFs")
    parser.add_argument("--x265-crfs", default="22,26,30,34,38,42", help="x265 CRFs")
    parser.add_argument("--presets", default="veryfast,medium")
    parser.add_argument("--no-x265", action="store_true")
    parser.add_argument("--registry", help="weights registry (default: shipped weights)")
    parser.add_argument("--levels", help="comma-separated quality levels of the learned "
                        "codecs (default: all)")
    parser.add_argument("--add-points", type=Path, action="append", default=[],
                        metavar="RESULTS", help="learned-codec points of another run (its "
                        "results.json: the same clips, frames and GOP) to add to this run's "
                        "table, for a benchmark split across processes by --levels")
    parser.add_argument("--quick", action="store_true", help="flower, 4 frames, GOP 4")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "codecs")
    args = parser.parse_args(argv)
    if args.quick:
        args.clips, args.frames, args.gop = "flower", 4, 4
    import torch

    from gopflow.codecs.learned.engine import load_codec

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    codecs = {}
    for label in (item for item in args.codecs.split(",") if item):
        name, adaptive, rdo, _ = parse_label(label)
        codecs[label] = load_codec(name, args.registry, adaptive_intra=adaptive, rdo=rdo)
    levels = None if args.levels is None else [int(level) for level in args.levels.split(",")]
    points: list[Point] = []
    for clip in args.clips.split(","):
        ref_path = _reference(clip, args.frames, args.out)
        ref = _decode(ref_path)
        ref_rgb = rgb_frames(ref)
        fps = av.open(str(ref_path)).streams.video[0].average_rate
        print(f"{clip}: {ref[0].width}x{ref[0].height}, {len(ref)} frames", file=sys.stderr)
        for label, codec in codecs.items():
            for level in range(1, codec.levels + 1) if levels is None else levels:
                points.append(_learned_point(clip, label, codec, level, ref, ref_rgb, args.gop,
                                             fps, args.out))
                print(f"  {points[-1]}", file=sys.stderr)
        for name, crfs in (("x264", args.crfs), ("x265", args.x265_crfs)):
            if name == "x265" and args.no_x265:
                continue
            runs = [(p, args.gop) for p in args.presets.split(",")] + [("medium", None)]
            for preset, gop in runs:
                for crf in (int(c) for c in crfs.split(",")):
                    points.append(_ffmpeg_point(clip, ref_path, ref, ref_rgb, name, preset, gop,
                                                crf, args.out))
                    print(f"  {points[-1]}", file=sys.stderr)
    for path in args.add_points:
        ours = {(p.clip, p.codec, p.setting) for p in points}
        points += [Point(**row) for row in json.loads(path.read_text())["points"]
                   if row["setting"].startswith("q")
                   and (row["clip"], row["codec"], row["setting"]) not in ours]
    bd = _bd_table(points)
    sizes = _model_sizes(args.registry)
    plots = _plot(points, args.out)
    result = {"command": " ".join(["bench/codecs.py", *(argv or sys.argv[1:])]),
              "frames": args.frames, "gop": args.gop, "model_bytes": sizes,
              "model_ids": {label: c.model_id for label, c in codecs.items()},
              "points": [asdict(p) for p in points], "bd_rate_vs_x264_veryfast": bd,
              "plots": plots}
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nBD-rate vs {ANCHOR} (negative = fewer bits at equal quality), "
          f"{args.frames} frames, GOP {args.gop}")
    print("clip | codec | BD-rate PSNR-RGB % | BD-rate MS-SSIM % | bpp range | "
          "enc fps | dec fps")
    print("--- | --- | --- | --- | --- | --- | ---")
    for row in bd:
        mine = [p for p in points if p.clip == row["clip"] and p.codec == row["codec"]]
        bpps = sorted(p.bpp for p in mine)
        print(f"{row['clip']} | {row['codec']} | {row['psnr_rgb']} | {row['msssim']} | "
              f"{bpps[0]:.3f}-{bpps[-1]:.3f} | {np.mean([p.encode_fps for p in mine]):.2f} | "
              f"{np.mean([p.decode_fps for p in mine]):.2f}")
    print(f"model sizes (bytes of weights): {sizes}")
    print(f"results: {args.out / 'results.json'}; plots: {', '.join(plots)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
