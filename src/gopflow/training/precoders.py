"""``gopflow train``: train the learned precoders on CPU, and evaluate them on held-out clips.

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
draws a QP per crop from ``qp_range``.

Data: every video file in ``data_dir`` (never its subdirectories); a bounded pool of
decoded luma frames (``pool`` frames, never whole videos), one slot re-decoded per step
from a random clip (uniform over clips) at a random frame position (PyAV seek when the
container has timestamps, a decode scan for raw streams), random crops and flips per batch.
Every random choice is a function of ``(seed, step)`` (numpy ``default_rng([seed, ...])``,
``torch.manual_seed`` per step), so a resumed run continues exactly as an uninterrupted one
would and two runs with the same seed, data and threads give the same weights.

Outputs in ``out_dir``: ``<name>.pt`` (float32 state dict), ``<name>.json`` (metadata:
kind, scale, architecture, steps, final loss, held-out-crop evaluation vs the plain
resampler, seed, data hash = sha256 over the sorted clip names and sizes, torch version,
wall time), ``<name>-loss.png`` and ``checkpoint-<name>.pt`` (every ``checkpoint_every``
steps, atomically; ``resume=True`` continues from it). ``--install`` copies the weights
into the package registry (:mod:`gopflow.zoo.registry`).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gopflow import __version__
from gopflow.errors import EncoderError, InputError, UsageError
from gopflow.fileio import atomic_write, atomic_write_json

Kind = Literal["dvp", "vistra-up", "vistra-interp"]
KINDS: tuple[str, ...] = ("dvp", "vistra-up", "vistra-interp")
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".264", ".h264", ".265",
     ".hevc", ".y4m", ".mpg", ".mpeg", ".ivf"}
)
CHECKPOINT_FORMAT = 1
X264_CRF_RANGE = (18.0, 45.0)
"""CRFs drawn for real x264-coded training inputs (``--proxy x264``)."""
CODED_RUN = 6
"""Consecutive frames coded per ``--proxy x264`` draw (frames 1.. are P/B pictures)."""
EVAL_QPS: tuple[int, ...] = (22, 27, 32, 37)
DEFAULT_EVAL_CLIPS: tuple[str, ...] = (
    "white_flower_1280x720.264",
    "red_trees_drive_1920x1080.264",
    "flower_960x540.mp4",
    "car_traffic_768x432.mp4",
    "foreman_cif_352x288.264",
)


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
        dead zone) at QP 10-38: with white noise at QP 20-40 the up-samplers learned to
        denoise, which blurred clean (low-QP) decoded pictures (held-out x264 PSNR up to
        1 dB below bicubic at CRF 23); the rounding fine-tune fixed that. The interpolator
        lost its motion gains when fine-tuned the same way, so it keeps the noise proxy.
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


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Clip:
    """A training clip: where it is, its size, and how to reach frame ``i``."""

    path: str
    name: str
    size_bytes: int
    width: int
    height: int
    frames: int
    pts: tuple[int, ...] | None  # sorted presentation timestamps; None: scan (raw stream)


def list_clips(data_dir: str | os.PathLike[str]) -> list[Path]:
    """Video files directly in ``data_dir``, sorted by name."""
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(f"training data directory {root} does not exist")
    files = sorted(
        p for p in root.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
    )
    if not files:
        raise InputError(f"no video files in {root} (extensions: {sorted(VIDEO_EXTENSIONS)})")
    return files


def data_hash(files: Sequence[Path]) -> str:
    """sha256 over ``name\\tsize\\n`` of every clip, sorted by name (cheap, content-blind)."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        digest.update(f"{path.name}\t{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def index_clip(path: Path) -> Clip:
    """Demux ``path`` once (no decoding): frame count and timestamps."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path} has no video stream")
            stream = container.streams.video[0]
            stamps = [p.pts for p in container.demux(stream) if p.size]
            width, height = stream.codec_context.width, stream.codec_context.height
    except av.error.FFmpegError as exc:
        raise InputError(f"cannot read training clip {path}: {exc}") from exc
    seekable = bool(stamps) and all(s is not None for s in stamps) and len(set(stamps)) == len(
        stamps
    )
    pts = tuple(sorted(stamps)) if seekable else None  # type: ignore[type-var]
    return Clip(str(path), path.name, path.stat().st_size, width, height, len(stamps), pts)


def read_luma(clip: Clip, index: int, count: int = 1) -> list[np.ndarray]:
    """Luma of frames ``index .. index + count - 1`` of ``clip`` (uint8 copies)."""
    from gopflow.precoders.inference import luma_array

    return read_frames(clip, index, count, luma_array)


def read_rgb(clip: Clip, index: int, count: int = 1) -> list[np.ndarray]:
    """Frames ``index .. index + count - 1`` of ``clip`` as ``H x W x 3`` uint8 RGB."""
    return read_frames(clip, index, count, lambda frame: frame.to_ndarray(format="rgb24"))


def read_frames(
    clip: Clip, index: int, count: int, convert: Callable[[Any], np.ndarray]
) -> list[np.ndarray]:
    """Frames ``index .. index + count - 1`` of ``clip``, each through ``convert``."""
    import av

    out: list[np.ndarray] = []
    with av.open(clip.path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        position = 0
        if clip.pts is not None and index > 0:
            container.seek(clip.pts[index], stream=stream, backward=True)
            position = -1  # found by timestamp
        for frame in container.decode(stream):
            if position < 0:
                if frame.pts is None or frame.pts < clip.pts[index]:  # type: ignore[index]
                    continue
                position = index
            if position >= index:
                out.append(np.array(convert(frame), copy=True))
                if len(out) == count:
                    break
            position += 1
    if len(out) != count:
        raise InputError(f"{clip.name}: could not decode frames {index}..{index + count - 1}")
    return out


class FramePool:
    """A bounded, seed-determined pool of decoded frames (luma by default, or ``reader``'s),
    ``span`` consecutive frames per slot.

    Slot ``j`` at step ``s`` holds the frames drawn by ``default_rng([seed, 1, j, g])``
    where ``g`` is how often the slot has been refreshed by then (one slot every
    ``refresh_every`` steps, round robin), so the pool at any step can be rebuilt from the
    seed alone (resume).
    """

    def __init__(
        self, clips: Sequence[Clip], seed: int, size: int, span: int,
        reader: Callable[[Clip, int, int], list[np.ndarray]] = read_luma,
        refresh_every: int = 1, stride: int = 1,
    ) -> None:
        self.clips = list(clips)
        self.seed, self.size, self.span = seed, size, span
        self.reader, self.refresh_every = reader, max(1, refresh_every)
        self.stride = max(1, stride)
        self.slots: list[list[np.ndarray]] = []
        self.generations: list[int] = []

    def _draw(self, slot: int, generation: int) -> list[np.ndarray]:
        """A slot's frames: ``span`` frames ``s`` apart, ``s`` drawn from ``1..stride`` (as
        far as the clip is long enough; with ``stride`` 1 no extra draw is made)."""
        rng = np.random.default_rng([self.seed, 1, slot, generation])
        clip = self.clips[int(rng.integers(len(self.clips)))]
        step = 1
        if self.stride > 1 and self.span > 1:
            step = min(int(rng.integers(1, self.stride + 1)),
                       max(1, (clip.frames - 1) // (self.span - 1)))
        need = (self.span - 1) * step + 1
        index = int(rng.integers(clip.frames - need + 1))
        return self.reader(clip, index, need)[::step]

    def generation(self, slot: int, step: int) -> int:
        events = step // self.refresh_every  # one refresh event every refresh_every steps
        return (events - slot + self.size - 1) // self.size if events > slot else 0

    def at(self, step: int) -> FramePool:
        """Bring the pool to its state at ``step`` (decoding only what changed)."""
        wanted = [self.generation(j, step) for j in range(self.size)]
        if not self.slots:
            self.slots = [self._draw(j, g) for j, g in enumerate(wanted)]
        else:
            for j, g in enumerate(wanted):
                if g != self.generations[j]:
                    self.slots[j] = self._draw(j, g)
        self.generations = wanted
        return self

    def batch(self, step: int, batch: int, crop: int, stream: int = 2) -> np.ndarray:
        """``batch x span x crop x crop (x channels)`` uint8 crops (random slot, position,
        flips)."""
        rng = np.random.default_rng([self.seed, stream, step])
        out = np.empty((batch, self.span, crop, crop, *self.slots[0][0].shape[2:]), np.uint8)
        for b in range(batch):
            frames = self.slots[int(rng.integers(self.size))]
            height, width = frames[0].shape[:2]
            y = int(rng.integers(height - crop + 1))
            x = int(rng.integers(width - crop + 1))
            stack = np.stack([f[y : y + crop, x : x + crop] for f in frames])
            if rng.random() < 0.5:
                stack = stack[:, :, ::-1]
            if rng.random() < 0.5:
                stack = stack[:, ::-1, :]
            if self.span > 1 and rng.random() < 0.5:
                stack = stack[::-1]  # time reversal: the middle frame is the same
            out[b] = stack
        return out


def x264_lowres_run(
    luma: Sequence[np.ndarray], size: tuple[int, int], crf: float, preset: str = "medium"
) -> list[np.ndarray]:
    """``luma`` frames Lanczos-downscaled to ``size`` (w, h) by ffmpeg's swscale, coded by
    x264 at ``crf`` and decoded: exactly what ViSTRA's decoder-side up-sampler receives
    (the encoder side of :mod:`gopflow.precoders.resample`). Chroma is flat grey."""
    height, width = luma[0].shape
    grey = bytes([128]) * (2 * ((height + 1) // 2) * ((width + 1) // 2))
    pictures = [frame.tobytes() + grey for frame in luma]
    decoded, _ = x264_roundtrip(pictures, width, height, 25.0, crf, preset,
                                filters=f"scale={size[0]}:{size[1]}:flags=lanczos", threads=1)
    from gopflow.precoders.inference import luma_array

    return [luma_array(frame).copy() for frame in decoded]


class CodedPairPool:
    """A bounded, seed-determined pool of (source luma, x264-decoded low-res luma) pairs.

    Like :class:`FramePool` (one slot refreshed per step, rebuilt from the seed on resume),
    but a slot holds a run of :data:`CODED_RUN` frames downscaled and really coded by x264
    at a CRF drawn from ``crf_range``: the up-sampler learns from the artefacts it will
    restore (intra and inter pictures), not from a proxy. x264 runs single-threaded, so a
    draw is deterministic.
    """

    def __init__(
        self, clips: Sequence[Clip], seed: int, size: int, scale: Fraction,
        crf_range: tuple[float, float],
    ) -> None:
        # Frames are cropped to a multiple of 2 x the scale's denominator, where the coded
        # size is exactly ``scale`` times the source (and even), so every crop aligns.
        usable = [c for c in clips if c.frames >= CODED_RUN]
        if not usable:
            raise InputError(f"no training clip has {CODED_RUN} frames")
        self.frames = FramePool(usable, seed, size, CODED_RUN)
        self.scale, self.crf_range = scale, crf_range
        self.pairs: list[list[tuple[np.ndarray, np.ndarray]]] = []
        self.generations: list[int] = []

    def _code(self, slot: int, generation: int, frames: list[np.ndarray]) -> list[Any]:
        rng = np.random.default_rng([self.frames.seed, 5, slot, generation])
        lo, hi = self.crf_range
        crf = round(float(lo + (hi - lo) * rng.random()), 1)
        step = 2 * self.scale.denominator
        height, width = frames[0].shape
        height, width = height - height % step, width - width % step
        frames = [np.ascontiguousarray(f[:height, :width]) for f in frames]
        size = _scaled(width, height, self.scale)
        assert _exact_scale(width, height, self.scale)
        return list(zip(frames, x264_lowres_run(frames, size, crf), strict=True))

    def at(self, step: int) -> CodedPairPool:
        before = list(self.frames.generations)
        self.frames.at(step)
        for j, generation in enumerate(self.frames.generations):
            if j >= len(self.pairs):
                self.pairs.append(self._code(j, generation, self.frames.slots[j]))
            elif before[j] != generation:
                self.pairs[j] = self._code(j, generation, self.frames.slots[j])
        self.generations = list(self.frames.generations)
        return self

    def batch(self, step: int, batch: int, crop: int, stream: int = 2) -> tuple[Any, Any]:
        """``(source, coded)``: ``batch x 1 x crop x crop`` and the aligned low-res crops."""
        rng = np.random.default_rng([self.frames.seed, stream, step])
        d, n = self.scale.denominator, self.scale.numerator
        small = crop * n // d
        hr = np.empty((batch, 1, crop, crop), np.uint8)
        lr = np.empty((batch, 1, small, small), np.uint8)
        for b in range(batch):
            run = self.pairs[int(rng.integers(len(self.pairs)))]
            source, coded = run[int(rng.integers(len(run)))]
            height, width = source.shape
            y = d * int(rng.integers((height - crop) // d + 1))
            x = d * int(rng.integers((width - crop) // d + 1))
            a = source[y : y + crop, x : x + crop]
            c = coded[y * n // d : y * n // d + small, x * n // d : x * n // d + small]
            if rng.random() < 0.5:
                a, c = a[:, ::-1], c[:, ::-1]
            if rng.random() < 0.5:
                a, c = a[::-1], c[::-1]
            hr[b, 0], lr[b, 0] = a, c
        return _to_tensor(hr), _to_tensor(lr)


def _exact_scale(width: int, height: int, scale: Fraction) -> bool:
    """Whether the coded size is exactly ``scale`` times the source (crops align)."""
    out_w, out_h = _scaled(width, height, scale)
    return Fraction(out_w, width) == scale and Fraction(out_h, height) == scale


def usable_clips(files: Sequence[Path], crop: int, span: int) -> list[Clip]:
    clips = [index_clip(p) for p in files]
    usable = [c for c in clips if min(c.width, c.height) >= crop and c.frames >= span]
    if not usable:
        raise InputError(
            f"no clip in the training data is at least {crop}x{crop} with {span} frames"
        )
    return usable


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
                out_w, out_h = _scaled(x.shape[-1], x.shape[-2], self.config.scale_fraction)
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


def _scaled(width: int, height: int, scale: Fraction) -> tuple[int, int]:
    from gopflow.precoders.resample import scaled_size

    return scaled_size(width, height, scale)


# ----------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainResult:
    name: str
    weights: str
    metadata: str
    plot: str
    checkpoint: str
    steps: int
    final_loss: float
    wall_seconds: float


def _to_tensor(batch: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(batch)).float().div_(255.0)


def _lr(config: TrainConfig, step: int, origin: int = 0) -> float:
    """Warm-up then cosine decay over the segment ``origin .. config.steps``."""
    return warmup_cosine(config.lr, step - origin, config.steps - origin)


def warmup_cosine(lr: float, step: int, total: int) -> float:
    """Learning rate at ``step`` of ``total``: linear warm-up, then cosine decay to 5%."""
    span = max(1, total)
    warmup = min(50, span // 10 + 1)
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, span - warmup)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _save_torch(path: Path, value: Any) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(value, buffer)
    data = buffer.getvalue()
    atomic_write(path, lambda handle: handle.write(data))


def plot_losses(
    losses: Sequence[float], path: Path, title: str, ylabel: str = "L1 + w (1 - MS-SSIM)"
) -> None:
    """Loss curve (raw and moving average) as a PNG, with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, color="0.75", linewidth=0.6, label="loss per step")
    window = max(1, min(50, len(losses) // 10))
    if len(losses) >= window:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color="C0", label=f"mean of {window}")
    if min(losses, default=1.0) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    data = io.BytesIO()
    fig.savefig(data, format="png")
    atomic_write(path, lambda handle: handle.write(data.getvalue()))


def _evaluate_crops(
    objective: Objective, model: Any, clips: Sequence[Clip], config: TrainConfig
) -> dict[str, Any]:
    """Model vs plain resampler on fixed crops of the training clips, at fixed QPs."""
    import torch

    span = 3 if config.kind == "vistra-interp" else 1
    pool = FramePool(clips, config.seed + 7919, 8, span).at(0)
    crops = _to_tensor(pool.batch(0, 32, config.effective_crop, stream=3))
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
            _save_torch(checkpoint, {
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
                crops = _to_tensor(pool.at(step).batch(step, config.batch, crop))
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
        _save_torch(weights_path, state)
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


def provenance(
    clips: Sequence[Clip], skipped: Sequence[str], elapsed: float, weights_path: Path
) -> dict[str, Any]:
    """The metadata every training job records about its data, software, time and output."""
    import torch

    from gopflow.zoo.registry import sha256_file

    return {
        "clips": [{"name": c.name, "bytes": c.size_bytes, "frames": c.frames} for c in clips],
        "skipped_clips": list(skipped),
        "torch_version": torch.__version__,
        "gopflow_version": __version__,
        "wall_seconds": round(elapsed, 1),
        "weights_sha256": sha256_file(weights_path),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def install(result: TrainResult, directory: str | None = None) -> None:
    """Register a training run's weights (and metadata, loss plot) in the weights registry."""
    from gopflow.zoo.registry import install_model

    arch = json.loads(Path(result.metadata).read_text())["arch"]
    install_model(result.name, result.weights, arch, (result.metadata, result.plot), directory)


# ----------------------------------------------------------------------------- evaluation
def _psnr(mse: float) -> float:
    return 10 * math.log10(255.0**2 / max(mse, 1e-12))


def _decode_frames(path: str, count: int) -> tuple[list[Any], float]:
    import av

    from gopflow.precoders.inference import as_420

    frames = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        for frame in container.decode(stream):
            frames.append(as_420(frame))
            if len(frames) == count:
                break
    if not frames:
        raise InputError(f"{path}: no frames decoded")
    return frames, rate


def _packed(frame: Any) -> bytes:
    from gopflow.precoders.inference import plane_array

    return b"".join(plane_array(frame, i).tobytes() for i in range(3))


def x264_roundtrip(
    pictures: Sequence[bytes], width: int, height: int, fps: float, crf: float, preset: str,
    filters: str | None = None, threads: int = 2,
) -> tuple[list[Any], int]:
    """Encode packed yuv420p pictures with libx264 (ffmpeg; after ``filters`` if given)
    and decode them back (PyAV)."""
    import av

    from gopflow.media.ffmpeg import find_ffmpeg

    tool = find_ffmpeg()
    tool.require(encoders=["libx264"])
    with tempfile.TemporaryDirectory(prefix="gopflow-eval-") as tmp:
        out = os.path.join(tmp, "coded.mkv")
        command = [
            tool.path, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{width}x{height}",
            "-r", f"{fps:.6f}", "-i", "-", *(["-vf", filters] if filters else []),
            "-c:v", "libx264", "-preset", preset, "-crf", f"{crf:g}", "-threads", str(threads),
            out,
        ]
        done = subprocess.run(command, input=b"".join(pictures), capture_output=True)
        if done.returncode:
            raise EncoderError(f"x264 evaluation encode failed: {done.stderr.decode()[-400:]}")
        size = os.path.getsize(out)
        with av.open(out) as container:
            decoded = list(container.decode(video=0))
    return decoded, size


def _luma_mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def evaluate_model(
    name: str,
    clips: Sequence[str],
    frames: int = 16,
    crfs: Sequence[float] = (23, 28, 33, 38),
    qps: Sequence[int] = EVAL_QPS,
    preset: str = "medium",
    threads: int = 1,
    registry_dir: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Held-out comparison of a registered model against the plain resamplers.

    ``dvp-*``: learned vs Lanczos vs bicubic downscale, each followed by the codec proxy
    (luma, per QP) or a real x264 encode (per CRF, all planes) and a bicubic (swscale)
    upscale; PSNR-Y at source size, kbit/s, BD-rate/BD-PSNR of learned vs Lanczos.
    ``vistra-up-*``: Lanczos down, coded, then learned vs bicubic up.
    ``vistra-interp``: odd frames from coded even neighbours: learned vs average vs repeat.
    """
    import torch
    import torch.nn.functional as F

    from gopflow.precoders import inference
    from gopflow.precoders.dvp import DvpPrecoder
    from gopflow.precoders.proxy import CodecProxy
    from gopflow.precoders.vistra import LearnedRestorer
    from gopflow.quality.bd import bd_quality, bd_rate

    say = log or (lambda message: None)
    model = inference.MODEL_CACHE.get(name, registry_dir)
    proxy = CodecProxy().eval()
    report: dict[str, Any] = {"model": name, "frames": frames, "crfs": list(crfs),
                              "qps": list(qps), "preset": preset, "clips": {}}
    kind = "vistra-interp" if name == "vistra-interp" else name.rsplit("-", 1)[0]
    scale = None if kind == "vistra-interp" else Fraction(name.rsplit("-", 1)[1].replace("_", "/"))

    def t(plane: np.ndarray) -> Any:
        return torch.from_numpy(plane.astype(np.float32))[None, None] / 255.0

    def u8(tensor: Any) -> np.ndarray:
        return tensor[0, 0].mul(255).round().clamp(0, 255).to(torch.uint8).numpy()

    with inference.torch_settings(threads):
        for path in clips:
            source, fps = _decode_frames(path, frames)
            width, height = source[0].width, source[0].height
            ys = [inference.plane_array(f, 0) for f in source]
            entry: dict[str, Any] = {"size": f"{width}x{height}", "frames": len(source)}
            if kind in ("dvp", "vistra-up"):
                assert scale is not None
                sw, sh = _scaled(width, height, scale)
                smalls: dict[str, list[Any]] = {
                    "lanczos": [f.reformat(width=sw, height=sh, interpolation="LANCZOS")
                                for f in source],
                }
                if kind == "dvp":
                    precoder = DvpPrecoder(scale, threads=threads, model=model)
                    smalls["bicubic"] = [
                        f.reformat(width=sw, height=sh, interpolation="BICUBIC") for f in source
                    ]
                    smalls["learned"] = [precoder.down(f) for f in source]
                    ups = {"bicubic-up": None}
                else:
                    ups = {"bicubic-up": None, "learned-up": model}
                # Codec proxy (luma).
                proxy_rows: dict[str, list[float]] = {}
                for method, pics in smalls.items():
                    if kind == "dvp":
                        planes = [
                            np.frombuffer(p, np.uint8)[: sw * sh].reshape(sh, sw)
                            if isinstance(p, bytes) else inference.plane_array(p, 0)
                            for p in pics
                        ]
                    else:
                        planes = [inference.plane_array(p, 0) for p in pics]
                    for up_name, up_model in ups.items():
                        label = method if kind == "dvp" else up_name
                        row = []
                        for qp in [None, *qps]:
                            mse = []
                            for plane, ref in zip(planes, ys, strict=True):
                                x = t(plane)
                                coded = x if qp is None else proxy(x, float(qp))
                                if up_model is None:
                                    big = F.interpolate(coded, size=(height, width),
                                                        mode="bicubic", align_corners=False)
                                else:
                                    big = up_model(coded, (height, width))
                                mse.append(_luma_mse(u8(big), ref))
                            row.append(round(_psnr(float(np.mean(mse))), 3))
                        proxy_rows[label] = row
                entry["proxy_psnr"] = {"qps": ["none", *qps], **proxy_rows}
                # Real x264 (all planes), swscale bicubic or learned luma up.
                x264: dict[str, dict[str, list[float]]] = {}
                restorer = LearnedRestorer(threads=threads, registry_dir=registry_dir)
                from gopflow.precoders.restore import RestoreTarget

                target = RestoreTarget(width, height, Fraction(fps).limit_denominator(1001),
                                       len(source))
                for method, pics in smalls.items():
                    packed = [p if isinstance(p, bytes) else _packed(p) for p in pics]
                    for crf in crfs:
                        decoded, size = x264_roundtrip(packed, sw, sh, fps, crf, preset)
                        kbps = size * 8 * fps / len(packed) / 1000
                        for up_name, up_model in ups.items():
                            label = method if kind == "dvp" else up_name
                            mse = []
                            for frame, ref in zip(decoded, ys, strict=True):
                                if up_model is None:
                                    big = frame.reformat(width=width, height=height,
                                                         interpolation="BICUBIC")
                                    plane = inference.plane_array(big, 0)
                                else:
                                    full = restorer.full_size_bytes(frame, target)
                                    plane = np.frombuffer(full, np.uint8)[: width * height]
                                    plane = plane.reshape(height, width)
                                mse.append(_luma_mse(plane, ref))
                            row = x264.setdefault(label, {"kbps": [], "psnr": []})
                            row["kbps"].append(round(kbps, 2))
                            row["psnr"].append(round(_psnr(float(np.mean(mse))), 3))
                entry["x264_psnr"] = x264
                anchor, test = ("lanczos", "learned") if kind == "dvp" else (
                    "bicubic-up", "learned-up")
                try:
                    entry["bd_rate_percent"] = round(bd_rate(
                        x264[anchor]["kbps"], x264[anchor]["psnr"],
                        x264[test]["kbps"], x264[test]["psnr"]), 2)
                    entry["bd_psnr_db"] = round(bd_quality(
                        x264[anchor]["kbps"], x264[anchor]["psnr"],
                        x264[test]["kbps"], x264[test]["psnr"]), 3)
                except ValueError as exc:
                    entry["bd_error"] = str(exc)
            else:
                entry.update(_evaluate_interp(model, source, ys, fps, qps, crfs, preset, proxy,
                                              threads, registry_dir))
            report["clips"][os.path.basename(path)] = entry
            say(f"evaluated {name} on {os.path.basename(path)}")
    return report


def _evaluate_interp(
    model: Any, source: Sequence[Any], ys: Sequence[np.ndarray], fps: float,
    qps: Sequence[int], crfs: Sequence[float], preset: str, proxy: Any,
    threads: int, registry_dir: str | None,
) -> dict[str, Any]:
    """Odd frames predicted from their (coded) even neighbours."""
    import torch

    from gopflow.precoders.inference import plane_array
    from gopflow.precoders.vistra import LearnedRestorer

    def t(plane: np.ndarray) -> Any:
        return torch.from_numpy(plane.astype(np.float32))[None, None] / 255.0

    def u8(tensor: Any) -> np.ndarray:
        return tensor[0, 0].mul(255).round().clamp(0, 255).to(torch.uint8).numpy()

    odd = range(1, len(ys) - 1, 2)
    out: dict[str, Any] = {"proxy_psnr": {"qps": ["none", *qps]}, "x264_psnr": {}}
    rows: dict[str, list[float]] = {"learned": [], "average": [], "repeat": []}
    for qp in [None, *qps]:
        mse: dict[str, list[float]] = {k: [] for k in rows}
        for i in odd:
            a, b = t(ys[i - 1]), t(ys[i + 1])
            if qp is not None:
                a, b = proxy(a, float(qp)), proxy(b, float(qp))
            mse["learned"].append(_luma_mse(u8(model(a, b)), ys[i]))
            mse["average"].append(_luma_mse(u8(0.5 * (a + b)), ys[i]))
            mse["repeat"].append(_luma_mse(u8(a), ys[i]))
        for k in rows:
            rows[k].append(round(_psnr(float(np.mean(mse[k]))), 3))
    out["proxy_psnr"].update(rows)
    width, height = source[0].width, source[0].height
    even = [_packed(f) for f in source[0::2]]
    restorer = LearnedRestorer(threads=threads, registry_dir=registry_dir)
    for crf in crfs:
        decoded, size = x264_roundtrip(even, width, height, fps / 2, crf, preset)
        kbps = size * 8 * (fps / 2) / len(even) / 1000
        packed = [_packed(f) for f in decoded]
        mse = {k: [] for k in rows}
        for i in odd:
            prev, nxt = packed[(i - 1) // 2], packed[(i + 1) // 2]
            mid = restorer.interpolate(prev, nxt, width, height)
            luma = np.frombuffer(mid, np.uint8)[: width * height].reshape(height, width)
            mse["learned"].append(_luma_mse(luma, ys[i]))
            pa = plane_array(decoded[(i - 1) // 2], 0).astype(np.uint16)
            pb = plane_array(decoded[(i + 1) // 2], 0)
            mse["average"].append(_luma_mse(((pa + pb + 1) // 2).astype(np.uint8), ys[i]))
            mse["repeat"].append(_luma_mse(plane_array(decoded[(i - 1) // 2], 0), ys[i]))
        for k in rows:
            row = out["x264_psnr"].setdefault(k, {"kbps": [], "psnr_odd_frames": []})
            row["kbps"].append(round(kbps, 2))
            row["psnr_odd_frames"].append(round(_psnr(float(np.mean(mse[k]))), 3))
    return out


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of :func:`evaluate_model`'s report."""
    lines = [f"model {report['model']}: {report['frames']} frames per clip, x264 "
             f"{report['preset']}, PSNR-Y dB at source size"]
    for clip, entry in report["clips"].items():
        lines.append(f"\n{clip} ({entry['size']}, {entry['frames']} frames)")
        proxy = entry["proxy_psnr"]
        lines.append("  proxy QP       " + " ".join(f"{q!s:>7}" for q in proxy["qps"]))
        for method, row in proxy.items():
            if method != "qps":
                lines.append(f"  {method:<14} " + " ".join(f"{v:7.2f}" for v in row))
        lines.append("  x264 CRF       " + " ".join(f"{c:>15g}" for c in report["crfs"]))
        for method, row in entry["x264_psnr"].items():
            values = row.get("psnr", row.get("psnr_odd_frames"))
            cells = " ".join(f"{q:6.2f}@{r:7.1f}k" for q, r in zip(values, row["kbps"],
                                                                  strict=True))
            lines.append(f"  {method:<14} {cells}")
        if "bd_rate_percent" in entry:
            lines.append(f"  BD-rate {entry['bd_rate_percent']:+.2f}%  "
                         f"BD-PSNR {entry['bd_psnr_db']:+.3f} dB (learned vs plain)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI
def _scale_arg(text: str) -> str:
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a scale: {text!r} (e.g. 3/4)") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError("scale must be in (0, 1)")
    return str(value)


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``train precoder`` and ``train evaluate`` to the CLI's subcommands."""
    parser = subparsers.add_parser(
        "train",
        help="train or evaluate the learned precoders and codecs (CPU)",
        description="Train the learned precoders (Deep Video Precoding downscalers, ViSTRA "
        "up-samplers and frame interpolator) on CPU, or evaluate a registered model on "
        "held-out clips against plain resampling.",
    )
    sub = parser.add_subparsers(dest="train_command", metavar="WHAT", required=True)
    pre = sub.add_parser(
        "precoder",
        help="train one learned precoder",
        description="Train a learned precoder on the video files in --data (random crops of "
        "decoded luma, through a differentiable H.264-like codec proxy). Writes NAME.pt, "
        "NAME.json (metadata), NAME-loss.png and a checkpoint into --out.",
    )
    from gopflow.training.codecs import add_codec_parser
    from gopflow.training.mode import add_mode_parser

    add_mode_parser(sub)
    add_codec_parser(sub)
    pre.add_argument("--kind", required=True, choices=KINDS)
    pre.add_argument("--data", required=True, metavar="DIR", help="directory of video clips")
    pre.add_argument("--scale", type=_scale_arg, default="1/2",
                     help="spatial scale (dvp, vistra-up): 3/4, 2/3, 1/2 (default 1/2)")
    pre.add_argument("--steps", type=int, default=2000, help="optimiser steps (2000)")
    pre.add_argument("--out", default="train-out", metavar="DIR", help="output dir (train-out)")
    pre.add_argument("--seed", type=int, default=0, help="random seed (0)")
    pre.add_argument("--crop", type=int, default=128, help="luma crop size in pixels (128)")
    pre.add_argument("--batch", type=int, default=16, help="crops per step (16)")
    pre.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (2e-3)")
    pre.add_argument("--rate-weight", type=float, default=0.0,
                     help="dvp: weight of the proxy's bits-per-pixel term (0)")
    pre.add_argument("--msssim-weight", type=float, default=1.0,
                     help="weight of (1 - MS-SSIM) next to L1 (1)")
    pre.add_argument("--qp-min", type=float,
                     help="lowest proxy QP (default: 10 vistra-up, else 20)")
    pre.add_argument("--qp-max", type=float,
                     help="highest proxy QP (default: 38 vistra-up, else 40)")
    pre.add_argument("--proxy", choices=["noise", "round", "x264"],
                     help="proxy quantisation while training: additive noise (default) or "
                     "rounding with a dead zone (default for vistra-up); x264: vistra-up "
                     "inputs really Lanczos-downscaled and coded by x264 (CRF range: "
                     "--qp-min/--qp-max, default 18-45)")
    pre.add_argument("--base", choices=["bicubic", "lanczos"],
                     help="dvp: the plain downscale the learned residual is added to "
                     "(default bicubic: antialiased; lanczos: swscale's Lanczos-3)")
    pre.add_argument("--init", metavar="NAME",
                     help="start from the registered model NAME (fine-tune) instead of the "
                     "plain resampler")
    pre.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    pre.add_argument("--checkpoint-every", type=int, default=100, help="steps (100)")
    pre.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    pre.add_argument("--install", action="store_true",
                     help="register the result in the weights registry (see --registry)")
    pre.add_argument("--registry", metavar="DIR",
                     help="weights registry directory (default: the one inside gopflow)")
    pre.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar (default: when stderr is a terminal)")
    ev = sub.add_parser(
        "evaluate",
        help="compare a registered model with plain resampling on held-out clips",
        description="PSNR-Y after the codec proxy and after real x264 encodes, learned vs "
        "Lanczos/bicubic (dvp), vs bicubic up-sampling (vistra-up), vs average and frame "
        "repetition (vistra-interp).",
    )
    ev.add_argument("--model", required=True, help="registry name, e.g. dvp-3_4")
    ev.add_argument("--clips", nargs="+", required=True, metavar="FILE")
    ev.add_argument("--frames", type=int, default=16, help="frames per clip (16)")
    ev.add_argument("--crf", type=float, nargs="+", default=[23, 28, 33, 38])
    ev.add_argument("--preset", default="medium")
    ev.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    ev.add_argument("--registry", metavar="DIR",
                    help="weights registry directory (default: the one inside gopflow)")
    ev.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    return parser


def run_train(args: argparse.Namespace) -> int:
    import sys

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    if args.train_command == "mode-predictor":
        from gopflow.training.mode import run_mode

        return run_mode(args)
    if args.train_command == "codec":
        from gopflow.training.codecs import run_codec

        return run_codec(args)
    if args.train_command == "evaluate":
        report = evaluate_model(args.model, args.clips, frames=args.frames, crfs=args.crf,
                                preset=args.preset, threads=args.threads,
                                registry_dir=args.registry, log=log)
        print(format_report(report))
        if args.json:
            atomic_write_json(args.json, report)
        return 0
    progress = args.progress if args.progress is not None else sys.stderr.isatty()
    config = TrainConfig(
        kind=args.kind, data_dir=args.data, scale=args.scale, steps=args.steps,
        out_dir=args.out, seed=args.seed, crop=args.crop, batch=args.batch, lr=args.lr,
        rate_weight=args.rate_weight, msssim_weight=args.msssim_weight,
        threads=args.threads, checkpoint_every=args.checkpoint_every,
        qp_min=args.qp_min, qp_max=args.qp_max, proxy=args.proxy, init=args.init,
        arch={"base": args.base} if args.base else {},
    )
    result = run_training(config, resume=args.resume, progress=progress, log=log)
    if args.install:
        install(result, args.registry)
        log(f"installed {result.name} in the weights registry")
    print(json.dumps(asdict(result), indent=2))
    return 0
