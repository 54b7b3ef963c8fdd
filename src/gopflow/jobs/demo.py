"""The demo job behind ``make demo``: transcode INPUT (or a generated clip) and show the result.

Data flow: [generate a 10 s 1280x720 clip with audio: ffmpeg's testsrc2 + sine] ->
``transcode`` on a local Ray cluster -> probe of the output + PSNR(Y) against the source.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

from gopflow.media.ffmpeg import demo_clip_command


def generate_clip(path: str, seconds: float = 10.0, size: str = "1280x720", fps: int = 30) -> str:
    """Write a synthetic test clip (moving pattern, a scene change, a 440 Hz tone)."""
    subprocess.run(demo_clip_command(path, seconds, size, fps), check=True)
    return path


def run_demo(
    input: str | None = None, out_dir: str = "demo-output", codec: str = "x264",
    crf: float = 20.0, say: Callable[[str], None] | None = None,
) -> str:
    """Transcode ``input`` (or a generated clip) into ``out_dir/output.mp4`` on a local Ray
    cluster; return a summary of what came out (size, rate, frames, audio, bitrate, PSNR-Y)."""
    from gopflow.jobs.transcode import transcode
    from gopflow.media.probe import probe
    from gopflow.quality.metrics import psnr_y

    os.makedirs(out_dir, exist_ok=True)
    source = input
    if not source:
        source = os.path.join(out_dir, "generated_input.mp4")
        if say:
            say(f"demo: no INPUT given; generating {source}")
        generate_clip(source)
    output = os.path.join(out_dir, "output.mp4")
    report_path = os.path.join(out_dir, "report.json")
    report = transcode(source, output, log=say, codec=codec, crf=crf, report=report_path,
                       progress=True)
    src, out = probe(source), probe(output)
    psnr = psnr_y(source, output)
    totals = report.to_dict()["totals"]
    return "\n".join([
        f"source : {src.width}x{src.height} {float(src.fps):.3f} fps {src.frame_count} "
        f"frames, {len(src.audio)} audio stream(s)",
        f"output : {out.width}x{out.height} {float(out.fps):.3f} fps {out.frame_count} "
        f"frames, {len(out.audio)} audio stream(s) -> {output}",
        f"GOPs   : {totals['gops']}  bitrate {totals['bitrate_kbps']:.0f} kbit/s  "
        f"wall {totals['wall_seconds']:.1f} s  ({totals['fps']:.1f} fps)",
        f"PSNR-Y : mean {psnr.mean_y:.2f} dB, min {psnr.min_y:.2f} dB  report: {report_path}",
    ])
