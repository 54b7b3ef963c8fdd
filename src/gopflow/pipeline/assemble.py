"""Join GOP segments in order into one MP4/MKV, copy the source's audio, and verify.

Data flow: segments (MP4, one closed GOP each) -> ffmpeg's concat demuxer with stream copy
(no re-encoding; it offsets each segment's timestamps by the previous ones' duration, so
the timeline is continuous) + the source's audio streams (copied, or AAC when the container
cannot hold the codec) -> a temporary file -> checks (frame count, size, frame rate) ->
rename to the output. The video is shifted by the source's own video-vs-container start
offset so audio stays where it was relative to the pictures.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from gopflow.errors import FrameCountError, OutputError, UsageError
from gopflow.media.ffmpeg import concat_command
from gopflow.media.probe import open_input
from gopflow.types import VideoInfo

CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
# Audio codecs the MP4/MOV muxers take as they are; anything else is encoded to AAC.
_MP4_AUDIO = frozenset({"aac", "mp3", "ac3", "eac3", "opus", "flac", "alac"})


def container_for(output: str) -> str:
    """ffmpeg muxer name for an output path, from its extension."""
    extension = os.path.splitext(output)[1].lower()
    if extension not in CONTAINERS:
        raise UsageError(
            f"unsupported output extension {extension or '(none)'!r}: use .mp4, .m4v, .mov or .mkv"
        )
    return CONTAINERS[extension]


@dataclass(frozen=True)
class OutputCheck:
    """What the assembled file holds, read back with PyAV."""

    frames: int
    width: int
    height: int
    fps: Fraction
    audio_streams: int
    duration_seconds: float


def _concat_list(
    paths: Sequence[str], list_path: str, durations: Sequence[float] | None = None
) -> None:
    """An ffconcat list; explicit durations keep the timeline exact when a segment's last
    frame stands for more than one source frame (half-rate GOPs)."""
    with open(list_path, "w", encoding="utf-8") as handle:
        handle.write("ffconcat version 1.0\n")
        for position, path in enumerate(paths):
            quoted = os.path.abspath(path).replace("'", "'\\''")
            handle.write(f"file '{quoted}'\n")
            if durations is not None:
                handle.write(f"duration {durations[position]:.9f}\n")


def inspect_output(path: str) -> OutputCheck:
    """Count the output's video packets and read its size, rate and audio streams."""
    with open_input(path) as container:
        video = container.streams.video[0]
        frames = sum(1 for p in container.demux(video) if p.size)
        rate = video.average_rate or video.guessed_rate
        duration = container.duration / 1e6 if container.duration else 0.0
        return OutputCheck(
            frames=frames,
            width=video.codec_context.width,
            height=video.codec_context.height,
            fps=Fraction(rate) if rate else Fraction(0),
            audio_streams=len(container.streams.audio),
            duration_seconds=duration,
        )


def assemble(
    segments: Sequence[str],
    info: VideoInfo,
    output: str,
    scratch_dir: str,
    expected_size: tuple[int, int] | None,
    copy_audio: bool = True,
    durations: Sequence[float] | None = None,
    expected_frames: int | None = None,
    tags: dict[str, str] | None = None,
) -> OutputCheck:
    """Write ``output`` from ``segments`` (in order) plus the source's audio; verify it.

    A precoded job (GOPs of different sizes and frame rates) passes ``durations`` (seconds
    of source time per segment), ``expected_frames`` (coded frames) and no
    ``expected_size``; ``tags`` (container metadata) carry what restoration needs.
    """
    muxer = container_for(output)
    list_path = os.path.join(scratch_dir, "concat.txt")
    _concat_list(segments, list_path, durations)
    directory = os.path.dirname(os.path.abspath(output))
    temp = os.path.join(directory, f".{os.path.basename(output)}.gopflow-partial")
    video_offset = max(0.0, info.start_seconds - info.container_start_seconds)
    audio = info.audio if copy_audio else ()
    command = concat_command(
        list_path, temp, muxer, video_offset=video_offset, audio_source=info.path,
        audio=[(s.index, muxer == "matroska" or s.codec in _MP4_AUDIO) for s in audio],
        rotation=info.rotation, tags=tags,
    )
    try:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise OutputError(f"assembling {output} failed: {last}")
        check = inspect_output(temp)
        frames = info.frame_count if expected_frames is None else expected_frames
        if check.frames != frames:
            raise FrameCountError(f"assembled output has {check.frames} frames, expected {frames}")
        if expected_size is not None:
            width, height = expected_size
            if (check.width, check.height) != (width, height):
                raise FrameCountError(
                    f"assembled output is {check.width}x{check.height}, expected {width}x{height}"
                )
            if abs(float(check.fps) - float(info.fps)) > 1e-3 * float(info.fps):
                raise FrameCountError(
                    f"assembled output runs at {check.fps} fps, not {info.fps}"
                )
        os.replace(temp, output)
        return check
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
