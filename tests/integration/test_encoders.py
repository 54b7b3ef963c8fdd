"""SVT-AV1 next to x264/x265, pictures scaled down (--height) and capped CRF (--maxrate):
the parts a streaming ladder's rungs are made of, through the transcode job."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_clip
from integration.helpers import inspect


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("encoders") / "clip.mp4"
    return make_clip(path, "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25:duration=2",
                     "-c:v", "libx264", "-preset", "ultrafast", "-crf", "10")


def _transcode(clip: str, out: Path, *extra: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gopflow", "transcode", clip, "-o", str(out), "--no-progress",
         "--gop-seconds", "1", *extra],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return hashlib.sha256(out.read_bytes()).hexdigest()


def test_svtav1_scaled_and_capped_is_frame_exact_and_deterministic(
    clip: str, tmp_path: Path
) -> None:
    options = ("--codec", "svtav1", "--preset", "12", "--height", "90", "--crf", "30",
               "--maxrate", "200k")
    first = _transcode(clip, tmp_path / "a.mp4", *options)
    second = _transcode(clip, tmp_path / "b.mp4", *options)
    assert first == second
    got = inspect(str(tmp_path / "a.mp4"))
    assert (got.frames, got.width, got.height) == (50, 160, 90)


def test_capped_crf_spends_fewer_bits_than_crf_alone(clip: str, tmp_path: Path) -> None:
    _transcode(clip, tmp_path / "free.mp4", "--crf", "12", "--preset", "ultrafast")
    _transcode(clip, tmp_path / "capped.mp4", "--crf", "12", "--preset", "ultrafast",
               "--maxrate", "150k", "--bufsize", "150k")
    assert (tmp_path / "capped.mp4").stat().st_size < 0.7 * (tmp_path / "free.mp4").stat().st_size


def test_height_never_scales_up_and_qro_refuses_it(clip: str, tmp_path: Path) -> None:
    _transcode(clip, tmp_path / "same.mp4", "--height", "720", "--preset", "ultrafast")
    assert (inspect(str(tmp_path / "same.mp4")).height) == 180
    refused = subprocess.run(
        [sys.executable, "-m", "gopflow", "transcode", clip, "-o", str(tmp_path / "q.mkv"),
         "--height", "90", "--target-vmaf", "90"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--height" in refused.stderr
