"""The demo job behind ``make demo``: transcode INPUT (or a generated clip) and show the result.

Data flow: [generate a 10 s 1280x720 clip with audio: ffmpeg's testsrc2 + sine] ->
``run_transcode`` on a local Ray cluster -> probe of the output + PSNR(Y) against the source.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from gopflow.errors import GopflowError
from gopflow.media.ffmpeg import find_ffmpeg


def generate_clip(path: str, seconds: float = 10.0, size: str = "1280x720", fps: int = 30) -> str:
    """Write a synthetic test clip (moving pattern, a scene change, a 440 Hz tone)."""
    tool = find_ffmpeg()
    half = seconds / 2
    graph = (
        f"testsrc2=size={size}:rate={fps}:duration={half}[a];"
        f"mandelbrot=size={size}:rate={fps},trim=duration={half}[b];"
        "[a][b]concat=n=2:v=1:a=0,format=yuv420p[v]"
    )
    command = [
        tool.path, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-filter_complex", graph,
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
        "-map", "[v]", "-map", "0:a",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "16",
        "-c:a", "aac", "-b:a", "128k", "-fflags", "+bitexact", path,
    ]
    subprocess.run(command, check=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gopflow.jobs.demo", description=__doc__)
    parser.add_argument("--input", help="video to transcode (default: a generated clip)")
    parser.add_argument("--out-dir", default="demo-output")
    parser.add_argument("--codec", default="x264", choices=["x264", "x265"])
    parser.add_argument("--crf", type=float, default=20.0)
    args = parser.parse_args(argv)

    from gopflow.jobs.transcode import TranscodeConfig, run_transcode
    from gopflow.media.probe import probe
    from gopflow.quality.metrics import psnr_y
    from gopflow.types import EncodeSettings

    os.makedirs(args.out_dir, exist_ok=True)
    try:
        source = args.input
        if not source:
            source = os.path.join(args.out_dir, "generated_input.mp4")
            print(f"demo: no INPUT given; generating {source}", file=sys.stderr)
            generate_clip(source)
        output = os.path.join(args.out_dir, "output.mp4")
        report_path = os.path.join(args.out_dir, "report.json")
        config = TranscodeConfig(
            input=source,
            output=output,
            settings=EncodeSettings(codec=args.codec, crf=args.crf),
            report=report_path,
            progress=True,
        )
        report = run_transcode(config, log=lambda m: print(m, file=sys.stderr))
        src, out = probe(source), probe(output)
        psnr = psnr_y(source, output)
        totals = report.to_dict()["totals"]
        print(f"source : {src.width}x{src.height} {float(src.fps):.3f} fps {src.frame_count} "
              f"frames, {len(src.audio)} audio stream(s)")
        print(f"output : {out.width}x{out.height} {float(out.fps):.3f} fps {out.frame_count} "
              f"frames, {len(out.audio)} audio stream(s) -> {output}")
        print(f"GOPs   : {totals['gops']}  bitrate {totals['bitrate_kbps']:.0f} kbit/s  "
              f"wall {totals['wall_seconds']:.1f} s  ({totals['fps']:.1f} fps)")
        print(f"PSNR-Y : mean {psnr.mean_y:.2f} dB, min {psnr.min_y:.2f} dB  "
              f"report: {report_path}")
    except GopflowError as exc:
        print(f"gopflow demo: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
