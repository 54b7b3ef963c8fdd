"""The one metric vocabulary: every metric name gopflow measures, reports or targets.

``compare`` measures any of :data:`ALL_METRICS` (a user may ask by group: ``psnr`` is the
four PSNR planes); a QRO target must be one of :data:`GOP_METRICS`, the metrics a worker
measures on a restored GOP. Aliases (``psnr`` -> ``psnr_y``) resolve through
:func:`canonical_metric`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

PSNR_METRICS = ("psnr_y", "psnr_u", "psnr_v", "psnr_yuv")
FRAME_METRICS = (*PSNR_METRICS, "ssim_y", "msssim_y")
"""Computed by gopflow frame by frame."""
VMAF_METRICS = ("vmaf", "vmaf_neg")
"""Computed by libvmaf (in the bundled ffmpeg)."""
ALL_METRICS = (*FRAME_METRICS, *VMAF_METRICS)

METRIC_GROUPS: Mapping[str, tuple[str, ...]] = {
    "psnr": PSNR_METRICS,
    "ssim": ("ssim_y",),
    "msssim": ("msssim_y",),
    "vmaf": ("vmaf",),
    "vmaf_neg": ("vmaf_neg",),
}
"""Metric names grouped the way a user asks for them (``--metrics psnr,ssim``)."""

GOP_METRICS = ("vmaf", "vmaf_neg", "psnr_y")
"""Metrics a worker measures on a restored GOP: the metrics QRO can target."""

METRIC_ALIASES: Mapping[str, str] = {
    "psnr": "psnr_y",
    "ssim": "ssim_y",
    "msssim": "msssim_y",
    "ms_ssim": "msssim_y",
    "ms-ssim": "msssim_y",
}


@dataclass(frozen=True)
class MetricRange:
    """Range of a metric's values and its typical drop per CRF unit (a search's first step)."""

    low: float
    high: float
    slope: float


METRIC_RANGES: Mapping[str, MetricRange] = {
    "vmaf": MetricRange(0.0, 100.0, 0.8),
    "vmaf_neg": MetricRange(0.0, 100.0, 0.8),
    "psnr_y": MetricRange(0.0, 200.0, 0.3),
    "psnr_u": MetricRange(0.0, 200.0, 0.3),
    "psnr_v": MetricRange(0.0, 200.0, 0.3),
    "psnr_yuv": MetricRange(0.0, 200.0, 0.3),
    "ssim_y": MetricRange(0.0, 1.0, 0.002),
    "msssim_y": MetricRange(0.0, 1.0, 0.002),
}


def canonical_metric(name: str) -> str:
    """``name`` lower-cased with aliases resolved (``PSNR`` -> ``psnr_y``)."""
    lowered = name.lower()
    return METRIC_ALIASES.get(lowered, lowered)
