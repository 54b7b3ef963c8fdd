"""``gopflow ladder`` end to end: probe, hull, rungs encoded on Ray from one GOP plan,
CMAF + HLS + DASH in the output folder, honest bandwidths, ladder.json, resume, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import m3u8
import pytest
from mpegdash.parser import MPEGDASHParser

from conftest import make_clip


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ladder") / "talk.mp4"
    return make_clip(path, "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=4",
                     "-f", "lavfi", "-i", "sine=frequency=330:sample_rate=48000:duration=4",
                     "-c:v", "libx264", "-preset", "ultrafast", "-crf", "12", "-c:a", "aac",
                     "-shortest")


def _ladder(source: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gopflow", "ladder", source, "-o", str(out), "--no-progress",
         "--preset", "ultrafast", "--segment-seconds", "2", "--rungs", "3",
         "--floor-bitrate", "100k", *extra],
        capture_output=True, text=True, timeout=900,
    )


def _keyframes(path: Path) -> list[bool]:
    with av.open(str(path)) as container:
        return [p.is_keyframe for p in container.demux(container.streams.video[0]) if p.size]


def test_ladder_writes_a_playable_hls_and_dash_ladder(source: str, tmp_path: Path) -> None:
    out = tmp_path / "ladder"
    done = _ladder(source, out, "--plot", str(tmp_path / "hull.png"))
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "ladder.json").read_text())
    rungs = summary["rungs"]
    assert 2 <= len(rungs) <= 3
    rates = [r["measured"]["average_kbps"] for r in rungs]
    assert rates == sorted(rates) and rates[0] < rates[-1] / 1.4
    assert all(r["height"] <= 360 for r in rungs)
    assert (tmp_path / "hull.png").stat().st_size > 10_000

    master = m3u8.load(str(out / "master.m3u8"))
    assert master.version == 7 and len(master.playlists) == len(rungs)
    segments = None
    for playlist, rung in zip(master.playlists, rungs, strict=True):
        info = playlist.stream_info
        assert info.bandwidth >= info.average_bandwidth > 0
        assert info.codecs.startswith("avc1.") and "mp4a.40.2" in info.codecs
        media = m3u8.load(str(out / playlist.uri))
        count = len(media.segments)
        segments = segments or count
        assert count == segments  # every rung cut at the same frames
        # Each segment opens with an IDR (whole closed GOPs): a player can switch anywhere.
        init = (out / rung["name"] / "init.mp4").read_bytes()
        for segment in media.segments:
            joined = tmp_path / "joined.mp4"
            joined.write_bytes(init + (out / rung["name"] / segment.uri).read_bytes())
            assert _keyframes(joined)[0]
        peak = max(
            (out / rung["name"] / s.uri).stat().st_size * 8 / s.duration for s in media.segments
        )
        assert info.bandwidth >= peak  # BANDWIDTH covers the video's own peak segment
    assert any(m.type == "AUDIO" for m in master.media)
    mpd = MPEGDASHParser.parse(str(out / "manifest.mpd"))
    sets = mpd.periods[0].adaptation_sets
    video = [a for a in sets if (a.mime_type or a.representations[0].mime_type or "")
             .startswith("video")]
    assert len(video[0].representations) == len(rungs)
    assert not list(tmp_path.glob(".ladder*")) and not list(tmp_path.glob("*.tmp*"))


def test_ladder_refuses_bad_input_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    done = _ladder(str(bad), tmp_path / "out")
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("gopflow: error")
    assert not (tmp_path / "out").exists()
    wrong = _ladder(str(bad), tmp_path / "out2", "--codec", "dvc")
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1


def test_killed_ladder_resumes_to_the_same_ladder(source: str, tmp_path: Path) -> None:
    import glob
    import os
    import signal
    import time

    from integration.helpers import slow_ffmpeg

    straight = tmp_path / "straight"
    assert _ladder(source, straight).returncode == 0
    out, work = tmp_path / "out", tmp_path / "work"
    killed = subprocess.Popen(
        [sys.executable, "-m", "gopflow", "ladder", source, "-o", str(out), "--no-progress",
         "--preset", "ultrafast", "--segment-seconds", "2", "--rungs", "3",
         "--floor-bitrate", "100k", "--work-dir", str(work), "--workers", "1"],
        env={**os.environ, "GOPFLOW_FFMPEG": str(slow_ffmpeg(tmp_path, 0.5))},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    while len(glob.glob(str(work / "*" / "done" / "gop_*.json"))) < 3:
        assert killed.poll() is None, "the ladder ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert not out.exists()
    resumed = _ladder(source, out, "--work-dir", str(work), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "GOPs already done" in resumed.stderr
    files = sorted(p.relative_to(straight) for p in straight.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    for name in files:
        if name.name != "ladder.json":  # holds wall times
            assert (out / name).read_bytes() == (straight / name).read_bytes(), name
