"""Train the learned video codecs on CPU (``gopflow train codec``).

Models (registry names ``codec-intra``, ``codec-dvc``, ``codec-fvc``):

- ``intra``: scale-hyperprior image codec (Balle et al. 2018) for key frames.
- ``dvc``: DVC (Lu et al., CVPR 2019), staged: motion warm-up, then joint rate-distortion.
- ``fvc``: FVC (Hu et al., CVPR 2021), feature-space compensation and residual coding.

Each is one variable-rate model (:class:`~gopflow.codecs.learned.api.TrainableCodec`): every
training sample draws a quality level ``l`` and is trained with loss
``R + lambda_l * 255^2 * MSE`` (``lmbdas`` gives ``lambda_1..lambda_L``). P-frame models code
``frames_per_sample`` (or ``frames``) P frames in a chain: the first against the previous
frame *as decoded by the shipped intra model* at the same level (``codec-intra`` from the
registry, eval mode, rounding), each later one against the previous reconstruction, with the
loss back-propagated through the chain (the drift a GOP shows); so ``intra`` is trained and
installed first. CompressAI's auxiliary loss (entropy-bottleneck quantiles) has its own Adam
optimiser. Stages run in ``model.stages`` order (or those ``stages`` names, which may include
a model's ``fine_tune_stages``), each with its own warm-up + cosine learning-rate schedule.

Data: RGB crops of consecutive frames decoded with PyAV from the clips directly in each
``data_dirs`` directory, minus the evaluation clips (:data:`EVAL_CLIPS`); a bounded pool of
decoded frame runs (:class:`gopflow.training.data.FramePool`, one slot re-decoded every
``refresh_every`` steps), random crop positions, flips and time reversal. The last
:data:`HOLDOUT_FRACTION` of every clip is never trained on: the final evaluation codes crops
of it with the real entropy coder (``compress()`` bytes, never likelihoods). Every random
choice is a function of ``(seed, step)``, so ``resume=True`` continues bit-exactly.

Outputs in ``out_dir``: ``codec-<model>.pt`` (parameters in float16, the model rounded to them
before evaluation; the CDF tables from ``update()`` are shipped in the file, so a decoder
never rebuilds them), ``codec-<model>.json`` (metadata), ``codec-<model>-loss.png`` and
``checkpoint-codec-<model>.pt`` (every ``checkpoint_minutes`` and at the end; Ctrl-C saves one
too). :func:`install_codec` copies them into the weights registry
(:func:`gopflow.zoo.registry.install_model`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from gopflow.codecs.learned.api import CODEC_NAMES
from gopflow.errors import InputError, UsageError
from gopflow.fileio import atomic_write_json
from gopflow.training.common import (
    TrainResult,
    plot_losses,
    provenance,
    psnr_from_mse,
    save_torch,
    warmup_cosine,
)
from gopflow.training.data import Clip, FramePool, data_hash, index_clip, list_clips, read_rgb

DEFAULT_LAMBDAS: tuple[float, ...] = (0.00025, 0.0005, 0.001, 0.0018, 0.0035, 0.0067, 0.013)
EVAL_CLIPS = frozenset({
    "white_flower_1280x720.264", "red_trees_drive_1920x1080.264",
    "flower_960x540.mp4", "car_traffic_768x432.mp4",
})
"""The codec benchmark's clips: never trained on."""
HOLDOUT_FRACTION = 0.1
CHECKPOINT_FORMAT = 1
CALIBRATION_STEPS = 3


