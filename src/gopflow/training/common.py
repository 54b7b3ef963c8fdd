"""Pieces every training job shares: the result record, the learning-rate schedule,
atomic checkpoint/weight writes, the loss plot and the provenance recorded in metadata.

Used by :mod:`gopflow.training.precoders`, :mod:`gopflow.training.codecs` and
:mod:`gopflow.training.evaluate`; it imports none of them.
"""

from __future__ import annotations

import datetime
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gopflow import __version__
from gopflow.fileio import atomic_write
from gopflow.training.data import Clip

EVAL_QPS: tuple[int, ...] = (22, 27, 32, 37)
"""Proxy QPs (x264 CRFs for ``--proxy x264``) at which a model is compared with the plain
resampler, on training crops after a run and on held-out clips by ``train evaluate``."""


@dataclass(frozen=True)
class TrainResult:
    """Where a training run wrote its outputs, how long it ran and its final loss."""

    name: str
    weights: str
    metadata: str
    plot: str
    checkpoint: str
    steps: int
    final_loss: float
    wall_seconds: float


def warmup_cosine(lr: float, step: int, total: int) -> float:
    """Learning rate at ``step`` of ``total``: linear warm-up, then cosine decay to 5%."""
    span = max(1, total)
    warmup = min(50, span // 10 + 1)
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, span - warmup)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def save_torch(path: Path, value: Any) -> None:
    """``torch.save`` of ``value`` to ``path`` atomically: an interrupted write never leaves
    a truncated checkpoint behind."""
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


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of 8-bit pictures from their mean squared error (floored at 1e-12)."""
    return 10 * math.log10(255.0**2 / max(mse, 1e-12))
