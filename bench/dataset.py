"""Benchmark ``gopflow dataset``: archive size, compression speed, quality, random clip reads.

Inputs: the first ``--max-frames`` frames of each of ``--clips`` (default: four clips of
``../shared/media`` and four of ``../shared/media/train``), cut by stream copy into
``--out-dir/dataset_inputs``: the cuts keep each source's own GOP structure (its key frames
every 10 to 250 frames, or one per file), which is what a seeking reader pays for. The
cuts are the dataset; in one run, one after another on this machine:

* **compress** the cuts into archives, ``--codec x265 --crf 22`` (``--preset``), ``--codec
  x264 --crf 22`` (``--x264-crf``; H.264 decodes faster than HEVC) and ``--codec ffv1``
  (lossless); ``--short-gop`` adds an x265 one with shorter GOPs; with ``gopflow dataset
  compress`` (a local Ray cluster, one worker per CPU): wall seconds (Ray's start
  included), frames per second, archive bytes (shards, index and card) against the cuts'
  bytes and against raw 4:2:0 frames;
* **quality** per video of the x265 and x264 archives: PSNR-Y measured at encode time
  (pooled over the video, worst GOP) and, unless ``--no-vmaf``, VMAF (libvmaf, every 4th
  frame) of the archive's video (``gopflow dataset read``) against the cut;
* **random clip reads**: ``--reads`` random 16-frame clips (seeded; the same clips for every
  reader, drawn over all videos in proportion to their frames) read one after another in
  this process from: the x265, x264 and FFV1 archives (``Dataset.read``); the cuts by PyAV
  seeking (seek to the key frame before the clip, decode up to it); torchcodec 0.17
  (``VideoDecoder(seek_mode="exact").get_frames_in_range``); decord 0.6
  (``VideoReader.get_batch``). Every reader keeps its files open, and opening them (PyAV's
  and torchcodec's frame index scans, the archive's index) is not timed. Each reader's
  first clips are compared with the same frames of the FFV1 archive (which equals a full
  decode of the cut): the mean absolute difference per sample; RGB conversions differ
  slightly between libraries, a wrong frame differs by far more. A library that cannot be
  imported is skipped with the reason. The three source readers run twice: on the cuts as
  they are (their own key frames, mostly every 10-90 frames), and, labelled so, on the cuts
  re-encoded by plain ffmpeg with a long key frame interval as cameras and web uploads
  often have (x264 medium CRF 18 ``-g 250``, x264's scene cuts kept; ``--long-gop``, 0: not),
  the case a seeking reader pays most for; their difference to the reference includes that
  re-encode's loss. The archives are made from the cuts as they are (their GOPs do not
  depend on the source's), and each reader's "x PyAV" is against PyAV seeking in the same
  sources;
* **full pass** with Ray Data: ``ray.data.read_videos`` over the cuts (every frame) against
  the x265 archive's ``to_ray(16, 16)`` (every whole clip), frames per second.

torchcodec needs Debian's FFmpeg 5.1 libraries (``apt-get install libavcodec59
libavformat59 libavutil57 libswscale6 libswresample4 libavdevice59 libavfilter8``); both
optional readers come with ``pip install -e '.[bench]' -c constraints.txt``.

Usage::

    flock /tmp/gopflow-bench.lock .venv/bin/python bench/dataset.py     # the full run
    C=car_traffic_768x432.mp4,his_girl_friday_640x480.mp4          # a quick check:
    C=$C,train/bottles_conveyor.mp4,asl_again_640x480.mkv
    flock /tmp/gopflow-bench.lock .venv/bin/python bench/dataset.py --max-frames 240 \\
        --reads 60 --no-vmaf --clips $C

(the lock keeps benchmarks on this shared machine from overlapping).

Prints the tables and writes them as JSON to ``--out-dir/dataset.json``. Nothing here is a
test.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

CLIP_LEN = 16
CHECKED = 8
"""Clips of each reader compared with the FFV1 archive's frames."""
REPO = Path(__file__).resolve().parent.parent
MEDIA = REPO.parent / "shared" / "media"
CLIPS = (  # the sources' key frames: every N frames, or one per file
    "car_traffic_768x432.mp4",  # 60
    "flower_960x540.mp4",  # 90
    "his_girl_friday_640x480.mp4",  # 35
    "asl_again_640x480.mkv",  # one (full range)
    "train/bottles_conveyor.mp4",  # 250
    "train/people_walking_768x432.mp4",  # 10
    "train/stream_of_water.mp4",  # 60
    "train/asl_book_640x480.mkv",  # one (full range)
)


