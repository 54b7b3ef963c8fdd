"""End-to-end transcodes of real clips through a real local Ray cluster and real ffmpeg."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import gopflow
from conftest import media
from gopflow.media.probe import probe
from gopflow.pipeline.runner import RayRunner
from gopflow.quality.metrics import psnr_y
from integration.helpers import inspect, plain_ffmpeg


@pytest.fixture(scope="module", autouse=True)
def ray_cluster() -> Iterator[None]:
    """One local Ray cluster for the module (jobs reuse a running cluster)."""
    with RayRunner(num_cpus=2):
        yield


def _transcode(src: str, out: Path, **options: object) -> dict:
    """Through the public API, as a library user calls it."""
    report = gopflow.transcode(src, str(out), report=str(out) + ".json", progress=False,
                               **options)
    return report.to_dict()


def test_mp4_with_audio_matches_plain_ffmpeg(tmp_path: Path) -> None:
    src = media("his_girl_friday_640x480.mp4")
    out = tmp_path / "friday.mp4"
    report = _transcode(src, out, crf=18)
    got = inspect(str(out))
    source = inspect(src)
    assert (got.frames, got.width, got.height) == (185, 640, 480)
    assert got.fps == pytest.approx(source.fps, abs=1e-6)
    assert got.audio == 1
    assert got.audio_seconds[0] == pytest.approx(source.audio_seconds[0], abs=0.05)
    assert got.video_seconds == pytest.approx(source.video_seconds, abs=0.04)
    assert report["totals"]["gops"] >= 3
    assert sum(g["frames"] for g in report["gops"]) == 185
    assert all(g["bytes"] > 0 and g["encode_seconds"] > 0 for g in report["gops"])
    assert not any(name.startswith(".") for name in os.listdir(tmp_path))  # no temp left
    reference = plain_ffmpeg(src, str(tmp_path / "plain.mp4"))
    ours, theirs = psnr_y(src, str(out)).mean_y, psnr_y(src, reference).mean_y
    assert ours > 40
    assert abs(ours - theirs) < 0.5, (ours, theirs)


def test_raw_elementary_stream_scene_cuts_mkv(tmp_path: Path) -> None:
    src = media("derf_qcif_montage_176x144.264")
    out = tmp_path / "montage.mkv"
    report = _transcode(src, out, crf=20, preset="veryfast")
    got = inspect(str(out))
    assert (got.frames, got.width, got.height) == (1700, 176, 144)
    assert got.fps == pytest.approx(25.0, rel=1e-3)
    scene_gops = [g for g in report["gops"] if g["start_frame"] > 0]
    assert len(report["gops"]) > 1700 / 50  # scene cuts add GOPs beyond the 2 s grid
    assert scene_gops
    assert psnr_y(src, str(out)).mean_y > 38


def test_odd_dimensions_are_padded_to_even(tmp_path: Path, generated: dict[str, str]) -> None:
    src = generated["odd"]
    assert (probe(src).width, probe(src).height) == (721, 405)
    out = tmp_path / "odd.mp4"
    _transcode(src, out, crf=18)
    got = inspect(str(out))
    assert (got.frames, got.width, got.height) == (48, 722, 406)
    assert got.audio == 1
    assert psnr_y(src, str(out)).mean_y > 38  # compared on the source's 721x405 area


def test_x265_keeps_full_range_and_is_deterministic(tmp_path: Path) -> None:
    src = media("asl_again_640x480.mkv")
    first, second = tmp_path / "a.mkv", tmp_path / "b.mkv"
    _transcode(src, first, codec="x265", crf=24, preset="fast")
    _transcode(src, second, codec="x265", crf=24, preset="fast")
    assert first.read_bytes() == second.read_bytes()
    info = probe(str(first))
    assert info.frame_count == 77 and info.color_range == "pc"
    assert info.codec == "hevc"


def test_two_audio_streams_and_extra_video_stream(tmp_path: Path) -> None:
    src = media("nasa_jwst_320x180_480x270.mp4")
    out = tmp_path / "nasa.mp4"
    _transcode(src, out, crf=20, preset="veryfast")
    got = inspect(str(out))
    assert (got.frames, got.width, got.height, got.audio) == (325, 320, 180, 2)


def test_library_and_cli_give_the_same_file(tmp_path: Path) -> None:
    """Same request, same bytes: x265 with its own default CRF (28) through both doors."""
    import subprocess
    import sys

    src = media("asl_again_640x480.mkv")
    cli_out, api_out = tmp_path / "cli.mkv", tmp_path / "api.mkv"
    done = subprocess.run(
        [sys.executable, "-m", "gopflow", "transcode", src, "-o", str(cli_out), "--codec",
         "x265", "--preset", "ultrafast", "--report", str(cli_out) + ".json", "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    report = _transcode(src, api_out, codec="x265", preset="ultrafast")
    assert report["settings"]["encode"]["crf"] == 28.0
    with open(str(cli_out) + ".json", encoding="utf-8") as handle:
        assert json.load(handle)["settings"]["encode"]["crf"] == 28.0
    assert cli_out.read_bytes() == api_out.read_bytes()


def test_lookahead_tail_is_cut_off_frame_exact(tmp_path: Path) -> None:
    """With a tail the encoder sees frames past its GOP; the segment still ends at the GOP."""
    src = media("asl_again_640x480.mkv")
    out = tmp_path / "tail.mp4"
    report = _transcode(src, out, crf=20, preset="veryfast", lookahead_tail=8, gop_seconds=1.0)
    assert report["settings"]["encode"]["lookahead_tail"] == 8
    got = inspect(str(out))
    assert (got.frames, got.width, got.height) == (77, 640, 480)
    assert sum(g["frames"] for g in report["gops"]) == 77 and len(report["gops"]) > 1
