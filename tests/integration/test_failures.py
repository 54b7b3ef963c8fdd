"""GOP failures: a failing encoder is retried; one that keeps failing fails the job clearly.

The fault is injected by a wrapper around the real ffmpeg (``GOPFLOW_FFMPEG``): encodes fail
while a counter file allows, everything else runs the real binary.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from conftest import ffmpeg_exe, make_clip, media
from integration.helpers import inspect


def _flaky_ffmpeg(tmp_path: Path, failures: int) -> Path:
    counter = tmp_path / "failures_left"
    counter.write_text(str(failures))
    wrapper = tmp_path / "ffmpeg"
    wrapper.write_text(
        "#!/bin/sh\n"
        'case "$*" in *libx264*)\n'
        f'  left=$(cat "{counter}")\n'
        '  if [ "$left" -gt 0 ]; then\n'
        f'    echo $((left - 1)) > "{counter}"\n'
        '    echo "injected encoder crash" >&2; exit 1\n'
        "  fi;;\n"
        "esac\n"
        f'exec "{ffmpeg_exe()}" "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper


def _run(tmp_path: Path, wrapper: Path, out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GOPFLOW_FFMPEG": str(wrapper)}
    return subprocess.run(
        [sys.executable, "-m", "gopflow", "transcode", media("asl_again_640x480.mkv"),
         "-o", str(out), "--no-progress", "--retries", "2", "--preset", "veryfast"],
        capture_output=True, text=True, env=env, timeout=300,
    )


def test_a_crashing_encode_is_retried(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    done = _run(tmp_path, _flaky_ffmpeg(tmp_path, failures=1), out)
    assert done.returncode == 0, done.stderr
    assert out.exists()
    assert (tmp_path / "failures_left").read_text().strip() == "0"  # the fault did happen


def test_a_gop_failing_for_good_fails_the_job_with_its_index(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    done = _run(tmp_path, _flaky_ffmpeg(tmp_path, failures=1000), out)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("gopflow: error: GOP ")
    assert "(frames " in lines[0] and "injected encoder crash" in lines[0]
    assert "retries" in lines[0]
    assert not out.exists()


def test_a_failing_qro_gop_names_its_index(tmp_path: Path) -> None:
    out = tmp_path / "out.mkv"
    env = {**os.environ, "GOPFLOW_FFMPEG": str(_flaky_ffmpeg(tmp_path, failures=1000))}
    done = subprocess.run(
        [sys.executable, "-m", "gopflow", "transcode", media("asl_again_640x480.mkv"),
         "-o", str(out), "--no-progress", "--retries", "1", "--target-vmaf", "90"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode != 0
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("gopflow: error: GOP ") and "injected encoder crash" in line
    assert not out.exists()


def _refusing_ffmpeg(tmp_path: Path) -> tuple[Path, Path]:
    """An ffmpeg whose libx264 refuses its options (as it refused ``-colorspace gbr``),
    counting the encodes it was asked for."""
    calls = tmp_path / "encodes"
    wrapper = tmp_path / "ffmpeg"
    wrapper.write_text(
        "#!/bin/sh\n"
        'case "$*" in *libx264*)\n'
        f'  echo x >> "{calls}"\n'
        """  echo '[libx264 @ 0x5] Unable to parse "colorspace" option value "gbr"' >&2\n"""
        "  echo 'Error opening output files: Invalid argument' >&2; exit 1;;\n"
        "esac\n"
        f'exec "{ffmpeg_exe()}" "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper, calls


def test_an_encoder_refusing_its_options_is_not_retried_and_leaves_no_work_dir(
    tmp_path: Path,
) -> None:
    source = make_clip(tmp_path / "in.mkv", "-f", "lavfi", "-i",
                       "testsrc2=size=64x48:rate=25:duration=0.4", "-c:v", "ffv1")
    wrapper, calls = _refusing_ffmpeg(tmp_path)
    out = tmp_path / "out.mp4"
    done = subprocess.run(
        [sys.executable, "-m", "gopflow", "transcode", source, "-o", str(out), "--no-progress",
         "--retries", "2", "--preset", "ultrafast"],
        capture_output=True, text=True, env={**os.environ, "GOPFLOW_FFMPEG": str(wrapper)},
        timeout=300,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0] == ('gopflow: error: GOP 0 (frames 0-9): libx264 refused the encode: '
                        'Unable to parse "colorspace" option value "gbr"')
    assert len(calls.read_text().split()) == 1  # tried once, not 1 + 2 retries
    assert not out.exists()
    assert not (tmp_path / ".gopflow-work").exists()  # --resume could not help: removed


def test_a_lost_ray_worker_is_replaced_and_its_gop_rerun(tmp_path: Path) -> None:
    """The first encode SIGKILLs the Ray worker process running it (its parent): Ray
    restarts the actor and reruns the GOP; the job finishes with every frame."""
    source = make_clip(tmp_path / "in.mkv", "-f", "lavfi", "-i",
                       "testsrc2=size=64x48:rate=25:duration=0.8", "-c:v", "ffv1")
    counter = tmp_path / "kills_left"
    counter.write_text("1")
    wrapper = tmp_path / "ffmpeg"
    wrapper.write_text(
        "#!/bin/sh\n"
        'case "$*" in *libx264*)\n'
        f'  if [ "$(cat "{counter}")" -gt 0 ]; then\n'
        f'    echo 0 > "{counter}"; kill -9 $PPID; exit 1\n'
        "  fi;;\n"
        "esac\n"
        f'exec "{ffmpeg_exe()}" "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    out = tmp_path / "out.mp4"
    done = subprocess.run(
        [sys.executable, "-m", "gopflow", "transcode", source, "-o", str(out), "--no-progress",
         "--preset", "ultrafast", "--gop-seconds", "0.4", "--min-gop-seconds", "0.4"],
        capture_output=True, text=True, env={**os.environ, "GOPFLOW_FFMPEG": str(wrapper)},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert counter.read_text().strip() == "0"  # the worker was killed
    assert inspect(str(out)).frames == 20