def cut(ffmpeg: str, clip: str, folder: Path, max_frames: int) -> Path:
    """The first ``max_frames`` frames of ``clip``'s video, stream-copied (cached)."""
    source = MEDIA / clip
    if not source.exists():
        raise SystemExit(f"no clip {source}")
    out = folder / f"{source.stem}{source.suffix}"
    if not out.exists():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", str(source),
                        "-map", "0:v:0", "-c", "copy", "-frames:v", str(max_frames),
                        str(out)], check=True)
    return out


def long_gop(ffmpeg: str, cut_path: Path, folder: Path, keyint: int) -> Path:
    """``cut_path`` re-encoded by plain ffmpeg as a camera or a web upload would have it:
    x264 medium CRF 18, a key frame every ``keyint`` frames at most (x264's own scene cuts
    may add some), B-frames; the same frames, pixel format and size (cached)."""
    out = folder / f"{cut_path.stem}.mp4"
    if not out.exists():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", str(cut_path),
                        "-map", "0:v:0", "-c:v", "libx264", "-preset", "medium", "-crf", "18",
                        "-g", str(keyint), "-threads", "2", str(out)], check=True)
    return out


def key_interval(path: Path) -> float:
    """Mean frames per key frame of ``path``'s video (from the packets, no decode)."""
    import av

    with av.open(str(path)) as container:
        flags = [p.is_keyframe for p in container.demux(video=0) if p.size]
    return len(flags) / max(1, sum(flags))


def compress(inputs: list[Path], archive: Path, *codec: str) -> float:
    shutil.rmtree(archive, ignore_errors=True)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "gopflow", "dataset", "compress", *map(str, inputs), "-o",
         str(archive), *codec, "--no-progress"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"compress {' '.join(codec)} failed:\n{done.stderr}")
    return time.perf_counter() - started


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- readers: each opens its files once, then reads (video, start) -> (16, H, W, 3) --------


def pyav_reader(paths: dict[str, Path]) -> Callable[[str, int], np.ndarray]:
    import av
    from av.video.reformatter import VideoReformatter

    rgb = VideoReformatter()  # as the archive's reader converts (one swscale context)

    opened = {}
    for video, path in paths.items():
        container = av.open(str(path))
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        # Each frame's timestamp, from the packets (no decode), in presentation order.
        pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None and p.size)
        opened[video] = (container, stream, pts)

    def read(video: str, start: int) -> np.ndarray:
        container, stream, pts = opened[video]
        target = pts[start]
        container.seek(target, stream=stream, backward=True, any_frame=False)
        out = []
        for frame in container.decode(stream):
            if frame.pts is None or frame.pts < target:
                continue
            out.append(rgb.reformat(frame, format="rgb24").to_ndarray())
            if len(out) == CLIP_LEN:
                break
        return np.stack(out)

    return read


def torchcodec_reader(paths: dict[str, Path]) -> Callable[[str, int], np.ndarray]:
    from torchcodec.decoders import VideoDecoder

    decoders = {video: VideoDecoder(str(path), seek_mode="exact", dimension_order="NHWC")
                for video, path in paths.items()}

    def read(video: str, start: int) -> np.ndarray:
        return decoders[video].get_frames_in_range(start, start + CLIP_LEN).data.numpy()

    return read


def decord_reader(paths: dict[str, Path]) -> Callable[[str, int], np.ndarray]:
    import decord

    readers = {video: decord.VideoReader(str(path), ctx=decord.cpu(0))
               for video, path in paths.items()}

    def read(video: str, start: int) -> np.ndarray:
        return readers[video].get_batch(list(range(start, start + CLIP_LEN))).asnumpy()

    return read


def archive_reader(root: Path) -> Callable[[str, int], np.ndarray]:
    import gopflow

    dataset = gopflow.dataset.open(str(root))
    return lambda video, start: dataset.read(video, start, CLIP_LEN)