@dataclass(frozen=True)
class CodecTrainConfig:
    """Everything that defines a codec training run (recorded in checkpoint and metadata)."""

    model: str
    data_dirs: tuple[str, ...]
    lmbdas: tuple[float, ...] = DEFAULT_LAMBDAS
    steps: tuple[int, ...] = (1000,)
    """Steps per stage: one value for every stage, or one per stage."""
    minutes: float | None = None
    """Instead of ``steps``: a wall-clock budget, turned into steps per stage by timing."""
    crop: int = 128
    batch: int = 8
    lr: float = 1e-3
    aux_lr: float = 1e-3
    seed: int = 0
    pool: int = 16
    refresh_every: int = 4
    threads: int = 2
    out_dir: str = "train-out"
    registry: str | None = None
    checkpoint_minutes: float = 3.0
    checkpoint_every: int = 0
    """Also checkpoint every this many steps (0: by time only)."""
    init: bool = False
    """Start from the installed ``codec-<model>`` weights (fine-tune) instead of at random."""
    stride: int = 1
    """P models: the frames of a sample are ``s`` source frames apart, ``s`` drawn from
    ``1..stride`` per pool slot, so training sees the larger motion of faster content."""
    frames: int | None = None
    """P frames unrolled per sample (P models; default the model's ``frames_per_sample``).
    More frames train on the drift of a GOP: each P frame predicts from the previous
    *reconstruction*, and the loss back-propagates through the whole chain."""
    stages: tuple[str, ...] | None = None
    """The stages to run, in this order (default: the model's ``stages``); a model's
    ``fine_tune_stages`` (DVC's ``residual``) run only when named here, with ``init``."""
    eval_crops: int = 12
    eval_crop: int = 256
    eval_gop: int = 4

    @property
    def name(self) -> str:
        return f"codec-{self.model}"

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with its checkpoint."""
        keep = ("model", "lmbdas", "crop", "batch", "lr", "aux_lr", "seed", "pool",
                "refresh_every", "init", "frames", "stride", "stages")
        return {key: list(v) if isinstance(v := getattr(self, key), tuple) else v
                for key in keep}


def validate(config: CodecTrainConfig) -> None:
    """Raise :class:`UsageError` (one line) for settings that cannot work."""
    if config.model not in CODEC_NAMES:
        known = ", ".join(CODEC_NAMES)
        raise UsageError(f"unknown codec model {config.model!r}; choose from {known}")
    if not config.data_dirs:
        raise UsageError("give at least one --data directory")
    if len(config.lmbdas) < 2 or any(not 0 < x < 1 for x in config.lmbdas):
        raise UsageError("--lmbda needs at least two values in (0, 1), e.g. 0.0018,0.0035")
    if list(config.lmbdas) != sorted(set(config.lmbdas)):
        raise UsageError("--lmbda values must increase (level 1 = lowest rate)")
    if config.minutes is None and (not config.steps or min(config.steps) < 1):
        raise UsageError("--steps must be positive")
    if config.minutes is not None and config.minutes <= 0:
        raise UsageError("--minutes must be positive")
    if config.crop < 64 or config.crop % 64:
        raise UsageError(f"--crop must be a multiple of 64 (at least 64), got {config.crop}")
    if config.frames is not None and (config.model == "intra" or config.frames < 1):
        raise UsageError("--frames applies to dvc and fvc and must be at least 1")
    if config.stride < 1 or (config.model == "intra" and config.stride != 1):
        raise UsageError("--stride applies to dvc and fvc and must be at least 1")
    if config.stages is not None:
        cls = model_class(config.model)
        known = (*cls.stages, *cls.fine_tune_stages)
        unknown = [stage for stage in config.stages if stage not in known]
        if unknown or not config.stages or len(set(config.stages)) != len(config.stages):
            raise UsageError(f"--stages for {config.model} takes distinct stages from "
                             f"{', '.join(known)}; got {','.join(config.stages) or 'none'}")
        if not config.init and any(s in cls.fine_tune_stages for s in config.stages):
            raise UsageError(f"the {config.model} stages {', '.join(cls.fine_tune_stages)} "
                             "fine-tune installed weights: add --init")
    if config.batch < 1 or config.pool < 1 or config.threads < 1 or config.refresh_every < 1:
        raise UsageError("--batch, --threads, pool size and refresh interval must be positive")


# ----------------------------------------------------------------------------- models
def model_class(model: str) -> Any:
    """The ``nn.Module`` class of ``model`` (imported on demand)."""
    if model == "intra":
        from gopflow.codecs.learned.intra import IntraCodec

        return IntraCodec
    if model == "dvc":
        from gopflow.codecs.dvc.model import DvcCodec

        return DvcCodec
    from gopflow.codecs.fvc.model import FvcCodec

    return FvcCodec


def load_intra_reference(registry: str | None, levels: int) -> Any:
    """The installed intra codec (``codec-intra``, hash-checked, eval mode, frozen): it
    decodes the reference frames of P-frame models."""
    from gopflow.codecs.learned.engine import load_codec

    intra = load_codec("intra", registry).intra
    if intra.levels != levels:
        raise UsageError(
            f"the installed codec-intra has {intra.levels} levels, --lmbda gives {levels}; "
            "train and install intra with the same number of levels first")
    return intra


def intra_reconstruction(intra: Any, x: Any, level: Any) -> Any:
    """The decoder's picture after intra-coding ``x`` (``N x 3 x H x W``) at ``level``:
    the eval-mode pass rounds the latents as the entropy coder does; clamped to 8 bits."""
    import torch

    with torch.no_grad():
        x_hat, _ = intra(x, level)
        return x_hat.clamp(0.0, 1.0).mul(255.0).round().div(255.0)


# ----------------------------------------------------------------------------- data
def training_clips(
    data_dirs: Sequence[str], crop: int, span: int, say: Callable[[str], None]
) -> tuple[list[Clip], list[Path], list[str]]:
    """Usable clips, every listed file (for the data hash) and the names skipped."""
    files: list[Path] = []
    for directory in data_dirs:
        files.extend(list_clips(directory))
    clips, skipped = [], []
    for path in files:
        if path.name in EVAL_CLIPS:
            skipped.append(f"{path.name} (evaluation clip)")
            continue
        clip = index_clip(path)
        holdout = max(span, math.ceil(clip.frames * HOLDOUT_FRACTION))
        if min(clip.width, clip.height) < crop or clip.frames - holdout < span:
            skipped.append(f"{path.name} (smaller than {crop}px or too short)")
            continue
        clips.append(clip)
    if skipped:
        say(f"not training on: {', '.join(skipped)}")
    if not clips:
        raise InputError(
            f"no usable training clip in {', '.join(data_dirs)} (need at least {crop}x{crop} "
            f"and {span} frames plus the held-out tail; evaluation clips are excluded)")
    return clips, files, skipped


def _train_part(clip: Clip, span: int) -> Clip:
    """``clip`` limited to its training frames (the tail is held out)."""
    holdout = max(span, math.ceil(clip.frames * HOLDOUT_FRACTION))
    return replace(clip, frames=clip.frames - holdout)


def heldout_crops(
    clips: Sequence[Clip], span: int, count: int, crop: int, seed: int
) -> tuple[list[Any], list[str]]:
    """``count`` crops (``span x 3 x crop x crop`` floats) from the held-out tails of the
    clips at least ``crop`` pixels high and wide (fixed seed), and their clips' names."""
    import torch

    rng = np.random.default_rng([seed, 9])
    large = [c for c in clips if min(c.width, c.height) >= crop] or list(clips)
    out, names = [], []
    for _ in range(count):
        clip = large[int(rng.integers(len(large)))]
        names.append(clip.name)
        first = _train_part(clip, span).frames
        index = first + int(rng.integers(clip.frames - first - span + 1))
        frames = read_rgb(clip, index, span)
        height, width = frames[0].shape[:2]
        size = min(crop, height - height % 64, width - width % 64)
        y = int(rng.integers(height - size + 1))
        x = int(rng.integers(width - size + 1))
        stack = np.stack([f[y : y + size, x : x + size] for f in frames])
        out.append(stack)
    size = min(s.shape[1] for s in out)
    return [torch.from_numpy(s[:, :size, :size].copy()).permute(0, 3, 1, 2).float() / 255
            for s in out], names


