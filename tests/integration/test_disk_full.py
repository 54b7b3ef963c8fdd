"""A disk that fills up mid-job: one clear line, nothing at the output path, no temp files."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import media


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs (needs the right to mount, as root in a container has)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_with_one_line(small_disk: Path) -> None:
    out = small_disk / "out.mp4"
    done = subprocess.run(
        [sys.executable, "-m", "gopflow", "transcode", media("asl_again_640x480.mkv"), "-o",
         str(out), "--no-progress", "--preset", "ultrafast", "--crf", "4"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gopflow: error:"), done.stderr
    assert "No space left on device" in lines[0]
    assert done.stdout == ""
    assert not out.exists()
    leftovers = [name for _, _, files in os.walk(small_disk) for name in files
                 if "partial" in name or name.startswith(".tmp") or name.endswith(".tmp")]
    assert leftovers == []
