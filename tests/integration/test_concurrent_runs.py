"""Two gopflow runs at once on the same input and settings: they never share a work dir
unlocked. Real ``python -m gopflow transcode`` processes; the first one is slowed down by an
ffmpeg wrapper (its encodes wait) so that the second starts while it holds its work dir."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_clip
from integration.helpers import inspect, slow_ffmpeg


def _start(source: str, out: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gopflow", "transcode", source, "-o", str(out), "--no-progress",
         "--preset", "ultrafast"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )


def _wait_for_lock(work_root: Path, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while not glob.glob(str(work_root / "*" / "lock")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the first run never locked its work dir"
        time.sleep(0.05)


@pytest.fixture()
def clip(tmp_path: Path) -> str:
    return make_clip(tmp_path / "clip.mkv", "-f", "lavfi", "-i",
                     "testsrc2=size=96x64:rate=25:duration=0.6", "-c:v", "ffv1")


def test_a_second_run_of_the_same_job_fails_at_once_naming_the_first(
    tmp_path: Path, clip: str
) -> None:
    out = tmp_path / "c.mp4"
    first = _start(clip, out, {"GOPFLOW_FFMPEG": str(slow_ffmpeg(tmp_path, 8))})
    try:
        _wait_for_lock(tmp_path / ".gopflow-work", first)
        second = subprocess.run(
            [sys.executable, "-m", "gopflow", "transcode", clip, "-o", str(out),
             "--no-progress", "--preset", "ultrafast"],
            capture_output=True, text=True, timeout=120,
        )
        assert first.poll() is None, "the first run ended before the second one was refused"
        work = glob.glob(str(tmp_path / ".gopflow-work" / "*"))
        assert second.returncode == 1
        lines = second.stderr.strip().splitlines()
        assert lines == [f"gopflow: error: another gopflow run (pid {first.pid}) is using "
                         f"{work[0]}; wait for it to finish or stop it"], second.stderr
        assert os.path.isdir(work[0])  # the refused run discarded nothing
        _, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, stderr
    assert inspect(str(out)).frames == 15
    assert not (tmp_path / ".gopflow-work").exists()


def test_runs_to_different_outputs_never_share_a_work_dir(tmp_path: Path, clip: str) -> None:
    first = _start(clip, tmp_path / "a.mp4", {"GOPFLOW_FFMPEG": str(slow_ffmpeg(tmp_path, 6))})
    try:
        _wait_for_lock(tmp_path / ".gopflow-work", first)
        second = subprocess.run(
            [sys.executable, "-m", "gopflow", "transcode", clip, "-o", str(tmp_path / "b.mp4"),
             "--no-progress", "--preset", "ultrafast"],
            capture_output=True, text=True, timeout=120,
        )
        _, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert second.returncode == 0, second.stderr
    assert first.returncode == 0, stderr
    assert inspect(str(tmp_path / "a.mp4")).frames == inspect(str(tmp_path / "b.mp4")).frames
    assert not (tmp_path / ".gopflow-work").exists()
