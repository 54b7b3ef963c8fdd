"""Pooling, per-GOP summaries, metric names, resize rules and the SSIM kernel (no video)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gopflow.errors import GopflowError, MetricError, UsageError
from gopflow.quality.metrics import (
    FrameScores,
    MetricSeries,
    expand_metrics,
    plan_resize,
    pool,
    psnr_from_mse,
    ssim_plane,
)
from gopflow.types import GopSpec


def _scores(values: dict[str, list[float]]) -> FrameScores:
    frames = len(next(iter(values.values())))
    return FrameScores(
        "ref", "dist", frames, 64, 48, 64, 48, "none",
        tuple(MetricSeries(k, tuple(v)) for k, v in values.items()),
    )


def test_pool_values():
    data = [30.0, 40.0, 35.0, 20.0, 45.0]
    pooled = pool(data)
    assert pooled.frames == 5
    assert pooled.mean == pytest.approx(34.0)
    assert pooled.min == 20.0
    assert pooled.p5 == pytest.approx(np.percentile(data, 5))
    # libvmaf's harmonic mean: n / sum(1 / (x + 1)) - 1
    assert pooled.harmonic_mean == pytest.approx(5 / sum(1 / (x + 1) for x in data) - 1)
    assert pool([0.0, 100.0]).harmonic_mean == pytest.approx(2 / (1 + 1 / 101) - 1)
    assert math.isnan(pool([]).mean) and pool([]).frames == 0


def test_per_gop_with_tuples_and_gop_specs():
    scores = _scores({"psnr_y": [30, 31, 32, 33, 34, 35], "vmaf": [90, 80, 70, 60, 50, 40]})
    gops = [GopSpec(0, 0, 2, 0, True), GopSpec(1, 2, 4, 2, False)]
    by_spec = scores.per_gop(gops)
    by_tuple = scores.per_gop([(0, 2), (2, 6)])
    assert by_spec == by_tuple
    assert by_spec[1].start_frame == 2 and by_spec[1].end_frame == 6
    assert by_spec[1].pooled["psnr_y"].mean == pytest.approx(33.5)
    assert by_spec[0].pooled["vmaf"].min == 80
    with pytest.raises(MetricError, match="outside"):
        scores.per_gop([(4, 7)])


def test_merge_and_lookup():
    a = _scores({"psnr_y": [30.0, 31.0]})
    b = _scores({"vmaf": [90.0, 91.0]})
    merged = a.merged(b)
    assert merged.names == ("psnr_y", "vmaf")
    assert merged["vmaf"] == (90.0, 91.0)
    with pytest.raises(KeyError, match="no metric"):
        merged["ssim_y"]
    with pytest.raises(MetricError, match="twice"):
        merged.merged(b)


def test_expand_metrics():
    assert expand_metrics(["ssim", "psnr"]) == ("psnr_y", "psnr_u", "psnr_v", "psnr_yuv", "ssim_y")
    assert expand_metrics(["vmaf-neg", "psnr_y"]) == ("psnr_y", "vmaf_neg")
    with pytest.raises(UsageError, match="unknown metric"):
        expand_metrics(["psnr", "lpips"])
    with pytest.raises(UsageError):
        expand_metrics([""])


def test_plan_resize():
    assert plan_resize((720, 405), (720, 405), False) == "none"
    assert plan_resize((720, 405), (720, 406), False) == "crop"
    assert plan_resize((1920, 1080), (1920, 1088), False) == "crop"
    assert plan_resize((1280, 720), (640, 360), True) == "scale"
    with pytest.raises(MetricError, match="scale") as info:
        plan_resize((1280, 720), (640, 360), False)
    assert isinstance(info.value, GopflowError) and isinstance(info.value, ValueError)
    with pytest.raises(MetricError):
        plan_resize((720, 406), (720, 405), False)  # smaller is never padding


def test_psnr_from_mse():
    assert psnr_from_mse(0.0) == 100.0
    assert psnr_from_mse(255.0**2) == pytest.approx(0.0)
    assert psnr_from_mse(1.0, 1023) == pytest.approx(20 * math.log10(1023))


def _naive_ffmpeg_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """vf_ssim.c transcribed loop by loop: 8x8 windows at a step of 4, integer sums."""
    c1 = int(0.01 * 0.01 * 255 * 255 * 64 + 0.5)
    c2 = int(0.03 * 0.03 * 255 * 255 * 64 * 63 + 0.5)
    bh, bw = a.shape[0] // 4, a.shape[1] // 4
    total = 0.0
    for by in range(bh - 1):
        for bx in range(bw - 1):
            wa = a[4 * by : 4 * by + 8, 4 * bx : 4 * bx + 8].astype(int).ravel().tolist()
            wb = b[4 * by : 4 * by + 8, 4 * bx : 4 * bx + 8].astype(int).ravel().tolist()
            s1, s2 = sum(wa), sum(wb)
            ss = sum(x * x for x in wa) + sum(y * y for y in wb)
            s12 = sum(x * y for x, y in zip(wa, wb, strict=True))
            var = ss * 64 - s1 * s1 - s2 * s2
            cov = s12 * 64 - s1 * s2
            total += (2 * s1 * s2 + c1) * (2 * cov + c2) / ((s1 * s1 + s2 * s2 + c1) * (var + c2))
    return total / ((bh - 1) * (bw - 1))


def test_ssim_plane_matches_transcribed_ffmpeg_loop():
    rng = np.random.default_rng(7)
    ref = rng.integers(0, 256, size=(38, 45), dtype=np.uint8)  # remainders ignored, as ffmpeg
    noise = rng.integers(-20, 21, size=ref.shape)
    dist = np.clip(ref.astype(int) + noise, 0, 255).astype(np.uint8)
    assert ssim_plane(ref, dist) == pytest.approx(_naive_ffmpeg_ssim(ref, dist), abs=1e-12)
    assert ssim_plane(ref, ref) == pytest.approx(1.0)
    with pytest.raises(MetricError, match="too small"):
        ssim_plane(ref[:6, :6], dist[:6, :6])
