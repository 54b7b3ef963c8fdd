"""``gopflow transcode --codec dvc|fvc`` and ``gopflow decode`` end to end, through the CLI.

Real parts only: a real clip cropped to an odd size with ffmpeg, real Ray workers, CompressAI's
rANS coder writing the bytes. The models are small and untrained (fixed seeds), installed in a
temporary weights registry exactly as trained ones are, and handed over with ``--registry``
(the shipped weights are not needed). Decoding runs in a fresh process; its frames must equal
the encoder's reconstruction (digests per GOP in the transcode report) bit for bit.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from conftest import make_clip, media
from gopflow.codecs.learned.api import DEFAULT_MOTION_REFINEMENT
from gopflow.codecs.learned.bitstream import read_header, scan_gops
from gopflow.media.y4m import read_y4m_rgb
from gopflow.pipeline.stages import frames_digest, psnr_rgb
from small_codecs import INTER_ARCHS, SMALL_INTRA

WIDTH, HEIGHT, FRAMES = 177, 143, 12
SMALL = {"intra": SMALL_INTRA, **INTER_ARCHS}
TIMEOUT = 240


def _install(registry: Path, name: str, seed: int) -> None:
    import torch

    from gopflow.codecs.learned.engine import build_codec_model, registry_name
    from gopflow.zoo.registry import install_model

    torch.manual_seed(seed)
    model = build_codec_model(SMALL[name])
    model.eval()
    model.update()
    weights = registry / f"source-{name}.pt"
    torch.save(model.state_dict(), weights)
    metadata = registry / f"{registry_name(name)}.json"
    # Lambdas so small that rate decides: --adaptive-intra then keeps intra frames wherever
    # these untrained models code a frame in fewer bytes as intra than as inter.
    metadata.write_text(json.dumps({"lambdas": [1e-9, 2e-9, 4e-9, 8e-9]}))
    install_model(registry_name(name), weights, SMALL[name], (metadata,), registry)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    source = media("foreman_cif_352x288.264")
    root = tmp_path_factory.mktemp("learned")
    clip = make_clip(
        root / "foreman_177x143.mkv", "-i", source, "-frames:v", str(FRAMES),
        "-vf", f"format=yuv444p,crop={WIDTH}:{HEIGHT}:61:37", "-c:v", "ffv1",
    )
    registry = root / "registry"
    registry.mkdir()
    for seed, name in enumerate(SMALL):
        _install(registry, name, seed)
    return {"root": root, "clip": Path(clip), "registry": registry}


def _gopflow(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh process (as a user runs it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "gopflow", *args], capture_output=True, text=True,
        timeout=TIMEOUT, env=env,
    )


def _source_rgb(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]


def _one_line_error(done: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gopflow: error:"), done.stderr
    assert text in lines[0], lines[0]
    assert "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def coded(setup: dict[str, Path]) -> dict[str, Any]:
    """A 12-frame odd-sized clip coded with DVC in GOPs of 5, 5 and 2 frames (Ray workers)."""
    root = setup["root"]
    out, report = root / "clip.gflv", root / "report.json"
    done = _gopflow(
        "transcode", str(setup["clip"]), "-o", str(out), "--codec", "dvc", "--quality", "2",
        "--registry", str(setup["registry"]), "--gop-seconds", "0.2",
        "--min-gop-seconds", "0.04", "--workers", "2", "--report", str(report),
        "--no-adaptive-intra",
    )
    assert done.returncode == 0, done.stderr
    return {"path": out, "report": json.loads(report.read_text())}


def test_transcode_writes_scene_gops_with_level_and_report(
    setup: dict[str, Path], coded: dict[str, Any]
) -> None:
    with open(coded["path"], "rb") as handle:
        header = read_header(handle)
        extents = scan_gops(handle, header)
    assert (header.width, header.height, header.frame_count) == (WIDTH, HEIGHT, FRAMES)
    assert header.quality == 2 and header.model_id.startswith("dvc:")
    assert [e.frames for e in extents] == [5, 5, 2] and header.gop_size == 5
    gops = coded["report"]["gops"]
    assert [(g["start_frame"], g["frames"]) for g in gops] == [(0, 5), (5, 5), (10, 2)]
    assert coded["report"]["totals"]["bytes"] == coded["path"].stat().st_size
    assert sum(g["bytes"] for g in gops) < coded["path"].stat().st_size
    # The encoder-side PSNR is the recon's against the source frames the worker read.
    decoded_y4m = setup["root"] / "check.y4m"
    done = _gopflow("decode", str(coded["path"]), "-o", str(decoded_y4m),
                    "--registry", str(setup["registry"]), "--workers", "2")
    assert done.returncode == 0, done.stderr
    with open(decoded_y4m, "rb") as handle:
        width, height, fps, frames = read_y4m_rgb(handle)
        decoded = list(frames)
    assert (width, height, float(fps)) == (WIDTH, HEIGHT, 25.0) and len(decoded) == FRAMES
    source = _source_rgb(setup["clip"])
    for gop in gops:
        part = slice(gop["start_frame"], gop["start_frame"] + gop["frames"])
        assert frames_digest(decoded[part]) == gop["details"]["recon_sha256"]
        assert psnr_rgb(source[part], decoded[part]) == gop["details"]["psnr_rgb"]
        assert gop["details"]["quality"] == 2


def test_decode_to_mkv_is_lossless_rgb(setup: dict[str, Path], coded: dict[str, Any]) -> None:
    out = setup["root"] / "decoded.mkv"
    done = _gopflow("decode", str(coded["path"]), "-o", str(out),
                    "--registry", str(setup["registry"]), "--workers", "1")
    assert done.returncode == 0, done.stderr
    decoded = _source_rgb(out)
    assert len(decoded) == FRAMES
    for gop in coded["report"]["gops"]:
        part = slice(gop["start_frame"], gop["start_frame"] + gop["frames"])
        assert frames_digest(decoded[part]) == gop["details"]["recon_sha256"]
    assert not [p for p in os.listdir(setup["root"]) if "partial" in p or p.endswith(".tmp")]


def test_truncated_and_flipped_files_fail_cleanly(
    setup: dict[str, Path], coded: dict[str, Any]
) -> None:
    data = coded["path"].read_bytes()
    broken = setup["root"] / "broken.gflv"
    out = setup["root"] / "broken.y4m"
    for cut in (10, len(data) // 2, len(data) - 3):
        broken.write_bytes(data[:cut])
        done = _gopflow("decode", str(broken), "-o", str(out), "--registry",
                        str(setup["registry"]))
        _one_line_error(done, 1, "truncated")
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    broken.write_bytes(bytes(flipped))
    done = _gopflow("decode", str(broken), "-o", str(out), "--registry", str(setup["registry"]))
    _one_line_error(done, 1, "corrupt")
    assert not out.exists()


def test_bad_options_are_one_line_errors(setup: dict[str, Path]) -> None:
    clip, registry = str(setup["clip"]), str(setup["registry"])
    out = str(setup["root"] / "bad.gflv")
    done = _gopflow("transcode", clip, "-o", out, "--codec", "dvc", "--quality", "9",
                    "--registry", registry)
    _one_line_error(done, 2, "--quality must be 1 to 4")
    done = _gopflow("transcode", clip, "-o", out, "--codec", "dvc", "--crf", "20",
                    "--preset", "fast", "--registry", registry)
    _one_line_error(done, 2, "--crf, --preset apply to x264/x265")
    done = _gopflow("transcode", clip, "-o", str(setup["root"] / "x.mp4"), "--quality", "2")
    _one_line_error(done, 2, "--quality is for the learned codecs")
    done = _gopflow("transcode", clip, "-o", str(setup["root"] / "x.mp4"), "--codec", "dvc",
                    "--registry", registry)
    _one_line_error(done, 2, ".gflv")
    done = _gopflow("transcode", clip, "-o", out, "--codec", "intra", "--adaptive-intra",
                    "--registry", registry)
    _one_line_error(done, 2, "--adaptive-intra, --rdo, --intra-offset and --motion-refinement "
                    "are for dvc and fvc")
    done = _gopflow("transcode", clip, "-o", out, "--codec", "intra", "--intra-offset", "1",
                    "--registry", registry)
    _one_line_error(done, 2, "--adaptive-intra, --rdo, --intra-offset and --motion-refinement "
                    "are for dvc and fvc")
    done = _gopflow("transcode", clip, "-o", out, "--codec", "dvc", "--intra-offset", "300",
                    "--registry", registry)
    _one_line_error(done, 2, "--intra-offset must be 0 to 255")
    done = _gopflow("transcode", clip, "-o", out, "--codec", "dvc", "--motion-refinement", "-1",
                    "--registry", registry)
    _one_line_error(done, 2, "--motion-refinement must be 0 or more")
    for flag in ("--adaptive-intra", "--rdo", "--intra-offset=1", "--motion-refinement=5"):
        done = _gopflow("transcode", clip, "-o", str(setup["root"] / "x.mp4"), flag)
        _one_line_error(done, 2, f"{flag.split('=')[0]} is for the learned codecs")
    assert not os.path.exists(out)


@pytest.mark.parametrize(("codec", "gops"), [("fvc", [5, 5, 2]), ("intra", [1] * FRAMES)])
def test_other_codecs_decode_exactly_in_a_fresh_process(
    setup: dict[str, Path], codec: str, gops: list[int]
) -> None:
    root, registry = setup["root"], str(setup["registry"])
    out, report, decoded_y4m = root / f"{codec}.gflv", root / f"{codec}.json", root / "d.y4m"
    done = _gopflow(
        "transcode", str(setup["clip"]), "-o", str(out), "--codec", codec, "--quality", "4",
        "--registry", registry, "--gop-seconds", "0.2", "--min-gop-seconds", "0.04",
        "--report", str(report), "--no-adaptive-intra",
    )
    assert done.returncode == 0, done.stderr
    with open(out, "rb") as handle:
        header = read_header(handle)
        assert [e.frames for e in scan_gops(handle, header)] == gops  # intra: every frame
    done = _gopflow("decode", str(out), "-o", str(decoded_y4m), "--registry", registry)
    assert done.returncode == 0, done.stderr
    with open(decoded_y4m, "rb") as handle:
        decoded = list(read_y4m_rgb(handle)[3])
    for gop in json.loads(report.read_text())["gops"]:
        part = slice(gop["start_frame"], gop["start_frame"] + gop["frames"])
        assert frames_digest(decoded[part]) == gop["details"]["recon_sha256"]


def _decodes_as_reported(
    stream: Path, report: dict[str, Any], registry: str, decoded_y4m: Path
) -> None:
    """``gopflow decode`` (a fresh process) gives each GOP's reported reconstruction."""
    done = _gopflow("decode", str(stream), "-o", str(decoded_y4m), "--registry", registry)
    assert done.returncode == 0, done.stderr
    with open(decoded_y4m, "rb") as handle:
        decoded = list(read_y4m_rgb(handle)[3])
    for gop in report["gops"]:
        part = slice(gop["start_frame"], gop["start_frame"] + gop["frames"])
        assert frames_digest(decoded[part]) == gop["details"]["recon_sha256"]


