"""``gopflow batch``: many files through one cluster, frame-exact outputs, failures kept
local, a manifest, SIGKILL then ``--resume`` with nothing redone, collisions refused."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from conftest import make_clip
from integration.helpers import inspect, slow_ffmpeg


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four small videos in a tree (one with audio, one odd-sized), plus three bad ones."""
    root = tmp_path_factory.mktemp("batch") / "videos"
    (root / "talks").mkdir(parents=True)
    make_clip(root / "a.mp4", "-f", "lavfi", "-i", "testsrc2=size=160x96:rate=25:duration=2",
              "-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:v", "libx264",
              "-preset", "ultrafast", "-c:a", "aac", "-shortest")
    make_clip(root / "b.mkv", "-f", "lavfi", "-i", "testsrc=size=127x71:rate=30:duration=1.5",
              "-c:v", "ffv1")
    make_clip(root / "talks" / "c.mov", "-f", "lavfi", "-i",
              "mandelbrot=size=128x72:rate=24", "-t", "2", "-c:v", "libx264",
              "-preset", "ultrafast")
    make_clip(root / "talks" / "d.mp4", "-f", "lavfi", "-i",
              "testsrc2=size=96x64:rate=25:duration=1", "-c:v", "libx264", "-preset",
              "ultrafast")
    (root / "empty.mp4").write_bytes(b"")
    (root / "talks" / "notes.mkv").write_text("not a video\n")
    whole = (root / "a.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(whole[: len(whole) // 3])
    return root


def _batch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gopflow", "batch", *args, "--no-progress",
         "--preset", "ultrafast"],
        capture_output=True, text=True, timeout=600, env=env,
    )


GOOD = {"a.mp4": "a.mp4", "b.mkv": "b.mp4", "talks/c.mov": "talks/c.mp4",
        "talks/d.mp4": "talks/d.mp4"}
BAD = ("empty.mp4", "talks/notes.mkv", "truncated.mp4")


def test_batch_codes_the_good_files_and_names_the_bad_ones(videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = tmp_path / "report.json"
    done = _batch(str(videos), "-o", str(out), "--report", str(report))
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "gopflow: error: 3 of 7 files failed"
    assert "Traceback" not in done.stderr
    listed = json.loads(report.read_text())["files"]
    files = {os.path.relpath(f["input"], videos): f for f in listed}
    for name in BAD:
        assert files[name]["status"] == "failed"
        assert files[name]["reason"] and "\n" not in files[name]["reason"]
        assert os.path.relpath(files[name]["input"], videos) in done.stderr  # in the summary
    for source, target in GOOD.items():
        assert files[source]["status"] == "done"
        got, want = inspect(str(out / target)), inspect(str(videos / source))
        assert got.frames == want.frames
        assert (got.width, got.height) == (want.width + want.width % 2,
                                           want.height + want.height % 2)
        assert got.fps == pytest.approx(want.fps, rel=1e-3)
        assert got.audio == want.audio
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        [*GOOD.values(), "gopflow-batch.jsonl"])
    events = [json.loads(line) for line in (out / "gopflow-batch.jsonl").read_text().splitlines()]
    last = {e["output"]: e["status"] for e in events if e["event"] == "file"}
    assert sorted(status for status in last.values()) == ["done"] * 4 + ["failed"] * 3
    assert not (out / ".gopflow-work").exists() or not any((out / ".gopflow-work").iterdir())


def _gop_events(manifest: Path) -> list[tuple[str, int]]:
    return [(e["output"], e["gop"]) for e in map(json.loads, manifest.read_text().splitlines())
            if e["event"] == "gop"]


