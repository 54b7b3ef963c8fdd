"""``gopflow ladder --precoder dvp``: rungs below the source's height downscaled by the learned
DVP downscalers (real PyTorch inference, real x264, real libvmaf in the probe, Ray for the
rungs): which heights and how, the stage on its own, and a whole ladder that decodes with
the source's frame count, IDRs aligned, the same bytes when run again."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import pytest

from gopflow.codecs.x26x import EncodeSettings, GopTask
from gopflow.errors import UsageError
from gopflow.jobs.ladder import DvpGopTask, DvpRungStage
from gopflow.jobs.transcode import source_format
from gopflow.media.probe import probe
from gopflow.pipeline.stages import GopEncodeStage
from gopflow.precoders.dvp.ladder import DvpRung, dvp_heights, dvp_rung
from gopflow.quality.ladder_probe import DEFAULT_HEIGHTS
from gopflow.types import GopSpec
from integration.ladder_media import make_source

FPS = 25
SECONDS = 3


def test_dvp_rung_heights_and_sizes():
    assert dvp_heights(1920, 1080, DEFAULT_HEIGHTS) == (1080, 810, 720, 540, 432, 360, 270, 216)
    assert dvp_heights(960, 540, DEFAULT_HEIGHTS) == (540, 404, 360, 270, 216)
    assert dvp_rung(1920, 1080, 1080) is None
    assert dvp_rung(961, 541, 540) is None  # the odd source's own size: the plain rung
    assert dvp_rung(1920, 1080, 720) == DvpRung(Fraction(2, 3), (1280, 720), (1280, 720))
    # Below 1/2: DVP 1/2, then Lanczos to the source's aspect.
    assert dvp_rung(1920, 1080, 432) == DvpRung(Fraction(1, 2), (960, 540), (768, 432))
    # Between DVP heights: the nearest scale above, then Lanczos.
    assert dvp_rung(1920, 1080, 600) == DvpRung(Fraction(2, 3), (1280, 720), (1066, 600))
    assert dvp_rung(1920, 1080, 432).describe() == "dvp 1/2 + lanczos"
    with pytest.raises(UsageError, match="no DVP scale"):
        dvp_rung(1920, 1080, 900)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ladder_dvp") / "talk.mp4"
    return make_source(path, seconds=SECONDS, size="320x180", fps=FPS)


def test_dvp_stage_makes_the_rung_and_passes_full_size_gops_through(source: str):
    info = probe(source)
    gop = GopSpec(index=0, start_frame=10, frame_count=20, start_pts=None, scene_cut=False)
    settings = EncodeSettings(codec="x264", preset="ultrafast", crf=30, threads=1, keyint=50)
    plain = GopTask(info.path, info.stream_index, info.read_mode, gop, source_format(info),
                    settings)
    stage = DvpRungStage()
    try:
        # The source-size rung of a DVP ladder: the plain stage's bytes.
        reference = GopEncodeStage()
        try:
            assert stage(plain).data == reference(plain).data
        finally:
            reference.close()
        rung = dvp_rung(info.width, info.height, 72)
        assert rung is not None and rung.then_lanczos
        first = stage(DvpGopTask(plain, rung))
        again = DvpRungStage()
        try:
            assert again(DvpGopTask(plain, rung)).data == first.data  # a fresh worker
        finally:
            again.close()
    finally:
        stage.close()
    segment = Path(source).with_name("dvp_gop.mp4")
    segment.write_bytes(first.data)
    with av.open(str(segment)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == first.frames == 20
    assert {(f.width, f.height) for f in frames} == {rung.size} == {(128, 72)}
    assert frames[0].key_frame


def _ladder(source: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gopflow", "ladder", source, "-o", str(out), "--no-progress",
         "--precoder", "dvp", "--preset", "ultrafast", "--segment-seconds", "2",
         "--rungs", "3", "--floor-bitrate", "50k", *extra],
        capture_output=True, text=True, timeout=900,
    )


def _rendition(folder: Path) -> tuple[int, list[int], tuple[int, int]]:
    """Frames decoded from a rung's init + media segments, the key frames' indices and the
    picture size."""
    joined = folder / "joined.mp4"
    joined.write_bytes(b"".join(p.read_bytes() for p in
                                [folder / "init.mp4", *sorted(folder.glob("seg_*.m4s"))]))
    try:
        with av.open(str(joined)) as container:
            frames = list(container.decode(video=0))
    finally:
        joined.unlink()
    keys = [i for i, frame in enumerate(frames) if frame.key_frame]
    return len(frames), keys, (frames[0].width, frames[0].height)


@pytest.mark.slow
def test_dvp_ladder_decodes_aligned_and_deterministic(source: str, tmp_path: Path):
    frames = probe(source).frame_count
    assert frames == FPS * SECONDS
    first, second = tmp_path / "first", tmp_path / "second"
    done = _ladder(source, first)
    assert done.returncode == 0, done.stderr
    summary = json.loads((first / "ladder.json").read_text())
    assert summary["settings"]["precoder"] == "dvp"
    rungs = summary["rungs"]
    assert len(rungs) >= 2
    assert any(r["downscale"].startswith("dvp") for r in rungs), rungs
    starts = None
    for rung in rungs:
        count, keys, size = _rendition(first / rung["name"])
        assert count == frames, rung["name"]
        assert size == (rung["width"], rung["height"])
        starts = starts or keys
        assert keys == starts, f"{rung['name']}: IDRs at {keys}, not {starts}"
    assert starts and starts[0] == 0 and len(starts) >= SECONDS  # GOPs of at most 1 s
    # Again, one worker instead of the CPUs: the same bytes in every file.
    again = _ladder(source, second, "--workers", "1")
    assert again.returncode == 0, again.stderr
    names = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for name in names:
        if name.name != "ladder.json":  # holds wall times
            assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_vistra_is_refused_for_a_ladder_with_one_line(source: str, tmp_path: Path):
    done = _ladder(source, tmp_path / "out", "--precoder", "vistra")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert "ViSTRA needs" in done.stderr and "standard players" in done.stderr
    assert not (tmp_path / "out").exists()
    import gopflow

    with pytest.raises(UsageError, match="vistra does not apply to a ladder"):
        gopflow.ladder(source, str(tmp_path / "out"), precoder="vistra")
