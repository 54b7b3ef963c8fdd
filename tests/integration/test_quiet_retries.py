"""A retried GOP stays off the terminal: only gopflow's own line reaches stderr, nothing stdout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import media
from integration.test_failures import _flaky_ffmpeg


def test_a_retried_gop_prints_no_ray_notices(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    env = {**os.environ, "GOPFLOW_FFMPEG": str(_flaky_ffmpeg(tmp_path, failures=1))}
    done = subprocess.run(
        [sys.executable, "-m", "gopflow", "transcode", media("asl_again_640x480.mkv"),
         "-o", str(out), "--no-progress", "--preset", "veryfast"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "failures_left").read_text().strip() == "0"  # the fault did happen
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        line for line in done.stderr.strip().splitlines() if line.startswith("wrote ")
    ], done.stderr
