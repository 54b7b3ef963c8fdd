"""Bjontegaard delta rate (BD-rate) and delta quality (BD-PSNR, BD-VMAF ...) of two RD curves.

Data flow: (rate, quality) points of an anchor and a test encoding -> validated (at least 4
points, finite positive rates, quality strictly increasing with rate) and sorted by rate ->
rate taken to the log domain -> each curve fitted, either with the classic least-squares
cubic polynomial (Bjontegaard, VCEG-M33) or with a piecewise cubic Hermite interpolant
through the points (``pchip``, the variant of the JVET/AOM common-test-condition sheets)
-> the fits integrated exactly over the interval both curves cover -> the difference of
the integrals divided by the interval's length.

- BD-rate: log-rate as a function of quality over the common quality interval; returned in
  percent, ``(exp(mean difference) - 1) * 100``. Negative: the test needs less rate for the
  same quality.
- BD-quality: quality as a function of log-rate over the common log-rate interval; returned
  in the quality's unit (dB for PSNR). Positive: the test is better at the same rate.

The log base does not change either result. Rates may be in any unit, the same for both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.interpolate import PchipInterpolator

from gopflow.errors import BdRateError

Method = Literal["cubic", "pchip"]
METHODS: tuple[Method, ...] = ("cubic", "pchip")
MIN_POINTS = 4


@dataclass(frozen=True)
class RdCurve:
    """A validated rate-quality curve, sorted by rate (``log_rates`` = natural log)."""

    rates: tuple[float, ...]
    quality: tuple[float, ...]

    @classmethod
    def from_points(
        cls, rates: Sequence[float], quality: Sequence[float], label: str = "curve"
    ) -> RdCurve:
        """Check and sort points; raise :class:`BdRateError` naming what is wrong."""
        r = np.asarray(rates, dtype=np.float64)
        q = np.asarray(quality, dtype=np.float64)
        if r.ndim != 1 or q.ndim != 1 or r.shape != q.shape:
            raise BdRateError(
                f"{label}: rates and quality must be two flat lists of the same length "
                f"(got shapes {r.shape} and {q.shape})"
            )
        if len(r) < MIN_POINTS:
            raise BdRateError(
                f"{label}: a Bjontegaard delta needs at least {MIN_POINTS} rate-quality "
                f"points per curve, got {len(r)}"
            )
        if not np.all(np.isfinite(r)) or np.any(r <= 0):
            raise BdRateError(f"{label}: rates must be finite and positive, got {r.tolist()}")
        if not np.all(np.isfinite(q)):
            raise BdRateError(f"{label}: quality values must be finite, got {q.tolist()}")
        order = np.argsort(r, kind="stable")
        r, q = r[order], q[order]
        if np.any(np.diff(r) <= 0):
            raise BdRateError(f"{label}: two points have the same rate: {r.tolist()}")
        drops = np.flatnonzero(np.diff(q) <= 0)
        if drops.size:
            i = int(drops[0])
            raise BdRateError(
                f"{label}: quality must increase with rate, but at rate {r[i + 1]:g} it is "
                f"{q[i + 1]:g}, not above {q[i]:g} at rate {r[i]:g} (points sorted by rate)"
            )
        return cls(tuple(r.tolist()), tuple(q.tolist()))

    @property
    def log_rates(self) -> np.ndarray:
        return np.log(np.asarray(self.rates))

    @property
    def quality_array(self) -> np.ndarray:
        return np.asarray(self.quality)


def _integral_cubic(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    # Polynomial.fit maps x to [-1, 1] first: the same least-squares cubic as np.polyfit,
    # better conditioned for PSNR-sized x values.
    antiderivative = np.polynomial.Polynomial.fit(x, y, 3).integ()
    return float(antiderivative(hi) - antiderivative(lo))


def _integral_pchip(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    return float(PchipInterpolator(x, y, extrapolate=False).integrate(lo, hi))


_INTEGRALS: Mapping[str, Callable[[np.ndarray, np.ndarray, float, float], float]] = {
    "cubic": _integral_cubic,
    "pchip": _integral_pchip,
}


def _mean_gap(
    anchor: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    method: str,
    axis: str,
) -> float:
    """Mean of ``test(x) - anchor(x)`` over the x interval both curves cover."""
    if method not in _INTEGRALS:
        raise BdRateError(f"unknown Bjontegaard method {method!r}; choose from {METHODS}")
    lo = max(float(anchor[0][0]), float(test[0][0]))
    hi = min(float(anchor[0][-1]), float(test[0][-1]))
    if not hi > lo:
        raise BdRateError(
            f"the curves' {axis} ranges do not overlap (anchor {anchor[0][0]:g}..."
            f"{anchor[0][-1]:g}, test {test[0][0]:g}...{test[0][-1]:g}): no Bjontegaard delta"
        )
    integral = _INTEGRALS[method]
    return (integral(*test, lo, hi) - integral(*anchor, lo, hi)) / (hi - lo)


def bd_rate(
    anchor_rates: Sequence[float],
    anchor_quality: Sequence[float],
    test_rates: Sequence[float],
    test_quality: Sequence[float],
    method: Method = "cubic",
) -> float:
    """Average rate difference of the test vs the anchor at equal quality, in percent."""
    anchor = RdCurve.from_points(anchor_rates, anchor_quality, "anchor")
    test = RdCurve.from_points(test_rates, test_quality, "test")
    gap = _mean_gap(
        (anchor.quality_array, anchor.log_rates),
        (test.quality_array, test.log_rates),
        method,
        "quality",
    )
    return (math.exp(gap) - 1.0) * 100.0


def bd_quality(
    anchor_rates: Sequence[float],
    anchor_quality: Sequence[float],
    test_rates: Sequence[float],
    test_quality: Sequence[float],
    method: Method = "cubic",
) -> float:
    """Average quality difference of the test vs the anchor at equal rate (BD-PSNR for PSNR)."""
    anchor = RdCurve.from_points(anchor_rates, anchor_quality, "anchor")
    test = RdCurve.from_points(test_rates, test_quality, "test")
    return _mean_gap(
        (anchor.log_rates, anchor.quality_array),
        (test.log_rates, test.quality_array),
        method,
        "log-rate",
    )


bd_psnr = bd_quality