def timed_reads(read: Callable[[str, int], np.ndarray], clips: list[tuple[str, int]],
                reference: list[np.ndarray]) -> tuple[float, float]:
    """(seconds for every clip, mean |difference| of the first clips to ``reference``)."""
    kept = []
    started = time.perf_counter()
    for number, (video, start) in enumerate(clips):
        clip = read(video, start)
        if clip.shape[0] != CLIP_LEN:
            raise RuntimeError(f"{CLIP_LEN} frames asked of {video} at {start}, got "
                               f"{clip.shape[0]}")
        if number < len(reference):
            kept.append(clip)
    seconds = time.perf_counter() - started
    diffs = [float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))
             if a.shape == b.shape else float("nan") for a, b in zip(kept, reference, strict=True)]
    return seconds, max(diffs) if diffs else float("nan")


def vmaf_of(archive: Path, video: str, source: Path, work: Path) -> float | None:
    import gopflow
    from gopflow.quality.vmaf import vmaf_scores

    frames = gopflow.dataset.open(str(archive)).frames(video)
    decoded = work / f"{video.replace('/', '_')}.y4m"
    done = subprocess.run(
        [sys.executable, "-m", "gopflow", "dataset", "read", str(archive), "--video", video,
         "--frames", f"0:{frames}", "-o", str(decoded)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1])
    try:
        scores = vmaf_scores(str(source), str(decoded), subsample=4)
        return float(np.mean(scores.series[0].values))
    finally:
        decoded.unlink(missing_ok=True)


