"""The bad-input corpus (``corpus.py``) through ``python -m gopflow transcode``.

Every input gives EITHER a correct output (the input's frame count and frame rate, its size
padded to even for 4:2:0, its rotation and audio streams) OR exactly one stderr line
``gopflow: error: ...`` and a non-zero exit; never a traceback, an "internal error", a hang,
a partial output or a work dir left behind (none of these failures is one a resume could
help).

The jobs share one Ray node that this module starts (its own temp dir and ports) and stops:
starting a local cluster per job would triple the module's time.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import pytest

from gopflow.codecs.x26x import coded_size
from gopflow.media.probe import probe
from integration.corpus import CASES, Case
from integration.helpers import ray_cluster

TIMEOUT_S = 120


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    with ray_cluster(nodes=1, head_cpus=2) as (address, _):
        yield address


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    return next(s for s in container.streams.video
                if not s.disposition & av.stream.Disposition.attached_pic)


def _read(path: str) -> tuple[int, int, int, float, list[float]]:
    """Frames (decoded), width, height, nominal rate and frame times of a file, by PyAV."""
    with av.open(path) as container:
        stream = _video_stream(container)
        times = [float(frame.pts * stream.time_base) if frame.pts is not None else -1.0
                 for frame in container.decode(stream)]
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        context = stream.codec_context
        return len(times), context.width, context.height, float(rate), sorted(times)


def _expected_rate(nominal: float, times: list[float]) -> float:
    """The input's frame rate: its nominal one, or (frames - 1) / span when it varies."""
    if len(times) >= 3:
        gaps = [b - a for a, b in itertools.pairwise(times)]
        if max(gaps) - min(gaps) > 0.02 * max(gaps):
            return (len(times) - 1) / (times[-1] - times[0])
    return nominal


def _check_output(source: str, output: Path) -> None:
    frames, width, height, nominal, times = _read(source)
    got_frames, got_width, got_height, got_rate, _ = _read(str(output))
    assert got_frames == frames
    assert (got_width, got_height) == coded_size(width, height, "yuv420p")
    assert got_rate == pytest.approx(_expected_rate(nominal, times), rel=0.01)
    before, after = probe(source), probe(str(output))
    assert after.rotation == before.rotation
    assert len(after.audio) == len(before.audio)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_corpus(case: Case, tmp_path: Path, cluster: str) -> None:
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    outputs.mkdir()
    source = case.make(inputs)
    output = outputs / "out.mp4"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "gopflow", "transcode", source, "-o", str(output),
             "--no-progress", "--preset", "ultrafast", "--ray-address", cluster],
            capture_output=True, text=True, timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"gopflow hung on {case.name} (no exit in {TIMEOUT_S} s)")
    stderr = done.stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    if case.words is None:
        assert done.returncode == 0, stderr
        assert sorted(os.listdir(outputs)) == ["out.mp4"]  # no temp file, no work dir
        _check_output(source, output)
    else:
        assert done.returncode != 0
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("gopflow: error: "), stderr
        assert case.words in lines[0], lines[0]
        assert os.listdir(outputs) == []  # no partial output, no work dir left behind