def _to_frames(batch: np.ndarray) -> Any:
    """``N x T x H x W x 3`` uint8 -> ``N x T x 3 x H x W`` float in [0, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 1, 4, 2, 3).float() / 255


# ----------------------------------------------------------------------------- schedule
def stage_schedule(config: CodecTrainConfig, stages: Sequence[str]) -> list[tuple[str, int]]:
    """``[(stage, steps), ...]`` from ``steps`` (``minutes`` is resolved by timing)."""
    steps = config.steps
    if len(steps) == 1:
        steps = steps * len(stages)
    if len(steps) != len(stages):
        raise UsageError(
            f"--steps gives {len(steps)} values, {config.model} has {len(stages)} stages "
            f"({', '.join(stages)}): give one value or one per stage")
    return list(zip(stages, steps, strict=True))


def minutes_schedule(
    minutes: float, stages: Sequence[str], seconds_per_step: float
) -> list[tuple[str, int]]:
    """Split a time budget: earlier (warm-up) stages get 20% each, the last the rest."""
    total = max(len(stages), int(minutes * 60 / max(seconds_per_step, 1e-3)))
    warm = [max(1, int(0.2 * total)) for _ in stages[:-1]]
    return [*zip(stages[:-1], warm, strict=True), (stages[-1], max(1, total - sum(warm)))]


def _stage_at(schedule: Sequence[tuple[str, int]], step: int) -> tuple[str, int, int]:
    """``(stage, first step of the stage, its length)`` for the global ``step``."""
    start = 0
    for stage, length in schedule:
        if step < start + length:
            return stage, start, length
        start += length
    raise IndexError(step)


# ----------------------------------------------------------------------------- training
@dataclass(frozen=True)
class CodecTrainResult(TrainResult):
    """Where a codec run went, and its real-bytes evaluation per level."""

    evaluation: dict[str, Any]


def frames_per_sample(config: CodecTrainConfig) -> int:
    """Frames coded per training sample: ``frames`` or the model's default."""
    return config.frames or model_class(config.model).frames_per_sample


