"""Bjontegaard deltas against cases with known answers and an independent implementation.

The independent implementation below shares no code with ``gopflow.quality.bd``: it fits
with ``numpy.polyfit`` on the raw axis (gopflow uses ``Polynomial.fit`` on a mapped domain)
or ``scipy.interpolate.pchip_interpolate`` (gopflow integrates the ``PchipInterpolator``
exactly), and integrates with the trapezoid rule on a dense grid (gopflow integrates the
fitted cubics analytically).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.interpolate import pchip_interpolate

from gopflow.errors import BdRateError, GopflowError
from gopflow.quality.bd import bd_psnr, bd_quality, bd_rate

METHODS = ("cubic", "pchip")

# An x264-like RD curve (kbit/s, dB): four QPs, and a six-point one for the least-squares case.
ANCHOR_R = [310.0, 560.0, 1020.0, 1890.0]
ANCHOR_Q = [32.1, 34.6, 37.0, 39.2]
ANCHOR6_R = [180.0, 310.0, 560.0, 1020.0, 1890.0, 3400.0]
ANCHOR6_Q = [29.8, 32.1, 34.6, 37.0, 39.2, 41.0]
# A second pair (kbit/s, dB), listed from high to low rate on purpose; B needs more rate.
CLASSIC_A = ([686.76, 309.58, 157.11, 85.95], [40.28, 37.18, 34.24, 31.42])
CLASSIC_B = ([893.34, 407.80, 204.93, 112.75], [40.39, 37.21, 34.17, 31.24])


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)


def _reference_gap(xa, ya, xt, yt, method: str, samples: int = 200_001) -> float:
    """Mean of test - anchor over the common x interval: dense grid + trapezoid rule."""
    xa, ya, xt, yt = map(np.asarray, (xa, ya, xt, yt))
    lo, hi = max(xa.min(), xt.min()), min(xa.max(), xt.max())
    grid = np.linspace(lo, hi, samples)
    if method == "cubic":
        va = np.polyval(np.polyfit(xa, ya, 3), grid)
        vt = np.polyval(np.polyfit(xt, yt, 3), grid)
    else:
        ia, it = np.argsort(xa), np.argsort(xt)
        va = pchip_interpolate(xa[ia], ya[ia], grid)
        vt = pchip_interpolate(xt[it], yt[it], grid)
    return (_trapezoid(vt, grid) - _trapezoid(va, grid)) / (hi - lo)


def reference_bd_rate(ra, qa, rt, qt, method: str) -> float:
    gap = _reference_gap(qa, np.log10(ra), qt, np.log10(rt), method)
    return (10.0**gap - 1.0) * 100.0


def reference_bd_quality(ra, qa, rt, qt, method: str) -> float:
    return _reference_gap(np.log10(ra), qa, np.log10(rt), qt, method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("points", [(ANCHOR_R, ANCHOR_Q), (ANCHOR6_R, ANCHOR6_Q)])
def test_rate_scaled_by_0_9_is_minus_10_percent(method, points):
    rates, quality = points
    test_rates = [0.9 * r for r in rates]
    assert bd_rate(rates, quality, test_rates, quality, method) == pytest.approx(-10.0, abs=1e-9)
    # ... and at equal rate the anchor is worse: the test's BD-quality is positive.
    assert bd_quality(rates, quality, test_rates, quality, method) > 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("offset", [0.5, -1.25])
def test_constant_quality_offset_is_the_bd_quality(method, offset):
    shifted = [q + offset for q in ANCHOR6_Q]
    got = bd_quality(ANCHOR6_R, ANCHOR6_Q, ANCHOR6_R, shifted, method)
    assert got == pytest.approx(offset, abs=1e-9)
    assert bd_psnr is bd_quality


@pytest.mark.parametrize("method", METHODS)
def test_identical_curves_give_zero(method):
    assert bd_rate(ANCHOR_R, ANCHOR_Q, ANCHOR_R, ANCHOR_Q, method) == pytest.approx(0, abs=1e-9)
    assert bd_quality(ANCHOR_R, ANCHOR_Q, ANCHOR_R, ANCHOR_Q, method) == pytest.approx(
        0, abs=1e-9
    )


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "anchor,test",
    [
        (CLASSIC_A, CLASSIC_B),
        (
            (ANCHOR6_R, ANCHOR6_Q),
            ([170, 300, 520, 990, 1800, 3300], [29.5, 32.2, 34.4, 37.1, 39.0, 41.2]),
        ),
    ],
)
def test_agrees_with_independent_implementation(method, anchor, test):
    ra, qa = anchor
    rt, qt = test
    expected_rate = reference_bd_rate(ra, qa, rt, qt, method)
    expected_quality = reference_bd_quality(ra, qa, rt, qt, method)
    assert bd_rate(ra, qa, rt, qt, method) == pytest.approx(expected_rate, abs=1e-6)
    assert bd_quality(ra, qa, rt, qt, method) == pytest.approx(expected_quality, abs=1e-8)
    # Swapping the curves negates the mean log-rate gap.
    swapped = bd_rate(rt, qt, ra, qa, method)
    assert (1 + swapped / 100) * (1 + expected_rate / 100) == pytest.approx(1.0, abs=1e-9)


def test_worse_curve_costs_rate():
    """B needs more rate than A at every quality: positive BD-rate, negative BD-PSNR."""
    cubic = bd_rate(*CLASSIC_A, *CLASSIC_B, "cubic")
    pchip = bd_rate(*CLASSIC_A, *CLASSIC_B, "pchip")
    assert cubic > 0 and pchip > 0
    assert math.isclose(cubic, pchip, abs_tol=1.0)  # the two fits differ only a little
    assert bd_quality(*CLASSIC_A, *CLASSIC_B) < 0


@pytest.mark.parametrize(
    "rates,quality,message",
    [
        ([100, 200, 400], [30, 33, 36], "at least 4"),
        ([100, 200, 400, 800], [30, 33, 36], "same length"),
        ([100, 200, float("nan"), 800], [30, 33, 36, 39], "finite and positive"),
        ([0, 200, 400, 800], [30, 33, 36, 39], "finite and positive"),
        ([-100, 200, 400, 800], [30, 33, 36, 39], "finite and positive"),
        ([100, 200, 400, 800], [30, 33, float("nan"), 39], "quality values must be finite"),
        ([100, 200, 200, 800], [30, 33, 34, 39], "same rate"),
        ([100, 200, 400, 800], [30, 34, 33, 39], "quality must increase with rate"),
    ],
)
def test_bad_points_raise_clear_errors(rates, quality, message):
    for func in (bd_rate, bd_quality):
        with pytest.raises(BdRateError, match=message) as info:
            func(ANCHOR_R, ANCHOR_Q, rates, quality)
        assert isinstance(info.value, GopflowError)
        assert isinstance(info.value, ValueError)


def test_disjoint_curves_raise():
    far_r = [r * 100 for r in ANCHOR_R]
    far_q = [q + 20 for q in ANCHOR_Q]
    with pytest.raises(BdRateError, match="quality ranges do not overlap"):
        bd_rate(ANCHOR_R, ANCHOR_Q, far_r, far_q)
    with pytest.raises(BdRateError, match="log-rate ranges do not overlap"):
        bd_quality(ANCHOR_R, ANCHOR_Q, far_r, far_q, "pchip")


def test_unknown_method():
    with pytest.raises(BdRateError, match="unknown Bjontegaard method"):
        bd_rate(ANCHOR_R, ANCHOR_Q, ANCHOR_R, ANCHOR_Q, "linear")  # type: ignore[arg-type]
