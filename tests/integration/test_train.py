"""``gopflow train``: short real training jobs on generated clips (checkpoint, resume, outputs)."""

from __future__ import annotations

import argparse
import json
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from conftest import make_clip
from gopflow.cli.train import add_train_parser, run_train
from gopflow.errors import UsageError
from gopflow.precoders.dvp import DvpDownscaler
from gopflow.precoders.restore import RestoreTarget
from gopflow.precoders.vistra import FrameInterpolator, LearnedRestorer
from gopflow.training.data import data_hash, list_clips
from gopflow.training.precoders import train_precoder
from gopflow.zoo import registry as weights
from gopflow.zoo.registry import build_model

FAST = {"crop": 64, "batch": 4, "pool": 3, "threads": 1}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small moving clips: one with timestamps (seek), one raw H.264 stream (scan)."""
    root = tmp_path_factory.mktemp("train-data")
    make_clip(
        root / "pattern.mkv", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=0.4",
        "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-g", "4", "-pix_fmt", "yuv420p",
    )
    make_clip(
        root / "mandel.264", "-f", "lavfi", "-i", "mandelbrot=size=128x96:rate=25",
        "-frames:v", "6", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        "-f", "h264",
    )
    (root / "README.md").write_text("not a clip\n")
    return root


def _state(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_training_writes_outputs_and_resumes_exactly(clips, tmp_path):
    straight = train_precoder(
        "dvp", str(clips), scale="1/2", steps=12, out_dir=str(tmp_path / "a"), seed=3,
        checkpoint_every=4, progress=False, **FAST,
    )
    for path in (straight.weights, straight.metadata, straight.plot, straight.checkpoint):
        assert Path(path).is_file()
    assert Path(straight.plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads(Path(straight.metadata).read_text())
    assert meta["kind"] == "dvp" and meta["scale"] == "1/2" and meta["steps"] == 12
    assert meta["seed"] == 3 and meta["torch_version"] == torch.__version__
    assert meta["data_hash"] == data_hash(list_clips(clips))
    assert [c["name"] for c in meta["clips"]] == ["mandel.264", "pattern.mkv"]
    assert meta["final_loss"] > 0 and meta["wall_seconds"] > 0
    assert meta["weights_sha256"] == weights.sha256_file(straight.weights)
    model = build_model(meta["arch"])
    model.load_state_dict(_state(straight.weights))

    # The same run, interrupted after step 10 (last checkpoint at step 8), then resumed.
    def interrupt(step: int, loss: float) -> None:
        if step == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_precoder(
            "dvp", str(clips), scale="1/2", steps=12, out_dir=str(tmp_path / "b"), seed=3,
            checkpoint_every=4, progress=False, on_step=interrupt, **FAST,
        )
    checkpoint = torch.load(tmp_path / "b" / "checkpoint-dvp-1_2.pt", weights_only=True)
    assert checkpoint["step"] == 8
    messages: list[str] = []
    resumed = train_precoder(
        "dvp", str(clips), scale="1/2", steps=12, out_dir=str(tmp_path / "b"), seed=3,
        checkpoint_every=4, progress=False, resume=True, log=messages.append, **FAST,
    )
    assert any("resuming dvp-1_2 at step 8" in m for m in messages)
    a, b = _state(straight.weights), _state(resumed.weights)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses_a = torch.load(straight.checkpoint, weights_only=True)["losses"]
    losses_b = torch.load(resumed.checkpoint, weights_only=True)["losses"]
    assert losses_a == losses_b

    with pytest.raises(UsageError, match="different run"):
        train_precoder(
            "dvp", str(clips), scale="1/2", steps=12, out_dir=str(tmp_path / "b"), seed=4,
            progress=False, resume=True, **FAST,
        )


def test_upsampler_and_interpolator_train_install_and_restore(clips, tmp_path):
    registry = tmp_path / "registry"
    up = train_precoder(
        "vistra-up", str(clips), scale="3/4", steps=3, out_dir=str(tmp_path / "o"),
        progress=False, **FAST,
    )
    interp = train_precoder(
        "vistra-interp", str(clips), steps=3, out_dir=str(tmp_path / "o"), progress=False,
        **FAST,
    )
    for result in (up, interp):
        meta = json.loads(Path(result.metadata).read_text())
        weights.install_model(result.name, result.weights, meta["arch"],
                              (result.metadata, result.plot), registry)
    assert sorted(weights.read_registry(registry)) == ["vistra-interp", "vistra-up-3_4"]
    assert isinstance(weights.load_model("vistra-interp", registry), FrameInterpolator)

    restorer = LearnedRestorer(threads=1, registry_dir=str(registry))
    assert restorer.upsampler(Fraction(3, 4)) is not None
    assert restorer.upsampler(Fraction(1, 2)) is None  # not trained: bicubic fallback
    target = RestoreTarget(64, 48, Fraction(25), 3)
    frame_bytes = bytes(range(256)) * (64 * 48 * 3 // 2 // 256)
    mid = restorer.interpolate(frame_bytes, frame_bytes, 64, 48)
    assert len(mid) == len(frame_bytes)
    assert target.width == 64


def test_cli_handler_runs_a_short_job(clips, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="gopflow")
    add_train_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args([
        "train", "precoder", "--kind", "dvp", "--scale", "2/3", "--data", str(clips),
        "--steps", "2", "--crop", "48", "--batch", "2", "--threads", "1",
        "--out", str(tmp_path / "cli"), "--no-progress",
    ])
    assert run_train(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["name"] == "dvp-2_3" and Path(result["weights"]).is_file()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "precoder", "--kind", "dvp", "--data", "x", "--scale", "2"])


def test_x264_coded_pairs_are_aligned_real_codings_and_training_resumes(clips, tmp_path):
    """--proxy x264: low-res crops are really x264-coded versions of the source crops."""
    import numpy as np

    from gopflow.training.data import index_clip
    from gopflow.training.x264 import CodedPairPool

    clip = index_clip(clips / "pattern.mkv")
    scale = Fraction(1, 2)
    sharp = CodedPairPool([clip], seed=1, size=2, scale=scale, crf_range=(12, 12)).at(0)
    coarse = CodedPairPool([clip], seed=1, size=2, scale=scale, crf_range=(45, 45)).at(0)
    source, good = sharp.batch(0, 4, 64)
    same, bad = coarse.batch(0, 4, 64)
    assert torch.equal(source, same) and good.shape == (4, 1, 32, 32)
    down = torch.nn.functional.avg_pool2d(source, 2)  # aligned crops agree with a plain 2x2 mean

    def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))

    assert psnr(good, down) > 28  # misaligned by one low-res pixel this drops below 20
    assert psnr(good, down) > psnr(bad, down) + 3  # CRF 45 is coded much more coarsely
    shifted = torch.roll(good, 1, dims=-1)
    assert psnr(shifted, down) < psnr(good, down) - 3
    assert np.isfinite(psnr(bad, down))
    # 2/3 of 160x120 is not exact: frames are cropped to 156x120 (-> 104x80), crops align.
    third = CodedPairPool([clip], seed=1, size=2, scale=Fraction(2, 3), crf_range=(12, 12))
    big, small = third.at(0).batch(0, 4, 60)
    assert small.shape == (4, 1, 40, 40)
    up = torch.nn.functional.interpolate(small, size=(60, 60), mode="bicubic")
    assert psnr(up, big) > psnr(torch.roll(up, 2, dims=-1), big) + 3

    first = train_precoder(
        "vistra-up", str(clips), scale="1/2", steps=4, out_dir=str(tmp_path / "a"), seed=2,
        checkpoint_every=2, progress=False, proxy="x264", **FAST,
    )
    meta = json.loads(Path(first.metadata).read_text())
    assert meta["proxy"] == "x264" and meta["qp_range"] == [18.0, 45.0]
    evaluation = meta["evaluation_on_training_crops"]
    assert len(evaluation["model_psnr"]) == len(evaluation["plain_psnr"]) == 4
    # Interrupted after step 3 (checkpoint at step 2), then resumed: the x264 pool is
    # rebuilt from the seed alone and the result is bit-identical.
    def interrupt(step: int, loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_precoder(
            "vistra-up", str(clips), scale="1/2", steps=4, out_dir=str(tmp_path / "b"), seed=2,
            checkpoint_every=2, progress=False, proxy="x264", on_step=interrupt, **FAST,
        )
    resumed = train_precoder(
        "vistra-up", str(clips), scale="1/2", steps=4, out_dir=str(tmp_path / "b"), seed=2,
        checkpoint_every=2, progress=False, proxy="x264", resume=True, **FAST,
    )
    a, b = _state(first.weights), _state(resumed.weights)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_x264_proxy_is_refused_for_downscalers(clips, tmp_path):
    with pytest.raises(UsageError, match="vistra-up only"):
        train_precoder("dvp", str(clips), steps=1, out_dir=str(tmp_path), proxy="x264",
                       progress=False, **FAST)


def test_lanczos_base_trains_for_dvp_only(clips, tmp_path):
    with pytest.raises(UsageError, match="dvp only"):
        train_precoder("vistra-up", str(clips), steps=1, out_dir=str(tmp_path),
                       arch={"base": "lanczos"}, progress=False, **FAST)
    result = train_precoder("dvp", str(clips), steps=2, out_dir=str(tmp_path / "dvp"),
                            arch={"base": "lanczos"}, progress=False, **FAST)
    meta = json.loads(Path(result.metadata).read_text())
    assert meta["arch"]["base"] == "lanczos"
    weights.install_model(result.name, result.weights, meta["arch"], (), tmp_path / "registry")
    model = weights.load_model(result.name, tmp_path / "registry")
    assert isinstance(model, DvpDownscaler) and model.base == "lanczos"


def test_init_fine_tunes_a_registered_model(clips, tmp_path, monkeypatch):
    registry = tmp_path / "reg"
    net = DvpDownscaler(Fraction(1, 2))
    torch.manual_seed(5)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.normal_(0, 0.05)
    path = tmp_path / "w.pt"
    torch.save(net.state_dict(), path)
    weights.install_model("dvp-1_2", path, net.arch(), directory=registry)
    from gopflow.training.precoders import TrainConfig, build_model

    config = TrainConfig(kind="dvp", data_dir=str(clips), init="dvp-1_2")
    original = weights.load_model
    monkeypatch.setattr(weights, "load_model", lambda name: original(name, registry))
    model = build_model(config)
    assert model.training and all(p.requires_grad for p in model.parameters())
    state = net.state_dict()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