def sample_span(config: CodecTrainConfig) -> int:
    """Consecutive source frames per sample: P models add the reference frame."""
    return frames_per_sample(config) + (0 if config.model == "intra" else 1)


def _split_parameters(model: Any) -> tuple[list[Any], list[Any]]:
    """(main, auxiliary) parameters: CompressAI's ``quantiles`` train on the aux loss only."""
    main = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    aux = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    return main, aux


class _Trainer:
    """One run's state: model, optimisers, data pool, step function."""

    def __init__(self, config: CodecTrainConfig, clips: Sequence[Clip]) -> None:
        import torch

        self.config = config
        torch.manual_seed(config.seed)
        self.model = model_class(config.model)(levels=len(config.lmbdas))
        if self.model.levels != len(config.lmbdas):
            raise UsageError(f"{config.model} has {self.model.levels} levels, "
                             f"--lmbda gives {len(config.lmbdas)}")
        self.inter = config.model != "intra"
        self.span = sample_span(config)
        main, aux = _split_parameters(self.model)
        self.main_parameters = main
        self.optimiser = torch.optim.Adam(main, lr=config.lr)
        self.aux_optimiser = torch.optim.Adam(aux, lr=config.aux_lr)
        self.intra = (
            load_intra_reference(config.registry, len(config.lmbdas)) if self.inter else None)
        self.pool = FramePool(
            [_train_part(c, self.span) for c in clips], config.seed, config.pool, self.span,
            reader=read_rgb, refresh_every=config.refresh_every, stride=config.stride)
        self.lmbdas = torch.tensor(config.lmbdas, dtype=torch.float32)
        self.updating = False
        self.init_from: dict[str, Any] | None = None
        if config.init:
            self.load_installed()

    def load_installed(self) -> None:
        """Copy the installed ``codec-<model>`` weights (hash-checked) into the model, so a
        run continues an earlier one's training (the optimiser starts fresh)."""
        from gopflow.codecs.learned.engine import build_codec_model
        from gopflow.zoo.registry import load_model, model_metadata, read_registry

        installed = load_model(self.config.name, self.config.registry, builder=build_codec_model)
        # Steps behind the installed weights (their own run's and that run's own start).
        before = model_metadata(self.config.name, self.config.registry)
        earlier = int(before.get("steps", 0)) + int(
            (before.get("init") or {}).get("earlier_steps", 0))
        self.init_from = {"model": self.config.name,
                          "sha256": read_registry(self.config.registry)[self.config.name].sha256,
                          "earlier_steps": earlier}
        state = installed.float().state_dict()
        lambdas = tuple(float(value) for value in before.get("lambdas", ()))
        if lambdas != tuple(self.config.lmbdas):
            # Other rate points: start every level from gains resampled in log-lambda.
            if len(lambdas) != installed.levels or len(lambdas) < 2:
                raise UsageError(f"the installed {self.config.name} records no lambdas per "
                                 "level, so --init cannot move it to other --lmbda values")
            from gopflow.codecs.learned.hyperprior import resample_levels

            state = resample_levels(state, lambdas, self.config.lmbdas)
            self.init_from["lambdas"] = list(lambdas)
        self.model.load_state_dict(state)

    def step(self, step: int, stage: str, lr: float) -> tuple[float, dict[str, float]]:
        """One optimiser step (and one aux step); every draw depends on (seed, step) only."""
        import torch

        config = self.config
        torch.manual_seed(config.seed * 1_000_003 + step)
        raw = self.pool.at(step).batch(step, config.batch, config.crop)
        x = _to_frames(raw)
        rng = np.random.default_rng([config.seed, 4, step])
        level = torch.from_numpy(rng.integers(len(config.lmbdas), size=config.batch))
        lmbda = self.lmbdas[level]
        if self.inter:
            reference = intra_reconstruction(self.intra, x[:, 0], level)
            frames = x[:, 1:]
        else:
            reference, frames = None, x
        for group in self.optimiser.param_groups:
            group["lr"] = lr
        loss, metrics = self.model.training_loss(reference, frames, level, lmbda, stage)
        frozen = [p for name in self.model.frozen_modules(stage)
                  for p in getattr(self.model, name).parameters()]
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        for parameter in frozen:  # Adam leaves a parameter without a gradient as it is
            parameter.grad = None
        torch.nn.utils.clip_grad_norm_(self.main_parameters, 1.0)
        self.updating = True  # from here until the step is recorded, the state is mixed
        self.optimiser.step()
        aux = self.model.aux_loss()
        self.aux_optimiser.zero_grad(set_to_none=True)
        aux.backward()
        for parameter in frozen:
            parameter.grad = None
        self.aux_optimiser.step()
        return float(loss.detach()), {**metrics, "aux": float(aux.detach())}

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimiser": self.optimiser.state_dict(),
                "aux_optimiser": self.aux_optimiser.state_dict()}

    def load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.aux_optimiser.load_state_dict(state["aux_optimiser"])


