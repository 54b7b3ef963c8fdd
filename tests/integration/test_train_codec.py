"""``gopflow train codec``: tiny real training runs of the learned codecs (real PyAV data,
real CompressAI entropy coder in the evaluation), checkpoint/resume, outputs, CLI errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_clip
from gopflow.cli import main
from gopflow.codecs.learned.engine import load_codec
from gopflow.codecs.learned.hyperprior import resample_gains
from gopflow.codecs.learned.intra import IntraCodec
from gopflow.training.codecs import (
    CodecTrainConfig,
    install_codec,
    model_class,
    run_codec_training,
)
from gopflow.training.data import data_hash, list_clips
from gopflow.zoo import registry as weights

LAMBDAS = (0.0018, 0.0035, 0.0067, 0.013)
FAST = {"lmbdas": LAMBDAS, "crop": 64, "batch": 2, "threads": 1, "pool": 2, "refresh_every": 2,
        "eval_crops": 2, "eval_crop": 64}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A moving pattern (seekable) and a raw H.264 stream (scanned), plus a non-clip file."""
    root = tmp_path_factory.mktemp("codec-data")
    make_clip(
        root / "pattern.mkv", "-f", "lavfi", "-i", "testsrc2=size=160x128:rate=25:duration=0.8",
        "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-g", "8", "-pix_fmt", "yuv420p",
    )
    make_clip(
        root / "mandel.264", "-f", "lavfi", "-i", "mandelbrot=size=128x96:rate=25",
        "-frames:v", "12", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        "-f", "h264",
    )
    (root / "README.md").write_text("not a clip\n")
    return root


def _config(clips: Path, out: Path, **options: object) -> CodecTrainConfig:
    settings = {**FAST, "model": "intra", "steps": (4,), "seed": 5, **options}
    return CodecTrainConfig(data_dirs=(str(clips),), out_dir=str(out),
                            **settings)  # type: ignore[arg-type]


