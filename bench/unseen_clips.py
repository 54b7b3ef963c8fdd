"""Check table for the foundation: gopflow vs one plain ffmpeg encode on real clips.

For each clip: `gopflow transcode CLIP -o OUT --crf 18` and (for even sizes) one
`ffmpeg -c:v libx264 -preset medium -crf 18`; prints source vs output size, decoded frame
count, fps and audio streams, and PSNR-Y of each against the source. One clip is an odd-sized
(719x405, 4:4:4, AAC) derivative of flower_960x540.mp4, made in the out dir. Not a test.

    .venv/bin/python bench/unseen_clips.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import av

from gopflow.media.ffmpeg import find_ffmpeg
from gopflow.media.probe import probe
from gopflow.quality.metrics import psnr_y

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO.parent / "shared" / "media"
CLIPS = (
    "white_flower_1280x720.264",
    "red_trees_drive_1920x1080.264",
    "nasa_jwst_320x180_480x270.mp4",
    "flower_960x540.mp4",
)


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "out" / "unseen")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    ffmpeg = find_ffmpeg().path
    odd = args.out_dir / "flower_odd_719x405.mp4"
    if not odd.exists():
        _run(ffmpeg, "-y", "-v", "error", "-i", str(MEDIA / "flower_960x540.mp4"),
             "-vf", "scale=719:405,format=yuv444p", "-c:v", "libx264", "-crf", "12",
             "-pix_fmt", "yuv444p", "-c:a", "copy", str(odd))
    clips = [MEDIA / name for name in CLIPS] + [odd]
    header = ("clip", "src size / frames / fps / audio", "out size / decoded frames / fps / audio",
              "PSNR-Y gopflow", "PSNR-Y plain ffmpeg", "gopflow wall s")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for clip in clips:
        src = probe(str(clip))
        suffix = ".mkv" if clip.suffix == ".264" else ".mp4"
        out = args.out_dir / f"{clip.name}.gopflow{suffix}"
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "gopflow", "transcode", str(clip), "-o", str(out),
             "--crf", "18", "--no-progress"], capture_output=True, text=True,
        )
        if done.returncode != 0:
            print(f"{clip.name} | FAILED: {done.stderr.strip()}")
            continue
        wall = time.perf_counter() - started
        got = probe(str(out))
        with av.open(str(out)) as container:
            decoded = sum(1 for _ in container.decode(video=0))
        plain = "(x264 refuses odd 4:2:0)"
        if src.width % 2 == 0 and src.height % 2 == 0:
            reference = args.out_dir / f"{clip.name}.plain.mp4"
            rate = []
            if clip.suffix == ".264":
                rate = ["-r", f"{src.fps.numerator}/{src.fps.denominator}"]
            _run(ffmpeg, "-y", "-v", "error", *rate, "-i", str(clip), "-map", "0:v:0",
                 "-c:v", "libx264", "-preset", "medium", "-crf", "18", str(reference))
            plain = f"{psnr_y(str(clip), str(reference)).mean_y:.2f}"
        source_row = f"{src.width}x{src.height} / {src.frame_count} / {float(src.fps):.3f}"
        output_row = f"{got.width}x{got.height} / {decoded} / {float(got.fps):.3f}"
        print(" | ".join((
            clip.name,
            f"{source_row} / {len(src.audio)}",
            f"{output_row} / {len(got.audio)}",
            f"{psnr_y(str(clip), str(out)).mean_y:.2f}", plain, f"{wall:.1f}",
        )))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
