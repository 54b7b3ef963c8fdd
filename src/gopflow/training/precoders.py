"""Train the learned precoders on CPU (``gopflow train precoder``).

Kinds (model names in the weights registry):

- ``dvp`` (``dvp-3_4`` ...): Deep Video Precoding downscaler (arXiv 1908.00812). Loss on
  ``bicubic_up(proxy(down(x)))`` vs ``x``: what a standard player shows after decoding.
- ``vistra-up`` (``vistra-up-1_2`` ...): ViSTRA decoder-side up-sampler (Afonso, Zhang, Bull,
  TCSVT 2019). Loss on ``up(proxy(lanczos_down(x)))`` vs ``x`` (Lanczos: the encoder side
  of :mod:`gopflow.precoders.resample`).
- ``vistra-interp``: ViSTRA frame interpolator. Loss on ``interp(proxy(x[t-1]),
  proxy(x[t+1]))`` vs ``x[t]``.

Losses are ``L1 + msssim_weight * (1 - MS-SSIM)`` (pytorch_msssim) on luma in [0, 1]
(plus, for ``dvp``, an optional rate term from :meth:`CodecProxy.rate`). The codec proxy
(:class:`gopflow.precoders.proxy.CodecProxy`, a differentiable H.264-like DCT quantiser)
draws a QP per crop from ``qp_range``; ``proxy="x264"`` replaces it, for ``vistra-up``, by
real x264 codings (:class:`gopflow.training.x264.CodedPairPool`).

Data: every video file in ``data_dir`` (never its subdirectories), sampled through a
bounded pool of decoded luma frames (:class:`gopflow.training.data.FramePool`: one slot
re-decoded per step from a random clip at a random frame position), random crops and flips
per batch. Every random choice is a function of ``(seed, step)`` (numpy
``default_rng([seed, ...])``, ``torch.manual_seed`` per step), so a resumed run continues
exactly as an uninterrupted one would and two runs with the same seed, data and threads
give the same weights.

Outputs in ``out_dir``: ``<name>.pt`` (float32 state dict), ``<name>.json`` (metadata:
kind, scale, architecture, steps, final loss, evaluation on training crops vs the plain
resampler, seed, data hash = sha256 over the sorted clip names and sizes, torch version,
wall time), ``<name>-loss.png`` and ``checkpoint-<name>.pt`` (every ``checkpoint_every``
steps, atomically; ``resume=True`` continues from it). :func:`install` copies the weights
into the weights registry (:mod:`gopflow.zoo.registry`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gopflow.errors import InputError, UsageError
from gopflow.fileio import atomic_write_json
from gopflow.precoders.resample import scaled_size
from gopflow.training.common import (
    EVAL_QPS,
    TrainResult,
    plot_losses,
    provenance,
    save_torch,
    warmup_cosine,
)
from gopflow.training.data import (
    Clip,
    FramePool,
    data_hash,
    list_clips,
    to_tensor,
    usable_clips,
)
from gopflow.training.x264 import X264_CRF_RANGE, CodedPairPool

Kind = Literal["dvp", "vistra-up", "vistra-interp"]
KINDS: tuple[str, ...] = ("dvp", "vistra-up", "vistra-interp")
CHECKPOINT_FORMAT = 1


# ----------------------------------------------------------------------------- config
@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (recorded in the checkpoint and metadata)."""

    kind: str
    data_dir: str
    scale: str = "1/2"
    steps: int = 2000
    out_dir: str = "train-out"
    seed: int = 0
    crop: int = 128
    batch: int = 16
    lr: float = 2e-3
    qp_min: float | None = None
    qp_max: float | None = None
    proxy: str | None = None
    msssim_weight: float = 1.0
    rate_weight: float = 0.0
    pool: int = 24
    checkpoint_every: int = 100
    threads: int = 2
    arch: dict[str, Any] = field(default_factory=dict)
    init: str | None = None
    """Registry name of a model to start from (fine-tuning) instead of the plain init."""

    @property
    def scale_fraction(self) -> Fraction:
        return Fraction(self.scale)

    @property
    def name(self) -> str:
        if self.kind == "vistra-interp":
            return "vistra-interp"
        s = self.scale_fraction
        return f"{self.kind}-{s.numerator}_{s.denominator}"

    @property
    def effective_crop(self) -> int:
        """``crop`` rounded up so that the scaled crop is exact and even."""
        if self.kind == "vistra-interp":
            return self.crop + (-self.crop) % 8
        multiple = 2 * self.scale_fraction.denominator
        return self.crop + (-self.crop) % multiple

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with the checkpoint."""
        keep = ("kind", "scale", "seed", "crop", "batch", "pool", "arch", "init")
        return {key: getattr(self, key) for key in keep}

    def resolved(self) -> TrainConfig:
        """Kind-dependent defaults filled in.

        ``dvp`` and ``vistra-interp`` train through the proxy with additive noise at QP
        20-40. ``vistra-up`` sees really quantised inputs (rounding with H.264's 1/3 intra
        dead zone) at QP 10-38: up-samplers trained on white noise at QP 20-40 learn to
        denoise, which blurs clean (low-QP) decoded pictures (held-out x264 PSNR up to
        1 dB below bicubic at CRF 23). The interpolator keeps the noise proxy: trained on
        rounding it loses its motion gains. With ``proxy="x264"`` the range is x264's CRF
        (:data:`~gopflow.training.x264.X264_CRF_RANGE`).
        """
        learned_input = self.kind != "vistra-up"
        if self.proxy == "x264":  # the range is x264's CRF, not a proxy QP
            low, high = X264_CRF_RANGE
        else:
            low, high = (20.0, 40.0) if learned_input else (10.0, 38.0)
        return replace(
            self,
            qp_min=self.qp_min if self.qp_min is not None else low,
            qp_max=self.qp_max if self.qp_max is not None else high,
            proxy=self.proxy or ("noise" if learned_input else "round"),
        )


def validate(config: TrainConfig) -> None:
    if config.kind not in KINDS:
        raise UsageError(f"unknown kind {config.kind!r}; choose from {', '.join(KINDS)}")
    if config.kind != "vistra-interp":
        try:
            scale = Fraction(config.scale)
        except (ValueError, ZeroDivisionError):
            raise UsageError(f"not a scale: {config.scale!r} (e.g. 3/4)") from None
        if not 0 < scale < 1:
            raise UsageError(f"--scale must be in (0, 1), got {scale}")
    if config.steps < 1 or config.batch < 1 or config.pool < 1 or config.checkpoint_every < 1:
        raise UsageError("--steps, --batch, pool and checkpoint interval must be positive")
    if config.crop < 32:
        raise UsageError(f"--crop must be at least 32 pixels, got {config.crop}")
    config = config.resolved()
    assert config.qp_min is not None and config.qp_max is not None
    if not 0 <= config.qp_min <= config.qp_max <= 51:
        raise UsageError("the QP range must satisfy 0 <= min <= max <= 51")
    if "base" in config.arch and config.kind != "dvp":
        raise UsageError("--base is for --kind dvp only")
    if config.proxy not in ("noise", "round", "x264"):
        raise UsageError(f"--proxy must be noise, round or x264, got {config.proxy!r}")
    if config.proxy == "x264" and config.kind != "vistra-up":
        raise UsageError("--proxy x264 (real x264-coded inputs) is for --kind vistra-up only")


# ----------------------------------------------------------------------------- models/losses
def build_model(config: TrainConfig) -> Any:
    from gopflow.precoders.dvp import DvpDownscaler
    from gopflow.precoders.vistra import FrameInterpolator, Upsampler

    if config.init:  # fine-tune a registered model (same architecture)
        from gopflow.zoo.registry import load_model

        model = load_model(config.init)
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model.train()

    if config.kind == "dvp":
        return DvpDownscaler(config.scale_fraction, **config.arch)
    if config.kind == "vistra-up":
        return Upsampler(config.scale_fraction, **config.arch)
    return FrameInterpolator(**config.arch)


def _msssim_window(side: int) -> int:
    """The largest odd window (<= 11) for 5-scale MS-SSIM on ``side``-pixel crops."""
    window = 11
    while window > 3 and (window - 1) * 16 >= side:
        window -= 2
    return window


class Objective:
    """Forward pass + loss for one kind; ``plain=True`` evaluates the plain resampler."""

    def __init__(self, config: TrainConfig) -> None:
        from gopflow.precoders.proxy import CodecProxy

        self.config = config
        assert config.qp_min is not None and config.qp_max is not None
        noise = config.proxy != "round"
        self.proxy = CodecProxy(
            qp_range=(config.qp_min, config.qp_max), train_noise=noise,
            rounding=0.5 if noise else 1.0 / 3.0,
        )
        self.window = _msssim_window(config.effective_crop)
        self.ms_ok = (self.window - 1) * 16 < config.effective_crop

    def reconstruct(
        self, model: Any, crops: Any, qp: Any, plain: bool = False, coded: Any = None
    ) -> tuple[Any, Any]:
        """``(reconstruction, coded_picture)``: what the viewer sees, what the codec got.
        ``coded``: really decoded low-res pictures (``--proxy x264``) instead of the proxy."""
        import torch.nn.functional as F

        from gopflow.precoders.nets import lanczos_resize

        kind = self.config.kind
        if kind == "dvp":
            x = crops[:, :1]
            small = model.features(x)[0] if plain else model(x)
            coded = self.proxy(small, qp)
            up = F.interpolate(coded, size=x.shape[-2:], mode="bicubic", align_corners=False)
            return up, small
        if kind == "vistra-up":
            x = crops[:, :1]
            small = None
            if coded is None:
                out_w, out_h = scaled_size(x.shape[-1], x.shape[-2], self.config.scale_fraction)
                small = lanczos_resize(x, (out_h, out_w))
                coded = self.proxy(small, qp)
            if plain:
                up = F.interpolate(coded, size=x.shape[-2:], mode="bicubic", align_corners=False)
            else:
                up = model(coded, tuple(x.shape[-2:]))
            return up, small
        a, b = self.proxy(crops[:, :1], qp), self.proxy(crops[:, 2:3], qp)
        return (0.5 * (a + b) if plain else model(a, b)), None

    def target(self, crops: Any) -> Any:
        return crops[:, 1:2] if self.config.kind == "vistra-interp" else crops[:, :1]

    def loss(
        self, model: Any, crops: Any, qp: Any, plain: bool = False, coded: Any = None
    ) -> tuple[Any, dict]:
        """The training loss and its parts (floats, for logging).

        Distortion per crop ``D = L1 + w_ms (1 - MS-SSIM)``. Without a rate term the loss is
        the batch mean of ``D``. For ``dvp`` with ``rate_weight = k > 0`` it is the mean of
        ``ln D + k ln R`` (``R``: the proxy's bits per pixel of the coded picture), i.e.
        ``D * R^k`` is minimised: a relative trade-off that holds at every QP and content,
        k ~ 0.8 matching H.264's slope of about 1 dB (11% RMSE) per 15% rate.
        """
        import torch
        from pytorch_msssim import ms_ssim

        out, small = self.reconstruct(model, crops, qp, plain, coded)
        ref = self.target(crops)
        per_crop = (out - ref).abs().mean(dim=(1, 2, 3))
        parts = {"l1": float(per_crop.detach().mean())}
        if self.config.msssim_weight > 0 and self.ms_ok:
            ms = ms_ssim(out.clamp(0, 1), ref, data_range=1.0, win_size=self.window,
                         size_average=False)
            per_crop = per_crop + self.config.msssim_weight * (1 - ms.reshape(-1))
            parts["msssim"] = float(ms.detach().mean())
        if self.config.kind == "dvp" and self.config.rate_weight > 0:
            bpp = self.proxy.rate(small, qp, per_picture=True)
            total = (torch.log(per_crop) + self.config.rate_weight * torch.log(bpp)).mean()
            parts["bpp"] = float(bpp.detach().mean())
        else:
            total = per_crop.mean()
        mse = float(((out.detach().clamp(0, 1) - ref) ** 2).mean())
        parts["psnr"] = 10 * math.log10(1.0 / max(mse, 1e-12))
        return total, parts


# ----------------------------------------------------------------------------- training
def _lr(config: TrainConfig, step: int, origin: int = 0) -> float:
    """Warm-up then cosine decay over the segment ``origin .. config.steps``."""
    return warmup_cosine(config.lr, step - origin, config.steps - origin)


def _evaluate_crops(
    objective: Objective, model: Any, clips: Sequence[Clip], config: TrainConfig
) -> dict[str, Any]:
    """Model vs plain resampler on fixed crops of the training clips, at fixed QPs."""
    import torch

    span = 3 if config.kind == "vistra-interp" else 1
    pool = FramePool(clips, config.seed + 7919, 8, span).at(0)
    crops = to_tensor(pool.batch(0, 32, config.effective_crop, stream=3))
    inputs: dict[int, tuple[Any, Any]] = {}
    for qp in EVAL_QPS:  # for --proxy x264 the QPs are x264 CRFs of really coded crops
        if config.proxy == "x264":
            pairs = CodedPairPool(clips, config.seed + 7919, 8, config.scale_fraction, (qp, qp))
            inputs[qp] = pairs.at(0).batch(0, 32, config.effective_crop, stream=3)
        else:
            inputs[qp] = (crops, None)
    objective.proxy.eval()
    model.eval()
    result: dict[str, Any] = {"qps": list(EVAL_QPS), "crops": 32}
    with torch.no_grad():
        for label, plain in (("model", False), ("plain", True)):
            losses, psnrs = [], []
            for qp in EVAL_QPS:
                source, coded = inputs[qp]
                loss, parts = objective.loss(model, source, float(qp), plain, coded)
                losses.append(float(loss))
                psnrs.append(round(parts["psnr"], 3))
            result[f"{label}_loss"] = round(float(np.mean(losses)), 6)
            result[f"{label}_psnr"] = psnrs
    model.train()
    objective.proxy.train()
    return result


def train_precoder(
    kind: str,
    data_dir: str,
    scale: str | Fraction = "1/2",
    steps: int = 2000,
    out_dir: str = "train-out",
    seed: int = 0,
    crop: int = 128,
    batch: int = 16,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    **options: Any,
) -> TrainResult:
    """Train one learned precoder (see the module docstring); return where it went.

    ``options``: any other :class:`TrainConfig` field (``lr``, ``pool``, ``threads``,
    ``checkpoint_every``, ``rate_weight``, ``arch`` ...).
    """
    config = TrainConfig(
        kind=kind, data_dir=str(data_dir), scale=str(Fraction(scale)), steps=steps,
        out_dir=str(out_dir), seed=seed, crop=crop, batch=batch, **options,
    )
    return run_training(config, resume=resume, progress=progress, log=log, on_step=on_step)


def run_training(
    config: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train as ``config`` says; ``on_step(step, loss)`` is called after every step."""
    import torch
    from tqdm import tqdm

    validate(config)
    config = config.resolved()
    say = log or (lambda message: None)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = list_clips(config.data_dir)
    digest = data_hash(files)
    span = 3 if config.kind == "vistra-interp" else 1
    crop = config.effective_crop
    clips = usable_clips(files, crop, span)
    skipped = sorted({p.name for p in files} - {c.name for c in clips})
    if skipped:
        say(f"skipping clips smaller than {crop}px or too short: {', '.join(skipped)}")

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, config.threads))
    try:
        torch.manual_seed(config.seed)
        model = build_model(config)
        objective = Objective(config)
        optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
        checkpoint = out / f"checkpoint-{config.name}.pt"
        start, losses, wall = 0, [], 0.0
        segments: list[dict[str, Any]] = []  # the settings each stretch of steps ran with
        if resume and checkpoint.exists():
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            if state.get("format") != CHECKPOINT_FORMAT:
                raise InputError(f"{checkpoint} is not a gopflow training checkpoint")
            saved = {key: state["identity"].get(key) for key in config.identity()}
            if saved != config.identity() or state["data_hash"] != digest:
                raise UsageError(
                    f"{checkpoint} belongs to a different run (settings or data differ); "
                    "start without --resume or use another --out"
                )
            model.load_state_dict(state["model"])
            optimiser.load_state_dict(state["optimiser"])
            start, losses, wall = int(state["step"]), list(state["losses"]), state["wall"]
            segments = [dict(item) for item in state.get("segments", [])]
            say(f"resuming {config.name} at step {start} of {config.steps}")
        elif resume:
            say(f"no checkpoint {checkpoint}; starting {config.name} from step 0")

        # A segment: a stretch of steps with one set of loss/optimiser settings. Resuming
        # with the same settings continues the segment (and its learning-rate schedule,
        # so an interrupted run ends exactly like an uninterrupted one); new settings
        # (say a fine-tune with another QP range) start a new segment and schedule.
        settings = {
            "steps": config.steps, "lr": config.lr, "rate_weight": config.rate_weight,
            "msssim_weight": config.msssim_weight, "qp_range": [config.qp_min, config.qp_max],
            "proxy": config.proxy,
        }
        origin = start
        if segments and segments[-1].get("to_step") == start and all(
            segments[-1].get(key) == value for key, value in settings.items()
        ):
            origin = int(segments.pop()["from_step"])
        settings = {"from_step": origin, **settings, "threads": config.threads}

        def save_checkpoint(step: int, elapsed: float) -> None:
            save_torch(checkpoint, {
                "format": CHECKPOINT_FORMAT, "identity": config.identity(),
                "data_hash": digest, "step": step, "losses": losses, "wall": elapsed,
                "segments": [*segments, {**settings, "to_step": step}],
                "model": model.state_dict(), "optimiser": optimiser.state_dict(),
            })
        pool = FramePool(clips, config.seed, config.pool, span)
        lo, hi = float(config.qp_min), float(config.qp_max)  # type: ignore[arg-type]
        pairs = (
            CodedPairPool(clips, config.seed, config.pool, config.scale_fraction, (lo, hi))
            if config.proxy == "x264" else None
        )

        def run_step(step: int) -> None:
            # Every random draw is a function of (seed, step): resumable, reproducible.
            torch.manual_seed(config.seed * 1_000_003 + step)
            coded = None
            if pairs is not None:
                crops, coded = pairs.at(step).batch(step, config.batch, crop)
            else:
                crops = to_tensor(pool.at(step).batch(step, config.batch, crop))
            qp = lo + (hi - lo) * torch.rand(config.batch)
            for group in optimiser.param_groups:
                group["lr"] = _lr(config, step, origin)
            loss, _ = objective.loss(model, crops, qp, coded=coded)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            losses.append(float(loss.detach()))

        model.train()
        objective.proxy.train()
        began = time.monotonic()
        bar = tqdm(total=config.steps, initial=start, desc=config.name, unit="step",
                   disable=not progress, dynamic_ncols=True)
        with bar:
            for step in range(start, config.steps):
                run_step(step)
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
                    save_checkpoint(step + 1, wall + time.monotonic() - began)
                if on_step is not None:
                    on_step(step + 1, losses[-1])
        elapsed = wall + time.monotonic() - began
        save_checkpoint(config.steps, elapsed)

        evaluation = _evaluate_crops(objective, model, clips, config)
        weights_path = out / f"{config.name}.pt"
        state = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
        save_torch(weights_path, state)
        plot_path = out / f"{config.name}-loss.png"
        ylabel = (
            f"mean ln(L1 + w (1 - MS-SSIM)) + {config.rate_weight:g} ln(bpp)"
            if config.kind == "dvp" and config.rate_weight > 0
            else "L1 + w (1 - MS-SSIM)"
        )
        plot_losses(losses, plot_path, f"gopflow {config.name} ({config.steps} steps)", ylabel)
        tail = losses[-min(50, len(losses)) :]
        from gopflow.precoders.nets import parameter_count

        metadata = {
            "name": config.name,
            "kind": config.kind,
            "scale": None if config.kind == "vistra-interp" else config.scale,
            "arch": model.arch(),
            "parameters": parameter_count(model),
            "steps": config.steps,
            "final_loss": round(float(np.mean(tail)), 6),
            "final_loss_window": len(tail),
            "evaluation_on_training_crops": evaluation,
            "seed": config.seed,
            "crop": crop,
            "batch": config.batch,
            "lr": config.lr,
            "qp_range": [config.qp_min, config.qp_max],
            "proxy": config.proxy,
            "init": config.init,
            "msssim_weight": config.msssim_weight,
            "rate_weight": config.rate_weight,
            "pool": config.pool,
            "threads": config.threads,
            "segments": [*segments, {**settings, "to_step": config.steps}],
            "data_dir": os.path.abspath(config.data_dir),
            "data_hash": digest,
            **provenance(clips, skipped, elapsed, weights_path),
        }
        metadata_path = out / f"{config.name}.json"
        atomic_write_json(metadata_path, metadata)
        say(
            f"{config.name}: {config.steps} steps in {elapsed:.0f}s, final loss "
            f"{metadata['final_loss']:.5f}; on training crops (QP {list(EVAL_QPS)}) loss "
            f"{evaluation['model_loss']:.5f} vs plain {evaluation['plain_loss']:.5f}"
        )
        return TrainResult(
            config.name, str(weights_path), str(metadata_path), str(plot_path),
            str(checkpoint), config.steps, metadata["final_loss"], elapsed,
        )
    finally:
        torch.set_num_threads(previous_threads)


def install(result: TrainResult, directory: str | None = None) -> None:
    """Register a training run's weights (and metadata, loss plot) in the weights registry."""
    from gopflow.zoo.registry import install_model

    arch = json.loads(Path(result.metadata).read_text())["arch"]
    install_model(result.name, result.weights, arch, (result.metadata,), directory)


