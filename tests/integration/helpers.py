"""Helpers for integration tests: plain ffmpeg reference encodes and output inspection."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import av

from conftest import ffmpeg_exe


@dataclass(frozen=True)
class Streams:
    """What a file holds, read back with PyAV."""

    frames: int
    width: int
    height: int
    fps: float
    audio: int
    audio_seconds: tuple[float, ...]
    video_seconds: float
    color_range: int


def inspect(path: str) -> Streams:
    with av.open(path) as container:
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video))
    with av.open(path) as container:
        video = container.streams.video[0]
        audio_seconds = tuple(
            float(a.duration * a.time_base) if a.duration else float(container.duration / 1e6)
            for a in container.streams.audio
        )
        video_seconds = float(video.duration * video.time_base) if video.duration else 0.0
        return Streams(
            frames=frames,
            width=video.codec_context.width,
            height=video.codec_context.height,
            fps=float(video.average_rate or 0),
            audio=len(container.streams.audio),
            audio_seconds=audio_seconds,
            video_seconds=video_seconds,
            color_range=int(video.codec_context.color_range or 0),
        )


def plain_ffmpeg(source: str, output: str, codec: str = "libx264", crf: int = 18) -> str:
    """One plain ffmpeg encode with the same codec/preset/CRF (the reference)."""
    subprocess.run(
        [
            ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-i", source,
            "-map", "0:v:0", "-c:v", codec, "-preset", "medium", "-crf", str(crf), output,
        ],
        check=True,
    )
    return output
