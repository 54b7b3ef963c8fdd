"""Per-title convex hull and streaming-ladder rungs (after Netflix's per-title encoding).

Data flow: probe encodes of a title over a grid of (height, quantiser) -> :class:`RatePoint`
per encode (bitrate from the file's bytes, VMAF at the display size) -> :func:`upper_hull`:
the upper convex hull of (bitrate, VMAF) over every resolution, cut at its best quality ->
:func:`choose_rungs`: a top rung near the quality target (or where the title saturates), a
bottom rung at a floor bitrate, rungs between spaced geometrically in bitrate (neighbours
``min_ratio``..``max_ratio`` apart), each with the resolution whose own rate-quality curve is
highest at the rung's bitrate.

Pure Python and numpy: no encodes here (see :mod:`gopflow.quality.ladder_probe`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from gopflow.errors import UsageError


@dataclass(frozen=True)
class RatePoint:
    """One probe encode: ``width`` x ``height`` at quantiser ``crf``, ``kbps`` (from the
    encoded bytes) and ``vmaf`` (mean, at the source size)."""

    width: int
    height: int
    crf: float
    kbps: float
    vmaf: float

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise UsageError(f"a rate point needs a positive size, got {self.width}x{self.height}")
        if not (math.isfinite(self.kbps) and self.kbps > 0):
            raise UsageError(f"a rate point needs a positive finite bitrate, got {self.kbps}")
        if not math.isfinite(self.vmaf):
            raise UsageError(f"a rate point needs a finite VMAF, got {self.vmaf}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Rung:
    """One rendition of the ladder: encode at ``width`` x ``height`` for ``kbps`` on average;
    ``vmaf`` and ``crf`` are read off that resolution's probe curve at ``kbps`` (estimates,
    to be checked on the real encode); ``reason`` says why this rung is here."""

    width: int
    height: int
    kbps: float
    vmaf: float
    crf: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Ladder:
    """Every probe, the hull through them and the rungs chosen along it (lowest first)."""

    points: tuple[RatePoint, ...]
    hull: tuple[RatePoint, ...]
    rungs: tuple[Rung, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "points": [p.to_dict() for p in self.points],
            "hull": [p.to_dict() for p in self.hull],
            "rungs": [r.to_dict() for r in self.rungs],
        }


def _cross(o: RatePoint, a: RatePoint, b: RatePoint) -> float:
    return (a.kbps - o.kbps) * (b.vmaf - o.vmaf) - (a.vmaf - o.vmaf) * (b.kbps - o.kbps)


def upper_hull(points: Iterable[RatePoint]) -> tuple[RatePoint, ...]:
    """The upper convex hull of ``points`` in the (kbps, VMAF) plane, lowest bitrate first,
    ending at the best-quality point: every point on it is worth its bits (no other encode,
    nor a mix of two, gives more VMAF for the same bitrate). Collinear middle points are
    dropped; of points with equal bitrate only the best counts."""
    ordered = sorted(points, key=lambda p: (p.kbps, -p.vmaf, -p.height, p.crf))
    unique: list[RatePoint] = []
    for point in ordered:
        if not unique or point.kbps != unique[-1].kbps:
            unique.append(point)
    hull: list[RatePoint] = []
    for point in unique:  # Andrew's monotone chain, upper half (clockwise turns only)
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], point) >= 0:
            hull.pop()
        hull.append(point)
    if not hull:
        return ()
    best = max(range(len(hull)), key=lambda i: (hull[i].vmaf, -i))
    return tuple(hull[: best + 1])


def hull_vmaf(hull: Sequence[RatePoint], kbps: float) -> float:
    """The hull's VMAF at ``kbps`` (linear between vertices, flat beyond its ends)."""
    rates = np.array([p.kbps for p in hull])
    return float(np.interp(kbps, rates, [p.vmaf for p in hull]))


def hull_rate(hull: Sequence[RatePoint], vmaf: float) -> float:
    """The lowest bitrate at which the hull reaches ``vmaf`` (its end rate if never)."""
    for low, high in pairwise(hull):
        if high.vmaf >= vmaf:
            if low.vmaf >= vmaf:
                return low.kbps
            share = (vmaf - low.vmaf) / (high.vmaf - low.vmaf)
            return low.kbps + share * (high.kbps - low.kbps)
    return hull[0].kbps if hull[0].vmaf >= vmaf else hull[-1].kbps


def _curves(points: Iterable[RatePoint]) -> dict[tuple[int, int], tuple[RatePoint, ...]]:
    """Each resolution's own upper hull (its best rate-quality trade-offs)."""
    by_size: dict[tuple[int, int], list[RatePoint]] = {}
    for point in points:
        by_size.setdefault((point.width, point.height), []).append(point)
    return {size: upper_hull(group) for size, group in sorted(by_size.items())}


