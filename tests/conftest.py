"""Shared test helpers: the real clips in ../shared/media and small generated media."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def media(name: str) -> str:
    """Path of a clip in ../shared/media, or skip the test with the reason."""
    path = MEDIA / name
    if not path.exists():
        pytest.skip(f"real clip {name} not available (expected in {MEDIA})")
    return str(path)


def ffmpeg_exe() -> str:
    from gopflow.media.ffmpeg import find_ffmpeg

    return find_ffmpeg().path


def make_clip(path: Path, *args: str) -> str:
    """Run ffmpeg with ``args`` (inputs and options) writing ``path``."""
    command = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    subprocess.run([*command, str(path)], check=True)
    return str(path)


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Small generated inputs: odd-sized video with audio, audio-only, text, truncated."""
    root = tmp_path_factory.mktemp("generated")
    clips: dict[str, str] = {}
    clips["odd"] = make_clip(
        root / "odd_721x405.mkv",
        "-f", "lavfi",
        "-i", "testsrc2=size=724x408:rate=24:duration=2,format=yuv444p,crop=721:405:0:0",
        "-f", "lavfi", "-i", "sine=frequency=300:duration=2",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "16", "-pix_fmt", "yuv444p",
        "-c:a", "aac",
    )
    clips["audio_only"] = make_clip(
        root / "audio_only.m4a", "-f", "lavfi", "-i", "sine=frequency=440:duration=1",
        "-c:a", "aac",
    )
    text = root / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    clips["text"] = str(text)
    empty = root / "empty.mp4"
    empty.write_bytes(b"")
    clips["empty"] = str(empty)
    full = make_clip(
        root / "whole.mp4", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=3",
        "-c:v", "libx264", "-preset", "veryfast",
    )
    data = Path(full).read_bytes()
    truncated = root / "truncated.mp4"  # moov at the end: cut off, the index is gone
    truncated.write_bytes(data[: len(data) // 2])
    clips["truncated"] = str(truncated)
    faststart = make_clip(
        root / "faststart.mp4", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=3",
        "-c:v", "libx264", "-preset", "veryfast", "-movflags", "+faststart",
    )
    blob = Path(faststart).read_bytes()
    cut = root / "truncated_faststart.mp4"  # index intact, media data cut off
    cut.write_bytes(blob[: len(blob) * 2 // 3])
    clips["truncated_faststart"] = str(cut)
    # A video track that never got a frame (ffmpeg exits non-zero but writes the file).
    zero = root / "zero_frames.mkv"
    subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-loglevel", "quiet", "-y",
         "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=1",
         "-f", "lavfi", "-i", "sine=duration=1", "-map", "0:v", "-map", "1:a",
         "-frames:v", "0", "-c:v", "libx264", "-c:a", "aac", str(zero)],
        check=False,
    )
    assert zero.exists()
    clips["zero_frames"] = str(zero)
    return clips
