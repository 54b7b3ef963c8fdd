"""Ctrl-C during a transcode: one line, exit 130, nothing at the output path, resumable."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("interrupt") / "clip.mp4"
    return make_clip(path, "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=20",
                     "-c:v", "libx264", "-preset", "ultrafast", "-g", "50")


def _transcode(clip: str, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gopflow", "transcode", clip, "-o", str(out), "--no-progress",
         "--preset", "veryfast", "--gop-seconds", "1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A test run started in the background inherits SIGINT ignored; a user's terminal
        # delivers it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.fixture(scope="module")
def straight(clip: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """SHA-256 of the same job run without interruption."""
    out = tmp_path_factory.mktemp("straight") / "straight.mp4"
    done = _transcode(clip, out)
    _, stderr = done.communicate(timeout=300)
    assert done.returncode == 0, stderr
    return hashlib.sha256(out.read_bytes()).hexdigest()


def _joining(directory: Path, running: subprocess.Popen[str]) -> None:
    """Wait until the job writes its output's temporary file (the GOPs are being joined)."""
    deadline = time.monotonic() + 120
    while running.poll() is None and time.monotonic() < deadline:
        if any(n.startswith(".out.mp4.") for n in os.listdir(directory)):
            return
        time.sleep(0.005)


@pytest.mark.parametrize("after", [2.5, 4.5, 6.5, "join"])
def test_sigint_ends_with_one_line_and_resumes(
    clip: str, straight: str, tmp_path: Path, after: float | str
) -> None:
    out = tmp_path / "out.mp4"
    running = _transcode(clip, out)
    if after == "join":
        # Ray shuts down while the GOPs are joined: an interrupt there must not leave the
        # output behind a message that says the job was interrupted.
        _joining(tmp_path, running)
    else:
        time.sleep(float(after))
    running.send_signal(signal.SIGINT)
    _, stderr = running.communicate(timeout=120)
    if running.returncode == 0:
        pytest.skip(f"the job finished within {after} s, before the interrupt")
    assert running.returncode == 130, stderr  # a crash in teardown would be -11
    lines = stderr.strip().splitlines()
    assert lines == ["gopflow: interrupted; run again with --resume to continue"], stderr
    assert not out.exists()
    resumed = subprocess.run(
        [sys.executable, "-m", "gopflow", "transcode", clip, "-o", str(out), "--no-progress",
         "--preset", "veryfast", "--gop-seconds", "1", "--resume"],
        capture_output=True, text=True, timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == straight
    assert not [n for n in os.listdir(tmp_path) if "partial" in n]
