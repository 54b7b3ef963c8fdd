"""Every metric a comparison asks for, from both engines: gopflow's frame metrics (PSNR,
SSIM, MS-SSIM; :mod:`gopflow.quality.metrics`) and libvmaf's (:mod:`gopflow.quality.vmaf`)."""

from __future__ import annotations

from collections.abc import Iterable

from gopflow.quality.metrics import FrameScores, compute_metrics, expand_metrics
from gopflow.quality.names import FRAME_METRICS, VMAF_METRICS
from gopflow.quality.vmaf import vmaf_scores


def measure(
    reference: str,
    distorted: str,
    metrics: Iterable[str] = ("psnr", "ssim", "vmaf"),
    *,
    scale: bool = False,
    allow_length_mismatch: bool = False,
    threads: int | None = None,
    device: str = "cpu",
) -> FrameScores:
    """Every asked-for metric, PyAV ones and libvmaf ones, merged into one :class:`FrameScores`."""
    wanted = expand_metrics(metrics)
    frame_metrics = [m for m in wanted if m in FRAME_METRICS]
    vmaf_models = [m for m in wanted if m in VMAF_METRICS]
    scores: FrameScores | None = None
    if frame_metrics:
        scores = compute_metrics(
            reference, distorted, frame_metrics, scale=scale,
            allow_length_mismatch=allow_length_mismatch, threads=threads, device=device,
        )
    if vmaf_models:
        vmaf = vmaf_scores(
            reference, distorted, vmaf_models, scale=scale,
            allow_length_mismatch=allow_length_mismatch, threads=threads,
        )
        scores = vmaf if scores is None else scores.merged(vmaf)
    assert scores is not None
    return scores
