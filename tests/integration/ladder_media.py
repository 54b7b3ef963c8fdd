"""Per-GOP rung encodes for the packaging and browser tests, made as the ladder job will make
them: each GOP read frame-accurately from the source, scaled, and encoded on its own (a
closed GOP starting with an IDR) with capped VBR; all rungs on one GOP plan."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from conftest import make_clip
from gopflow.codecs.x26x import EncodeSettings, encoder_options
from gopflow.media.ffmpeg import encode_raw_command, feed_process, find_ffmpeg
from gopflow.media.probe import probe
from gopflow.media.reader import GopReader, frame_bytes
from gopflow.packaging.package import RungSource
from gopflow.types import GopSpec


@dataclass(frozen=True)
class RungSpec:
    name: str
    width: int
    height: int
    kbps: int | None = None
    crf: float | None = None


def make_source(path: Path, seconds: float = 8.0, size: str = "640x360", fps: int = 30) -> str:
    """A moving test pattern with a 440 Hz tone (x264 CRF 16, AAC)."""
    return make_clip(
        path, "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}:duration={seconds}",
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "16", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "128k", "-shortest",
    )


def encode_rungs(
    source: str,
    gop_frames: Sequence[int],
    rungs: Sequence[RungSpec],
    folder: Path,
    codec: Literal["x264", "x265", "svtav1"] = "x264",
    preset: str | None = "veryfast",
) -> list[RungSource]:
    """Every GOP of ``gop_frames`` encoded for every rung: one MP4 per (rung, GOP)."""
    info = probe(source)
    exe = find_ffmpeg().path
    out: list[RungSource] = []
    for rung in rungs:
        target = folder / rung.name
        target.mkdir(parents=True, exist_ok=True)
        # The ladder's encoder options; an average bitrate is capped at 1.5x (SVT-AV1: VBR).
        settings = EncodeSettings(codec=codec, preset=preset or "medium", crf=rung.crf,
                                  bitrate_kbps=rung.kbps, threads=2, keyint=600,
                                  maxrate_kbps=round(1.5 * rung.kbps) if rung.kbps else None)
        paths: list[str] = []
        start = 0
        with GopReader(info.path, info.stream_index, info.read_mode) as reader:
            for index, frames in enumerate(gop_frames):
                gop = GopSpec(index=index, start_frame=start, frame_count=frames,
                              start_pts=None, scene_cut=False)
                path = str(target / f"gop_{index:05d}.mp4")
                scale = [] if (rung.width, rung.height) == (info.width, info.height) else [
                    f"scale={rung.width}:{rung.height}:flags=lanczos"]
                command = encode_raw_command(
                    path, width=info.width, height=info.height, fps=info.fps,
                    pix_fmt="yuv420p", out_pix_fmt="yuv420p", encoder=encoder_options(settings),
                    filters=scale, exe=exe,
                )
                chunks = (frame_bytes(f, "yuv420p") for f in reader.read(gop))
                code, reason = feed_process(command, chunks, os.path.join(folder, "enc.log"))
                assert code == 0, f"encoding GOP {index} of {rung.name} failed: {reason}"
                paths.append(path)
                start += frames
        out.append(RungSource(rung.name, tuple(paths)))
    return out