def _calibrate(config: CodecTrainConfig, clips: Sequence[Clip], stage: str) -> float:
    """Seconds per step of ``stage`` on a throw-away model (the real run stays seeded),
    averaged over two pool refresh intervals so frame decoding is counted."""
    trainer = _Trainer(config, clips)
    trainer.step(0, stage, 0.0)  # first step: the whole pool is decoded
    count = max(CALIBRATION_STEPS, 2 * config.refresh_every)
    began = time.monotonic()
    for step in range(1, count + 1):
        trainer.step(step, stage, 0.0)
    return (time.monotonic() - began) / count


def run_codec_training(
    config: CodecTrainConfig,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    stop_after: int | None = None,
) -> CodecTrainResult:
    """Train as ``config`` says (see the module docstring); ``on_step(step, loss)`` after
    every step (an exception there, like Ctrl-C, saves a checkpoint first). ``stop_after``:
    finish (evaluate, write the weights) after that many steps of the schedule, keeping the
    checkpoint resumable for the rest."""
    import torch
    from tqdm import tqdm

    validate(config)
    say = log or (lambda message: None)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        cls = model_class(config.model)
        stages = tuple(cls.stages) if config.stages is None else config.stages
        planned = stage_schedule(config, stages) if config.minutes is None else None
        span = sample_span(config)
        clips, files, skipped = training_clips(config.data_dirs, config.crop, span, say)
        digest = data_hash(files)
        trainer = _Trainer(config, clips)
        checkpoint = out / f"checkpoint-{config.name}.pt"
        start, losses, wall = 0, [], 0.0
        history: list[dict[str, float]] = []
        schedule: list[tuple[str, int]] | None = None
        if resume and checkpoint.exists():
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            if state.get("format") != CHECKPOINT_FORMAT:
                raise InputError(f"{checkpoint} is not a gopflow codec training checkpoint")
            if state["identity"] != config.identity() or state["data_hash"] != digest:
                raise UsageError(
                    f"{checkpoint} belongs to a different run (settings or data differ); "
                    "start without --resume or use another --out")
            trainer.load(state)
            start, losses, wall = int(state["step"]), list(state["losses"]), state["wall"]
            history = [dict(item) for item in state["history"]]
            schedule = [(str(s), int(n)) for s, n in state["schedule"]]
            say(f"resuming {config.name} at step {start} of {sum(n for _, n in schedule)}")
        elif resume:
            say(f"no checkpoint {checkpoint}; starting {config.name} from step 0")
        if schedule is None:
            if config.minutes is not None:
                per_step = _calibrate(config, clips, stages[-1])
                schedule = minutes_schedule(config.minutes, stages, per_step)
                say(f"{per_step:.2f}s per step: {schedule} fits {config.minutes:g} minutes")
            else:
                schedule = planned
        total = sum(n for _, n in schedule)

        def save_checkpoint(step: int, elapsed: float) -> None:
            save_torch(checkpoint, {
                "format": CHECKPOINT_FORMAT, "identity": config.identity(),
                "data_hash": digest, "step": step, "losses": losses, "history": history,
                "wall": elapsed, "schedule": [list(item) for item in schedule],
                **trainer.state(),
            })

        trainer.model.train()
        began = time.monotonic()
        last_save = began
        end = total if stop_after is None else max(start, min(total, stop_after))
        bar = tqdm(total=end, initial=start, desc=config.name, unit="step",
                   disable=not progress, dynamic_ncols=True)
        step = start
        with bar:
            try:
                for step in range(start, end):
                    stage, first, length = _stage_at(schedule, step)
                    lr = warmup_cosine(config.lr, step - first, length)
                    loss, metrics = trainer.step(step, stage, lr)
                    losses.append(loss)
                    history.append({k: round(float(v), 5) for k, v in metrics.items()})
                    trainer.updating = False
                    bar.update(1)
                    bar.set_postfix(stage=stage, loss=f"{loss:.4f}")
                    if not math.isfinite(loss):
                        raise InputError(f"{config.name}: the loss is {loss} at step {step}")
                    now = time.monotonic()
                    if (now - last_save >= config.checkpoint_minutes * 60 or (
                            config.checkpoint_every and (step + 1) % config.checkpoint_every == 0)):
                        save_checkpoint(step + 1, wall + now - began)
                        last_save = now
                    if on_step is not None:
                        on_step(step + 1, loss)
            except (KeyboardInterrupt, Exception):
                # Interrupted between steps or before the update of the current one: the
                # completed steps are consistent and kept.
                done = len(losses)
                if not trainer.updating and done > start and math.isfinite(losses[-1]):
                    save_checkpoint(done, wall + time.monotonic() - began)
                    say(f"checkpoint saved at step {done}; continue with --resume")
                raise
        elapsed = wall + time.monotonic() - began
        save_checkpoint(end, elapsed)
        return _finish(config, trainer, clips, skipped, digest, schedule, losses, history,
                       elapsed, checkpoint, say)
    finally:
        torch.set_num_threads(previous_threads)