def test_sigkilled_batch_resumes_with_nothing_redone(videos: Path, tmp_path: Path) -> None:
    good = tmp_path / "good"
    for source in GOOD:
        (good / source).parent.mkdir(parents=True, exist_ok=True)
        (good / source).write_bytes((videos / source).read_bytes())
    options = ("--gop-seconds", "0.4", "--min-gop-seconds", "0.2", "--workers", "1")
    straight = _batch(str(good), "-o", str(tmp_path / "straight"), *options)
    assert straight.returncode == 0, straight.stderr

    out = tmp_path / "out"
    manifest = out / "gopflow-batch.jsonl"
    env = {**os.environ, "GOPFLOW_FFMPEG": str(slow_ffmpeg(tmp_path, 0.7))}
    killed = subprocess.Popen(
        [sys.executable, "-m", "gopflow", "batch", str(good), "-o", str(out), "--no-progress",
         "--preset", "ultrafast", *options],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 300
        # Kill once a file is done and the next one is part-way.
        while True:
            assert killed.poll() is None, "the batch ended before it could be killed"
            assert time.monotonic() < deadline
            text = manifest.read_text() if manifest.exists() else ""
            if '"status": "done"' in text and len(_gop_events(manifest)) >= 8:
                break
            time.sleep(0.05)
        children = psutil.Process(killed.pid).children(recursive=True)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=60)
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.wait()
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()
    before = _gop_events(manifest)
    killed_at = len(manifest.read_text().splitlines())
    resumed = _batch(str(good), "-o", str(out), *options, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "done earlier" in resumed.stderr
    for target in GOOD.values():
        assert (out / target).read_bytes() == (tmp_path / "straight" / target).read_bytes()
    after = _gop_events(manifest)
    assert after[: len(before)] == before and len(after) > len(before)
    twice = [gop for gop, count in Counter(after).items() if count > 1]
    assert not twice, f"GOPs coded again on resume: {twice}"
    events = list(map(json.loads, manifest.read_text().splitlines()))
    done_before = {e["output"] for e in events[:killed_at] if e.get("status") == "done"}
    run_again = {e["output"] for e in events[killed_at:] if e.get("status") == "running"}
    assert done_before and not done_before & run_again


def test_collisions_and_bad_templates_are_refused_before_any_work(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    make_clip(source / "x.mp4", "-f", "lavfi", "-i", "testsrc2=size=64x64:rate=25:duration=0.2",
              "-c:v", "libx264", "-preset", "ultrafast")
    (source / "x.mkv").write_bytes((source / "x.mp4").read_bytes())
    out = tmp_path / "out"
    collide = _batch(str(source), "-o", str(out))
    assert collide.returncode == 2, collide.stderr
    assert collide.stderr.count("\n") == 1 and "would both write" in collide.stderr
    assert not out.exists()
    bad = _batch(str(source), "-o", str(out), "--name-template", "{stem}-{size}.{ext}")
    assert bad.returncode == 2 and "unknown field(s) size" in bad.stderr
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    into_input = _batch(str(source), "-o", str(source), "--name-template", "{name}")
    assert into_input.returncode == 2 and "overwrite" in into_input.stderr
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before


def _codec(path: Path) -> str:
    import av

    with av.open(str(path)) as container:
        return str(container.streams.video[0].codec_context.name)


def test_list_with_per_file_options_and_the_python_api(videos: Path, tmp_path: Path) -> None:
    import gopflow

    table = tmp_path / "jobs.csv"
    table.write_text(
        "input,output,crf,codec\n"
        f"{videos / 'a.mp4'},low.mp4,40,\n"
        f"{videos / 'a.mp4'},high.mkv,12,x265\n"
    )
    report = gopflow.batch([], str(tmp_path / "out"), list_file=str(table), preset="ultrafast",
                           progress=False)
    assert [f.status for f in report.files] == ["done", "done"]
    low, high = (tmp_path / "out" / "low.mp4"), (tmp_path / "out" / "high.mkv")
    assert _codec(high) == "hevc" and _codec(low) == "h264"
    assert low.stat().st_size < high.stat().st_size
    assert report.files[1].report is not None
    assert report.files[1].report.settings["encode"]["crf"] == 12