def _state(path: str | Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_intra_training_writes_outputs_and_resumes_bit_exactly(clips, tmp_path, monkeypatch):
    straight = run_codec_training(_config(clips, tmp_path / "a"), progress=False)
    for path in (straight.weights, straight.metadata, straight.plot, straight.checkpoint):
        assert Path(path).is_file()
    assert Path(straight.plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads(Path(straight.metadata).read_text())
    assert meta["steps"] == 4 and meta["stage_schedule"] == [{"stage": "rd", "steps": 4}]
    assert meta["lambdas"] == list(LAMBDAS) and meta["levels"] == 4
    assert meta["data_hash"] == data_hash(list_clips(clips)) and meta["init"] is None
    assert [c["name"] for c in meta["clips"]] == ["mandel.264", "pattern.mkv"]
    assert meta["torch_version"] == torch.__version__ and meta["wall_seconds"] > 0
    assert meta["weights_sha256"] == weights.sha256_file(straight.weights)
    assert torch.isfinite(torch.tensor(straight.final_loss)) and straight.final_loss > 0
    assert {"bpp", "psnr", "aux"} <= set(meta["final_metrics"])
    rows = meta["evaluation_real_bytes"]["levels"]
    assert [row["level"] for row in rows] == [1, 2, 3, 4]
    assert all(row["bpp"] > 0 and 0 < row["psnr"] < 99 for row in rows)
    # The shipped state dict holds the entropy coder's CDF tables (built by update()).
    state = _state(straight.weights)
    assert any(key.endswith("_quantized_cdf") and value.numel() > 0
               for key, value in state.items())

    # The same run interrupted after step 3 (Ctrl-C saves a checkpoint), then resumed.
    def interrupt(step: int, loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_codec_training(_config(clips, tmp_path / "b"), progress=False, on_step=interrupt)
    assert _state(tmp_path / "b" / "checkpoint-codec-intra.pt")["step"] == 3
    messages: list[str] = []
    resumed = run_codec_training(_config(clips, tmp_path / "b"), resume=True, progress=False,
                                 log=messages.append)
    assert any("resuming codec-intra at step 3 of 4" in m for m in messages)
    a, b = _state(straight.weights), _state(resumed.weights)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert resumed.evaluation == straight.evaluation

    # Interrupted in the middle of step 4 (before its update): the 3 steps done are kept.
    real_loss = IntraCodec.training_loss
    calls = []

    def interrupted(self, *args, **kwargs):  # the real loss, then Ctrl-C on the 4th call
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_loss(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(IntraCodec, "training_loss", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_codec_training(_config(clips, tmp_path / "d"), progress=False)
    assert _state(tmp_path / "d" / "checkpoint-codec-intra.pt")["step"] == 3
    mid = run_codec_training(_config(clips, tmp_path / "d"), resume=True, progress=False)
    d = _state(mid.weights)
    assert all(torch.equal(a[key], d[key]) for key in a)

    # Stopping early ships what there is; resuming finishes the schedule as if never stopped.
    early = run_codec_training(_config(clips, tmp_path / "c"), progress=False, stop_after=2)
    early_meta = json.loads(Path(early.metadata).read_text())
    assert early_meta["steps"] == 2 and early_meta["stopped_early"] and early.steps == 2
    finished = run_codec_training(_config(clips, tmp_path / "c"), resume=True, progress=False)
    c = _state(finished.weights)
    assert all(torch.equal(a[key], c[key]) for key in a)

    # Other settings refuse the checkpoint; installing registers the weights by hash.
    with pytest.raises(ValueError, match="different run"):
        run_codec_training(_config(clips, tmp_path / "b", batch=3), resume=True, progress=False)
    install_codec(resumed, str(tmp_path / "registry"))
    entry = weights.read_registry(tmp_path / "registry")["codec-intra"]
    assert entry.sha256 == meta["weights_sha256"] and entry.arch["class"] == "IntraCodec"
    assert weights.model_path("codec-intra", tmp_path / "registry").is_file()
    # Parameters ship as float16 and load into the float32 model the engine codes with.
    assert state["g_a.0.weight"].dtype == torch.float16
    codec = load_codec("intra", str(tmp_path / "registry"))
    frame = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    coded = codec.encode_gop([frame], 2)
    assert codec.decode_gop(coded.frames, 96, 64, 2)[0].tobytes() == coded.recon[0].tobytes()

    # --init continues from the installed weights: step 0 starts from them, not at random.
    started: list[dict[str, torch.Tensor]] = []

    def first_state(step: int, loss: float) -> None:
        if step == 1:
            raise KeyboardInterrupt  # the checkpoint then holds the model after one step

    for init, out in ((True, "e"), (False, "f")):
        with pytest.raises(KeyboardInterrupt):
            run_codec_training(_config(clips, tmp_path / out, registry=str(tmp_path / "registry"),
                                       init=init, seed=6), progress=False, on_step=first_state)
        started.append(_state(tmp_path / out / "checkpoint-codec-intra.pt")["model"])
    installed = {k: v.float() for k, v in _state(resumed.weights).items()}
    weight = "g_a.0.weight"
    near = (started[0][weight] - installed[weight]).abs().max()
    far = (started[1][weight] - installed[weight]).abs().max()
    assert near < 0.01 < far  # one Adam step (lr 1e-3) away from the installed weights

    # --init to other rate points: a level below the installed ones is added, its gains
    # extrapolated in log-lambda; the installed levels start from their own gains.
    lower = (0.0009, *LAMBDAS)
    with pytest.raises(KeyboardInterrupt):
        run_codec_training(_config(clips, tmp_path / "g", registry=str(tmp_path / "registry"),
                                   init=True, seed=6, lmbdas=lower),
                           progress=False, on_step=first_state)
    moved = _state(tmp_path / "g" / "checkpoint-codec-intra.pt")["model"]
    for name in ("prior.gain", "prior.inv_gain", "prior.hyper_gain"):
        assert moved[name].shape[0] == 5
        expected = resample_gains(installed[name], LAMBDAS, lower)
        assert (moved[name].abs() - expected).abs().max() < 0.01
        assert (expected[1:] - installed[name].abs()).abs().max() < 1e-5
    assert (moved[weight] - installed[weight]).abs().max() < 0.01


@pytest.mark.parametrize(
    ("arguments", "message", "status"),
    [
        (["--lmbda", "0.01,abc"], "comma-separated numbers", 2),
        (["--lmbda", "0.01,0.005"], "must increase", 2),
        (["--crop", "100"], "multiple of 64", 2),
        (["--steps", "10,20"], "one value or one per stage", 2),
        (["--frames", "3"], "--frames applies to dvc and fvc", 2),
        (["--stride", "2"], "--stride applies to dvc and fvc", 2),
        (["--stages", "residual"], "takes distinct stages from rd", 2),
        (["--model", "dvc", "--stages", "rd,rd"], "takes distinct stages from motion", 2),
        (["--model", "dvc", "--stages", "residual"], "fine-tune installed weights", 2),
    ],
)
def test_cli_rejects_bad_arguments_in_one_line(clips, tmp_path, capsys, arguments, message,
                                               status):
    code = main(["train", "codec", "--model", "intra", "--data", str(clips),
                 "--out", str(tmp_path), "--no-progress", *arguments])
    err = capsys.readouterr().err.strip()
    assert code == status
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_cli_errors_on_empty_data_and_missing_intra(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no video here\n")
    code = main(["train", "codec", "--model", "intra", "--data", str(empty), "--steps", "1",
                 "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "no video files" in err and len(err.splitlines()) == 1
    code = main(["train", "codec", "--model", "intra", "--data", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "does not exist" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("model", ["dvc", "fvc"])
def test_p_models_train_staged_on_installed_intra_references(clips, tmp_path, model,
                                                             monkeypatch):
    registry = str(tmp_path / "registry")
    with pytest.raises(OSError, match="codec-intra"):  # no intra installed yet
        run_codec_training(_config(clips, tmp_path / model, registry=registry, model=model,
                                   steps=(1, 1)), progress=False)
    intra = run_codec_training(_config(clips, tmp_path / "intra", steps=(2,)), progress=False)
    install_codec(intra, registry)
    # DVC unrolls three P frames per sample (--frames), FVC its default two.
    frames = 3 if model == "dvc" else None
    config = _config(clips, tmp_path / model, registry=registry, batch=1, eval_crops=1,
                     model=model, steps=(1, 2), frames=frames)
    cls = model_class(model)
    real_loss, unrolled = cls.training_loss, []

    def recording_loss(self, reference, chain, *args):  # type: ignore[no-untyped-def]
        unrolled.append(chain.shape[1])
        return real_loss(self, reference, chain, *args)

    monkeypatch.setattr(cls, "training_loss", recording_loss)
    result = run_codec_training(config, progress=False)
    assert unrolled == [frames or 2] * 3
    meta = json.loads(Path(result.metadata).read_text())
    assert meta["frames_per_sample"] == (frames or 2)
    stages = {"dvc": "motion", "fvc": "align"}[model]
    assert meta["stage_schedule"] == [{"stage": stages, "steps": 1}, {"stage": "rd", "steps": 2}]
    assert meta["reference"] == "codec-intra decoded previous frame"
    assert torch.isfinite(torch.tensor(result.final_loss))
    evaluation = meta["evaluation_real_bytes"]
    assert evaluation["frames_per_crop"] == config.eval_gop
    assert all(row["inter_bpp"] > 0 and row["bpp"] > row["inter_bpp"] * 0.5
               for row in evaluation["levels"])
    assert _state(result.weights).keys() == _state(result.checkpoint)["model"].keys()
    if model != "dvc":
        return
    # DVC's residual fine-tune: only the residual coder and the compensation network learn,
    # on the installed weights.
    install_codec(result, registry)
    tuned = run_codec_training(
        replace(config, stages=("residual",), steps=(2,), init=True, lr=0.01,
                out_dir=str(tmp_path / "residual")), progress=False)
    meta = json.loads(Path(tuned.metadata).read_text())
    assert meta["stage_schedule"] == [{"stage": "residual", "steps": 2}]
    before, after = _state(result.weights), _state(tuned.weights)
    moved = {name for name in before if not name.endswith("quantiles")
             and not torch.equal(before[name], after[name])}
    assert moved and all(name.startswith(("r_a.", "r_s.", "residual_prior.", "mc."))
                         for name in moved)
    assert any(name.startswith("mc.") for name in moved)