def winner_at(
    points: Iterable[RatePoint], kbps: float
) -> tuple[tuple[int, int], float, float]:
    """The resolution whose own curve (linear in log bitrate between its probes) gives the
    most VMAF at ``kbps``, with that VMAF and the interpolated CRF. A resolution counts only
    within the bitrates it was probed at; if none covers ``kbps``, the one probed nearest to
    it (in log bitrate) does. Ties go to the larger picture."""
    best: tuple[float, int, tuple[int, int], float, float] | None = None
    nearest: tuple[float, int, tuple[int, int], float, float] | None = None
    for size, curve in _curves(points).items():
        logs = np.log([p.kbps for p in curve])
        vmafs = [p.vmaf for p in curve]
        crfs = [p.crf for p in curve]
        x = math.log(kbps)
        vmaf = float(np.interp(x, logs, vmafs))
        crf = float(np.interp(x, logs, crfs))
        key = (vmaf, size[0] * size[1], size, vmaf, crf)
        covered = logs[0] - 1e-9 <= x <= logs[-1] + 1e-9
        if covered and (best is None or key[:2] > best[:2]):
            best = key
        distance = float(max(logs[0] - x, x - logs[-1], 0.0))
        near_key = (-distance, size[0] * size[1], size, vmaf, crf)
        if nearest is None or near_key[:2] > nearest[:2]:
            nearest = near_key
    chosen = best or nearest
    if chosen is None:
        raise UsageError("no rate points to choose a resolution from")
    return chosen[2], chosen[3], chosen[4]


def choose_rungs(
    points: Sequence[RatePoint],
    *,
    source_height: int,
    top_vmaf: float = 95.0,
    saturation_margin: float = 0.5,
    floor_kbps: float = 150.0,
    max_kbps: float | None = None,
    rungs: int | None = None,
    min_ratio: float = 1.5,
    max_ratio: float = 2.0,
) -> Ladder:
    """The ladder along the upper hull of ``points`` (probes taller than ``source_height``
    are left out: a rung never upscales).

    - Top rung: the lowest bitrate where the hull reaches ``top_vmaf``, or, for a title
      whose hull tops out lower, where it comes within ``saturation_margin`` of its best
      (the rest buys almost nothing); capped at ``max_kbps``.
    - Bottom rung: ``floor_kbps``, or the hull's lowest probe if that is higher (no
      extrapolation below what was measured).
    - Between: geometric in bitrate. ``rungs`` fixes the count (fewer if neighbours would
      come closer than ``min_ratio``); by default the fewest rungs whose neighbours are at
      most ``max_ratio`` apart.
    - Each rung takes the resolution that wins at its bitrate (:func:`winner_at`); where
      probe noise would make a higher rung smaller than the one below, the lower rung takes
      the smaller of the two sizes, so resolution never falls as bitrate rises.
    """
    if source_height < 1:
        raise UsageError(f"the source height must be positive, got {source_height}")
    if not 1.0 < min_ratio <= max_ratio:
        raise UsageError(f"need 1 < min_ratio <= max_ratio, got {min_ratio} and {max_ratio}")
    if rungs is not None and rungs < 1:
        raise UsageError(f"a ladder needs at least one rung, got {rungs}")
    if floor_kbps <= 0 or (max_kbps is not None and max_kbps <= 0):
        raise UsageError("floor and maximum bitrates must be positive")
    usable = tuple(p for p in points if p.height <= source_height)
    if not usable:
        raise UsageError(
            f"no probe encode at or below the source height {source_height}: nothing to "
            "build a ladder from"
        )
    hull = upper_hull(usable)
    best = hull[-1].vmaf
    goal = min(top_vmaf, best - saturation_margin)
    top = hull_rate(hull, goal)
    top_reason = (
        f"top: hull reaches VMAF {top_vmaf:g}" if goal == top_vmaf
        else f"top: hull within {saturation_margin:g} of its best ({best:.2f})"
    )
    if max_kbps is not None and top > max_kbps:
        top, top_reason = max_kbps, f"top: capped at {max_kbps:g} kbit/s"
    bottom = max(floor_kbps, hull[0].kbps)
    bottom_reason = (
        f"bottom: floor {floor_kbps:g} kbit/s" if bottom == floor_kbps
        else "bottom: lowest probe (above the floor)"
    )
    if bottom >= top:
        rates, reasons = [top], [top_reason + "; single rung (floor reaches the top)"]
    else:
        span = math.log(top / bottom)
        count = rungs if rungs is not None else math.ceil(span / math.log(max_ratio) - 1e-9) + 1
        count = max(1, min(count, math.floor(span / math.log(min_ratio) + 1e-9) + 1))
        if count == 1:
            rates, reasons = [top], [top_reason + "; single rung"]
        else:
            step = span / (count - 1)
            rates = [bottom * math.exp(step * i) for i in range(count)]
            rates[-1] = top
            ratio = math.exp(step)
            reasons = [bottom_reason]
            reasons += [f"{ratio:.2f}x the rung below"] * (count - 2)
            reasons.append(top_reason)
    chosen = [winner_at(usable, rate) for rate in rates]
    sizes = [size for size, _, _ in chosen]
    for i in range(len(sizes) - 2, -1, -1):
        if sizes[i][1] > sizes[i + 1][1]:
            sizes[i] = sizes[i + 1]
    out: list[Rung] = []
    for rate, reason, (size, vmaf, crf), kept in zip(rates, reasons, chosen, sizes, strict=True):
        if kept != size:
            curve = _curves(usable)[kept]
            logs = np.log([p.kbps for p in curve])
            vmaf = float(np.interp(math.log(rate), logs, [p.vmaf for p in curve]))
            crf = float(np.interp(math.log(rate), logs, [p.crf for p in curve]))
            reason += f"; {size[1]}p won here, kept at {kept[1]}p (no smaller picture higher up)"
        out.append(Rung(kept[0], kept[1], round(rate, 3), round(vmaf, 3), round(crf, 2), reason))
    return Ladder(points=tuple(points), hull=hull, rungs=tuple(out))
