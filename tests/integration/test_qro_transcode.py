"""QRO end to end: per-GOP decisions, post-encode checks, decisions re-applied, restore."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import pytest

from conftest import ffmpeg_exe, media
from gopflow.codecs.x26x import EncodeSettings
from gopflow.errors import UsageError
from gopflow.jobs.config import TranscodeConfig
from gopflow.jobs.restore import run_restore
from gopflow.jobs.transcode import run_transcode
from gopflow.pipeline.driver import RunOptions
from gopflow.pipeline.runner import RayRunner
from gopflow.qro.target import QroSettings, QroTarget

CLIP = "asl_again_640x480.mkv"  # 77 frames at 30 fps: two GOPs of 2 s


@pytest.fixture(scope="module", autouse=True)
def ray_cluster() -> Iterator[None]:
    with RayRunner(num_cpus=2):
        yield


def _qro(src: str, out: Path, **extra: object) -> dict:
    settings = QroSettings(
        QroTarget("vmaf", target=90.0),
        scales=(Fraction(1), Fraction(2, 3), Fraction(1, 2)),
        max_probes_per_mode=3,
    )
    config = TranscodeConfig(
        input=src, output=str(out), settings=EncodeSettings(preset="faster"),
        qro=settings, report=str(out) + ".json", run=RunOptions(progress=False), **extra,  # type: ignore[arg-type]
    )
    return run_transcode(config).to_dict()


def _decoded_sizes(path: str) -> list[tuple[int, int]]:
    with av.open(path) as container:
        return [(f.width, f.height) for f in container.decode(video=0)]


def _ffmpeg_frame_count(path: str) -> int:
    done = subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-v", "error", "-i", path, "-map", "0:v",
         "-fps_mode", "passthrough", "-f", "framemd5",
         "-"], capture_output=True, text=True, check=True,
    )
    return sum(1 for line in done.stdout.splitlines() if line and not line.startswith("#"))


def test_target_vmaf_checks_every_gop_and_decisions_reapply(tmp_path: Path) -> None:
    src = media(CLIP)
    out = tmp_path / "qro.mkv"
    decisions = tmp_path / "decisions.json"
    report = _qro(src, out, decisions_out=str(decisions))
    gops = report["gops"]
    assert len(gops) == 2
    for gop in gops:
        decision = gop["decision"]
        assert decision["passed"] != decision["flagged"]
        if decision["passed"]:
            assert decision["quality"] >= 90.0 - 0.5
        assert decision["probes"], "the search probed candidates"
        assert decision["bits"] == gop["bytes"] * 8
    saved = json.loads(decisions.read_text())
    assert [g["index"] for g in saved["gops"]] == [0, 1]

    again = tmp_path / "again.mkv"
    replay = _qro(src, again, decisions_in=str(decisions))
    assert all(g["decision"]["forced"] and not g["decision"]["probes"] for g in replay["gops"])
    assert again.read_bytes() == out.read_bytes()

    viewer = tmp_path / "viewer.y4m"
    result = run_restore(str(out), str(viewer))
    assert (result.frames, result.width, result.height) == (77, 640, 480)


def test_mixed_sizes_and_rates_decode_everywhere(tmp_path: Path) -> None:
    src = media(CLIP)
    decisions = tmp_path / "mixed.json"
    decisions.write_text(json.dumps({
        "version": 1, "metric": "vmaf",
        "gops": [
            {"index": 0, "scale": "1/2", "half_rate": True, "crf": 24},
            {"index": 1, "scale": "2/3", "half_rate": False, "crf": 22},
        ],
    }))
    out = tmp_path / "mixed.mkv"
    report = _qro(src, out, decisions_in=str(decisions))
    first, second = report["gops"]
    assert first["decision"]["coded_frames"] == (first["frames"] + 1) // 2
    coded = first["decision"]["coded_frames"] + second["frames"]
    sizes = _decoded_sizes(str(out))
    assert len(sizes) == coded == _ffmpeg_frame_count(str(out))
    assert sizes[0] == (320, 240) and sizes[-1] == (426, 320)
    viewer = tmp_path / "viewer.mkv"
    result = run_restore(str(out), str(viewer))
    assert result.frames == 77
    assert set(_decoded_sizes(str(viewer))) == {(640, 480)}


def test_qro_needs_matroska(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="mkv"):
        _qro(media(CLIP), tmp_path / "out.mp4")


@pytest.mark.parametrize("precoder", ["dvp", "vistra"])
def test_learned_precoders_restore_from_the_file_alone(tmp_path: Path, precoder: str) -> None:
    src = media(CLIP)
    decisions = tmp_path / "half.json"
    decisions.write_text(json.dumps({
        "version": 1, "metric": "vmaf",
        "gops": [
            {"index": 0, "scale": "1/2", "half_rate": False, "crf": 24},
            {"index": 1, "scale": "1/2", "half_rate": True, "crf": 24},
        ],
    }))
    out = tmp_path / f"{precoder}.mkv"
    settings = QroSettings(QroTarget("vmaf", target=60.0), precoder=precoder)
    report = run_transcode(TranscodeConfig(
        input=src, output=str(out), settings=EncodeSettings(preset="veryfast"), qro=settings,
        decisions_in=str(decisions), run=RunOptions(progress=False),
    )).to_dict()
    assert [g["decision"]["scale"] for g in report["gops"]] == ["1/2", "1/2"]
    assert _decoded_sizes(str(out))[0] == (320, 240)
    viewer = tmp_path / "viewer.y4m"
    result = run_restore(str(out), str(viewer))
    assert (result.frames, result.width, result.height) == (77, 640, 480)
    # the worker's check and `restore` use the same restoration: same quality figure
    measured = report["gops"][0]["decision"]["quality"]
    from gopflow.quality.vmaf import vmaf_scores

    whole = vmaf_scores(src, str(viewer))
    assert abs(whole.per_gop([(0, 60)])[0].pooled["vmaf"].mean - measured) < 1.0


def test_predicted_mode_searches_one_scale_per_gop(tmp_path: Path) -> None:
    from gopflow.qro.mode_predictor import DEFAULT_PATH

    if not DEFAULT_PATH.exists():
        pytest.skip("no mode predictor shipped in this checkout")
    out = tmp_path / "predict.mkv"
    settings = QroSettings(QroTarget("vmaf", target=90.0), mode_select="predict")
    report = run_transcode(TranscodeConfig(
        input=media(CLIP), output=str(out), settings=EncodeSettings(preset="faster"),
        qro=settings, run=RunOptions(progress=False),
    )).to_dict()
    for gop in report["gops"]:
        decision = gop["decision"]
        assert len({(p["scale"], p["half_rate"]) for p in decision["probes"]}) == 1
        assert decision["passed"] != decision["flagged"]