def full_pass(inputs: list[Path], archive: Path) -> list[tuple[str, int, float]]:
    import ray

    import gopflow

    rows = []
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        try:
            started = time.perf_counter()
            frames = 0
            videos = ray.data.read_videos([str(p) for p in inputs])
            for batch in videos.iter_batches(batch_size=64, batch_format="numpy"):
                frames += len(batch["frame"])
            rows.append(("ray.data.read_videos (the cuts)", frames,
                         time.perf_counter() - started))
        except Exception as exc:  # decord missing, a file it cannot read
            print(f"ray.data.read_videos skipped: {type(exc).__name__}: {exc}")
        started = time.perf_counter()
        frames = 0
        clips = gopflow.dataset.open(str(archive)).to_ray(clip_len=CLIP_LEN, stride=CLIP_LEN)
        for batch in clips.iter_batches(batch_size=4, batch_format="numpy"):
            frames += sum(len(f) for f in batch["frames"])
        rows.append((f"archive x265 to_ray({CLIP_LEN}, {CLIP_LEN})", frames,
                     time.perf_counter() - started))
    finally:
        ray.shutdown()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", default=",".join(CLIPS),
                        help="clips below ../shared/media, comma-separated")
    parser.add_argument("--max-frames", type=int, default=600, help="frames cut from each")
    parser.add_argument("--preset", default="medium", help="x265 and x264 preset")
    parser.add_argument("--crf", type=float, default=22, help="x265 CRF")
    parser.add_argument("--x264-crf", type=float, default=22,
                        help="the x264 archive's CRF; 0: no x264 archive")
    parser.add_argument("--long-gop", type=int, default=250,
                        help="also read the cuts re-encoded by plain ffmpeg (x264, -g this); "
                        "0: not")
    parser.add_argument("--reads", type=int, default=200, help="random 16-frame clips")
    parser.add_argument("--seed", type=int, default=30)
    parser.add_argument("--short-gop", type=float, default=0,
                        help="also an x265 archive with GOPs of at most this many seconds "
                        "(the default is 1 s); 0: not")
    parser.add_argument("--no-vmaf", dest="vmaf", action="store_false")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args(argv)
    # A local cluster of this process (and of the compress runs), never a user's one.
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    os.environ.pop("RAY_ADDRESS", None)

    import gopflow
    from gopflow.media.ffmpeg import find_ffmpeg

    ffmpeg = find_ffmpeg().path
    names = [c.strip() for c in args.clips.split(",") if c.strip()]
    folder = args.out_dir / "dataset_inputs" / f"first{args.max_frames}"
    inputs = [cut(ffmpeg, name, folder, args.max_frames) for name in names]
    x265, ffv1 = args.out_dir / "bench_x265.gfd", args.out_dir / "bench_ffv1.gfd"
    short = args.out_dir / "bench_x265_short.gfd"
    x264 = args.out_dir / "bench_x264.gfd"
    print(f"clips (first {args.max_frames} frames of each, stream copy): {', '.join(names)}")
    print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}\n")

    x265_args = ("--codec", "x265", "--crf", f"{args.crf:g}", "--preset", args.preset)
    archives = [(f"x265 CRF {args.crf:g} {args.preset}", x265,
                 compress(inputs, x265, *x265_args))]
    if args.short_gop:
        archives.append((f"  same, {args.short_gop:g} s GOPs", short,
                         compress(inputs, short, *x265_args, "--gop-seconds",
                                  f"{args.short_gop:g}", "--min-gop-seconds",
                                  f"{min(0.25, args.short_gop):g}")))
    if args.x264_crf:
        archives.append((f"x264 CRF {args.x264_crf:g} {args.preset}", x264,
                         compress(inputs, x264, "--codec", "x264", "--crf",
                                  f"{args.x264_crf:g}", "--preset", args.preset)))
    archives.append(("ffv1 (lossless)", ffv1, compress(inputs, ffv1, "--codec", "ffv1")))
    lossless = gopflow.dataset.open(str(ffv1))
    paths = {}
    for path in inputs:
        # Video ids are the file names without extension (every cut is in one folder).
        paths[path.stem] = path
    videos = lossless.videos
    frames = {v: lossless.frames(v) for v in videos}
    total = sum(frames.values())
    source_bytes = sum(p.stat().st_size for p in inputs)
    raw_bytes = sum(r.width * r.height * 3 // 2 * r.frame_count for r in lossless.rows)
    sizes = []
    for name, root, spent in archives:
        size = folder_bytes(root)
        sizes.append({"archive": name, "bytes": size, "vs_sources": size / source_bytes,
                      "vs_raw_420": size / raw_bytes, "seconds": spent,
                      "frames_per_s": total / spent})
    print(f"dataset: {len(videos)} videos, {total} frames; the cuts: {source_bytes / 1e6:.1f} "
          f"MB (H.264); raw 4:2:0 frames: {raw_bytes / 1e6:.1f} MB")
    print(f"{'archive':<28}{'MB':>9}{'x sources':>11}{'x raw':>8}{'compress s':>12}"
          f"{'frames/s':>10}")
    for row in sizes:
        print(f"{row['archive']:<28}{row['bytes'] / 1e6:>9.2f}{row['vs_sources']:>11.3f}"
              f"{row['vs_raw_420']:>8.3f}{row['seconds']:>12.1f}{row['frames_per_s']:>10.1f}")

    quality = []
    work = args.out_dir / "dataset_vmaf"
    work.mkdir(parents=True, exist_ok=True)
    lossy = [("x265", x265), *([("x264", x264)] if args.x264_crf else [])]
    for video in videos:
        row: dict[str, Any] = {"video": video, "frames": frames[video]}
        for codec, root in lossy:
            pooled, worst = (gopflow.dataset.open(str(root)).quality(video)
                             or (float("nan"), float("nan")))
            vmaf: float | str | None = None
            if args.vmaf:
                try:
                    vmaf = vmaf_of(root, video, paths[video], work)
                except Exception as exc:  # libvmaf missing, frames that do not line up
                    vmaf = f"n/a ({type(exc).__name__}: {exc})"[:60]
            row[codec] = {"psnr_y": pooled, "worst_gop_psnr_y": worst, "vmaf": vmaf}
        quality.append(row)
    print("\nquality of the lossy archives, per video (PSNR-Y at encode time, pooled / worst "
          "GOP, dB; VMAF every 4th frame)\n" + f"{'video':<28}{'frames':>7}"
          + "".join(f"{codec + ' PSNR-Y':>22}{codec + ' VMAF':>11}" for codec, _ in lossy))
    for row in quality:
        cells = ""
        for codec, _ in lossy:
            got = row[codec]
            vmaf = got["vmaf"]
            shown = "-" if vmaf is None else (f"{vmaf:.2f}" if isinstance(vmaf, float)
                                              else vmaf)
            cells += f"{got['psnr_y']:>13.2f} / {got['worst_gop_psnr_y']:>5.2f}{shown:>11}"
        print(f"{row['video']:<28}{row['frames']:>7}{cells}")

    pick = random.Random(args.seed)
    weighted = [v for v in videos for _ in range(max(0, frames[v] - CLIP_LEN + 1))]
    clips = []
    for _ in range(args.reads):
        video = pick.choice(weighted)
        clips.append((video, pick.randrange(0, frames[video] - CLIP_LEN + 1)))
    reference = [lossless.read(v, s, CLIP_LEN) for v, s in clips[:CHECKED]]
    source_paths = {v: paths[v] for v in videos}
    long_paths = {v: long_gop(ffmpeg, p, args.out_dir / "dataset_inputs" /
                              f"first{args.max_frames}_g{args.long_gop}", args.long_gop)
                  for v, p in source_paths.items()} if args.long_gop else {}
    as_is = "the cuts as they are"
    long_label = f"re-encoded, x264 -g {args.long_gop}"
    print(f"\nkey frame spacing (mean frames per key frame): {as_is}: "
          + ", ".join(f"{v} {key_interval(p):.0f}" for v, p in source_paths.items())
          + (f"\n{long_label} by plain ffmpeg: " + ", ".join(
              f"{v} {key_interval(p):.0f}" for v, p in long_paths.items()) if long_paths
             else ""))
    sources = [(as_is, source_paths), *([(long_label, long_paths)] if long_paths else [])]
    readers: list[tuple[str, str, Any]] = [
        ("archive x265", "", lambda: archive_reader(x265)),
        *([(f"archive x265 {args.short_gop:g} s GOPs", "", lambda: archive_reader(short))]
          if args.short_gop else []),
        *([("archive x264", "", lambda: archive_reader(x264))] if args.x264_crf else []),
        ("archive ffv1", "", lambda: archive_reader(ffv1)),
    ]
    for label, chosen in sources:
        readers += [
            ("PyAV seeking", label, lambda chosen=chosen: pyav_reader(chosen)),
            ("torchcodec 0.17", label, lambda chosen=chosen: torchcodec_reader(chosen)),
            ("decord 0.6", label, lambda chosen=chosen: decord_reader(chosen)),
        ]
    reads = []
    for name, label, make in readers:
        try:
            read = make()
        except Exception as exc:  # not installed, its libraries missing
            reads.append({"reader": name, "sources": label,
                          "skipped": f"{type(exc).__name__}: {exc}"[:120]})
            continue
        spent, diff = timed_reads(read, clips, reference)
        reads.append({"reader": name, "sources": label, "seconds": spent,
                      "clips_per_s": len(clips) / spent, "mean_abs_diff": diff})
    bases = {label: next((r["clips_per_s"] for r in reads if r["reader"] == "PyAV seeking"
                          and r["sources"] == label and "clips_per_s" in r), float("nan"))
             for label, _ in sources}
    print(f"\nrandom {CLIP_LEN}-frame clip reads: {len(clips)} clips (seed {args.seed}), one "
          f"after another, files kept open; x PyAV: against PyAV seeking in the same sources "
          f"(archives: in {as_is})\n{'reader':<24}{'sources':<28}{'clips/s':>9}{'frames/s':>10}"
          f"{'x PyAV':>8}{'mean |diff|':>13}")
    for row in reads:
        shown = row["sources"] or "(archive)"
        if "skipped" in row:
            print(f"{row['reader']:<24}{shown:<28} skipped: {row['skipped']}")
            continue
        base = bases[row["sources"] or as_is]
        print(f"{row['reader']:<24}{shown:<28}{row['clips_per_s']:>9.1f}"
              f"{row['clips_per_s'] * CLIP_LEN:>10.0f}{row['clips_per_s'] / base:>8.2f}"
              f"{row['mean_abs_diff']:>13.3f}")
    for row in reads:
        if "clips_per_s" not in row or not row["reader"].startswith("archive x26"):
            continue
        for label, _ in sources:
            against = ", ".join(f"{row['clips_per_s'] / other['clips_per_s']:.2f}x "
                                f"{other['reader']}" for other in reads
                                if other["sources"] == label and "clips_per_s" in other)
            print(f"{row['reader']} vs {label}: {against}")
    print("(goal: >= 3x PyAV seeking, ahead of torchcodec and decord)")

    passes = [{"reader": name, "frames": count, "seconds": spent, "frames_per_s": count / spent}
              for name, count, spent in full_pass(inputs, x265)]
    print(f"\nfull pass with Ray Data ({os.cpu_count()} CPUs, Ray's start not timed)\n"
          f"{'reader':<36}{'frames':>8}{'seconds':>9}{'frames/s':>10}")
    for row in passes:
        print(f"{row['reader']:<36}{row['frames']:>8}{row['seconds']:>9.1f}"
              f"{row['frames_per_s']:>10.1f}")

    out = args.out_dir / "dataset.json"
    out.write_text(json.dumps({"clips": names, "max_frames": args.max_frames,
                               "long_gop": args.long_gop,
                               "sizes": sizes, "quality": quality, "reads": reads,
                               "full_pass": passes}, indent=2, default=str))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