def _finish(
    config: CodecTrainConfig, trainer: _Trainer, clips: Sequence[Clip], skipped: list[str],
    digest: str, schedule: list[tuple[str, int]], losses: list[float],
    history: list[dict[str, float]], elapsed: float, checkpoint: Path,
    say: Callable[[str], None],
) -> CodecTrainResult:
    """Entropy tables, real-bytes evaluation, weights, plot and metadata."""
    model = trainer.model
    model.eval()
    state = shipped_state(model)
    weights_path = Path(config.out_dir) / f"{config.name}.pt"
    save_torch(weights_path, state)
    evaluation = evaluate_codec(config, trainer, clips)
    plot_path = Path(config.out_dir) / f"{config.name}-loss.png"
    stages = ", ".join(f"{s} {n}" for s, n in schedule)
    if len(losses) < sum(n for _, n in schedule):
        stages += f"; stopped after {len(losses)}"
    plot_losses(losses, plot_path, f"gopflow {config.name} ({stages} steps)",
                "R + lambda 255^2 MSE (bits per pixel units)")
    tail = losses[-min(50, len(losses)):]
    metadata = {
        "name": config.name,
        "model": config.model,
        "arch": model.arch(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "levels": len(config.lmbdas),
        "lambdas": list(config.lmbdas),
        "loss": "R + lambda * 255^2 * MSE (RGB in [0, 1]); aux loss with its own Adam",
        "stage_schedule": [{"stage": s, "steps": n} for s, n in schedule],
        "steps": len(losses),
        "stopped_early": len(losses) < sum(n for _, n in schedule),
        "final_loss": round(float(np.mean(tail)), 6),
        "final_loss_window": len(tail),
        "final_metrics": {k: round(float(np.mean([h[k] for h in history[-len(tail):]
                                                  if k in h])), 5)
                          for k in (history[-1] if history else {})},
        "evaluation_real_bytes": evaluation,
        "entropy_tables": "shipped: the state dict holds the CDF buffers after update()",
        "parameters_dtype": "float16 (the evaluated model was rounded to them)",
        "seed": config.seed, "crop": config.crop, "batch": config.batch, "lr": config.lr,
        "aux_lr": config.aux_lr, "pool": config.pool, "refresh_every": config.refresh_every,
        "threads": config.threads,
        "reference": "codec-intra decoded previous frame" if trainer.inter else None,
        "frames_per_sample": frames_per_sample(config),
        "stride": config.stride,
        "init": trainer.init_from,
        "data_dirs": [os.path.abspath(d) for d in config.data_dirs],
        "data_hash": digest,
        "heldout": f"last {HOLDOUT_FRACTION:.0%} of every clip's frames",
        **provenance(clips, skipped, elapsed, weights_path),
    }
    metadata_path = Path(config.out_dir) / f"{config.name}.json"
    atomic_write_json(metadata_path, metadata)
    say(f"{config.name}: {metadata['steps']} steps in {elapsed:.0f}s, final loss "
        f"{metadata['final_loss']:.4f}; held-out real bytes: " + "; ".join(
            f"L{row['level']} {row['bpp']:.3f} bpp {row['psnr']:.2f} dB"
            for row in evaluation["levels"]))
    return CodecTrainResult(
        config.name, str(weights_path), str(metadata_path), str(plot_path), str(checkpoint),
        metadata["steps"], metadata["final_loss"], elapsed, evaluation)


def shipped_state(model: Any) -> dict[str, Any]:
    """The state dict to ship: parameters rounded to float16 *in the model* (so the
    evaluation measures exactly what is shipped; loading copies them into float32), then
    ``update()``'s entropy tables and every buffer as computed (CDFs, scale table)."""
    import torch

    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.half().float())
    model.update(force=True)
    names = {name for name, _ in model.named_parameters()}
    return {key: value.detach().half() if key in names else value.detach().clone()
            for key, value in model.state_dict().items()}


