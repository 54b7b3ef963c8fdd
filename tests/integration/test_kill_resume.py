"""SIGKILL mid-job (no clean-up code runs at all), then ``--resume``: the finished GOPs are
reused, the output is byte-identical to an uninterrupted run's, and the killed run's work-dir
lock is gone with it."""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from helpers import slow_ffmpeg

from conftest import make_clip


def _command(source: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gopflow", "transcode", source, "-o", str(out),
            "--no-progress", "--preset", "ultrafast", "--gop-seconds", "0.2",
            "--min-gop-seconds", "0.2", "--workers", "1", *extra]


def test_sigkilled_run_resumes_byte_identical(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "in.mkv", "-f", "lavfi", "-i",
                       "testsrc2=size=96x64:rate=25:duration=2", "-c:v", "ffv1")
    reference = tmp_path / "reference.mp4"
    done = subprocess.run(_command(source, reference), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr

    out, work = tmp_path / "out" / "out.mp4", tmp_path / "work"
    out.parent.mkdir()
    env = {**os.environ, "GOPFLOW_FFMPEG": str(slow_ffmpeg(tmp_path))}
    killed = subprocess.Popen(_command(source, out, "--work-dir", str(work)), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 300
        while len(glob.glob(str(work / "*" / "done" / "gop_*.json"))) < 3:
            assert killed.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        children = psutil.Process(killed.pid).children(recursive=True)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=60)
        # Its reaper stops the local cluster it started (GCS, raylet, agents, workers).
        _, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, [f"{p.pid} {p.name()}" for p in alive]
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.wait()
        # What the killed driver started (its local Ray cluster) must not outlive the test.
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()
    assert not out.exists() and os.listdir(out.parent) == []  # nothing that looks complete
    finished = len(glob.glob(str(work / "*" / "done" / "gop_*.json")))
    assert 3 <= finished < 10

    report = tmp_path / "report.json"
    resumed = subprocess.run(
        _command(source, out, "--work-dir", str(work), "--resume", "--report", str(report)),
        capture_output=True, text=True, timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr  # the dead run's lock died with it
    assert f"resuming: {finished} of 10 GOPs already done" in resumed.stderr
    assert out.read_bytes() == reference.read_bytes()
    assert not glob.glob(str(work / "*"))