def test_adaptive_intra_splits_gops_and_decodes_exactly(setup: dict[str, Path]) -> None:
    root, registry = setup["root"], str(setup["registry"])

    def transcode(name: str, *options: str) -> tuple[Path, str, dict[str, Any]]:
        out, report_path = root / f"{name}.gflv", root / f"{name}.json"
        done = _gopflow(
            "transcode", str(setup["clip"]), "-o", str(out), "--codec", "dvc", "--quality",
            "3", "--registry", registry, "--gop-seconds", "0.2", "--min-gop-seconds", "0.04",
            "--report", str(report_path), *options)
        assert done.returncode == 0, done.stderr
        report = json.loads(report_path.read_text())
        kinds = "".join(gop["details"]["kinds"] for gop in report["gops"])
        assert len(kinds) == FRAMES and all(g["details"]["kinds"][0] == "I" for g in report["gops"])
        # Every intra frame starts a closed GOP in the file; the header counts them.
        with open(out, "rb") as handle:
            header = read_header(handle)
            extents = scan_gops(handle, header)
        assert [e.frames for e in extents] == [len(run) for run in re.findall("[IR][PQS]*", kinds)]
        assert header.gop_count == len(extents) and header.intra_offset == 1
        return out, kinds, report

    # The dvc defaults: adaptive intra, --rdo (with the motion refinement) and intra offset 1.
    out, kinds, report = transcode("rdo")
    learned = report["settings"]["learned"]
    assert (learned["adaptive_intra"], learned["rdo"], learned["intra_offset"]) == (True, True, 1)
    assert learned["motion_refinement"] == DEFAULT_MOTION_REFINEMENT["dvc"]
    # Rate-dominated lambdas (fixed seeds): P frames drop their residual (S units), which
    # costs less than an intra frame.
    assert kinds.count("S") > 0 and kinds.count("I") == len(report["gops"]), kinds
    _decodes_as_reported(out, report, registry, root / "rdo.y4m")
    # Without --rdo (no skip), some P frames become intra frames (R units) instead.
    out, kinds, report = transcode("ai", "--no-rdo")
    assert report["settings"]["learned"]["rdo"] is False
    assert kinds.count("R") > 0 and kinds.count("I") == len(report["gops"]), kinds
    _decodes_as_reported(out, report, registry, root / "ai.y4m")