def evaluate_codec(
    config: CodecTrainConfig, trainer: _Trainer, clips: Sequence[Clip]
) -> dict[str, Any]:
    """bpp (from the real coded bytes) and RGB PSNR per level on held-out crops: intra codes
    single frames; P models code GOPs of ``eval_gop`` frames (I then P) and report the
    P frames (and all frames) separately."""
    import torch

    span = 1 if not trainer.inter else config.eval_gop
    crops, names = heldout_crops(clips, span, config.eval_crops, config.eval_crop, config.seed)
    rows = []
    with torch.no_grad():
        for level in range(len(config.lmbdas)):
            bits = {"all": 0, "inter": 0}
            mse: dict[str, list[float]] = {"all": [], "inter": []}
            pixels = {"all": 0, "inter": 0}
            for stack in crops:
                frames = [(f.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
                          for f in stack]
                coded = _code_gop(trainer, frames, level)
                for index, (frame, (size, recon)) in enumerate(
                        zip(frames, coded, strict=True)):
                    err = float(np.mean((frame.astype(np.float64) - recon) ** 2))
                    for key in ("all", "inter") if index else ("all",):
                        bits[key] += 8 * size
                        pixels[key] += frame.shape[0] * frame.shape[1]
                        mse[key].append(err)
            row: dict[str, Any] = {"level": level + 1, "lambda": config.lmbdas[level]}
            for key in ("all", "inter") if trainer.inter else ("all",):
                prefix = "" if key == "all" else "inter_"
                row[f"{prefix}bpp"] = round(bits[key] / pixels[key], 4)
                row[f"{prefix}psnr"] = round(psnr_from_mse(float(np.mean(mse[key]))), 3)
                row[f"{prefix}psnr_frame_mean"] = round(
                    float(np.mean([psnr_from_mse(e) for e in mse[key]])), 3)
            rows.append(row)
    size = tuple(crops[0].shape[-2:])
    return {"crops": len(crops), "crop_size": list(size), "frames_per_crop": span,
            "crop_clips": names, "bits": "8 * bytes of the real entropy-coded frames",
            "psnr": "RGB, of the mean MSE over frames; psnr_frame_mean: mean of per-frame PSNR",
            "levels": rows}


def _code_gop(
    trainer: _Trainer, frames: Sequence[np.ndarray], level: int
) -> list[tuple[int, np.ndarray]]:
    """``(payload bytes, decoded uint8 frame)`` per frame of a GOP coded for real by the
    engine that ships the model (``level`` 0-based)."""
    from gopflow.codecs.learned.engine import GopCodec, model_digest

    model_id = f"{trainer.config.model}:{model_digest(trainer.model)}"
    if trainer.inter:
        codec = GopCodec(trainer.config.model, trainer.intra, trainer.model, model_id)
    else:
        codec = GopCodec("intra", trainer.model, None, model_id)
    coded = codec.encode_gop(list(frames), level + 1)
    return [(len(f.payload), r) for f, r in zip(coded.frames, coded.recon, strict=True)]


def install_codec(result: CodecTrainResult, registry: str | None = None) -> None:
    """Register the weights (with metadata and loss plot) as ``codec-<model>``."""
    from gopflow.zoo.registry import install_model

    arch = json.loads(Path(result.metadata).read_text())["arch"]
    install_model(result.name, result.weights, arch, (result.metadata,), registry)
