"""The per-title convex hull and the rungs chosen along it (gopflow.quality.hull)."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest

from gopflow.errors import GopflowError, UsageError
from gopflow.quality.hull import (
    RatePoint,
    choose_rungs,
    hull_rate,
    hull_vmaf,
    upper_hull,
    winner_at,
)

# A synthetic title: each height saturates at its own quality limit; small pictures win at
# low bitrates, large ones at high bitrates (the shape real probes have).
LIMIT = {1080: 99.0, 720: 96.0, 540: 92.0, 360: 86.0}
SCALE = {1080: 1500.0, 720: 800.0, 540: 450.0, 360: 250.0}
WIDTH = {1080: 1920, 720: 1280, 540: 960, 360: 640}


def model(height: int, kbps: float) -> float:
    return LIMIT[height] * (1.0 - math.exp(-kbps / SCALE[height]))


def title(heights=(1080, 720, 540, 360), crfs=(13, 18, 23, 28, 33, 38, 43)) -> list[RatePoint]:
    points = []
    for height in heights:
        for crf in crfs:
            kbps = SCALE[height] * 3.0 * 2 ** ((18 - crf) / 6)
            points.append(RatePoint(WIDTH[height], height, crf, kbps, model(height, kbps)))
    return points


def test_upper_hull_is_concave_increasing_and_dominates_every_point():
    points = title()
    hull = upper_hull(points)
    rates = [p.kbps for p in hull]
    vmafs = [p.vmaf for p in hull]
    assert rates == sorted(rates) and len(set(rates)) == len(rates)
    assert vmafs == sorted(vmafs), "the hull stops at its best quality"
    assert hull[-1].vmaf == max(p.vmaf for p in points)
    slopes = [(b.vmaf - a.vmaf) / (b.kbps - a.kbps) for a, b in pairwise(hull)]
    assert all(s1 > s2 for s1, s2 in pairwise(slopes)), "strictly concave"
    for point in points:  # nothing lies above the hull within its range
        if hull[0].kbps <= point.kbps <= hull[-1].kbps:
            assert point.vmaf <= hull_vmaf(hull, point.kbps) + 1e-9
    assert {p.height for p in hull} >= {360, 1080}, "the hull crosses resolutions"


def test_upper_hull_drops_collinear_dominated_and_equal_rate_points():
    a = RatePoint(640, 360, 30, 100.0, 50.0)
    mid = RatePoint(640, 360, 28, 200.0, 60.0)  # on the line a-c
    c = RatePoint(640, 360, 26, 300.0, 70.0)
    below = RatePoint(960, 540, 30, 250.0, 55.0)
    same_rate_worse = RatePoint(960, 540, 29, 300.0, 65.0)
    past_best = RatePoint(1280, 720, 20, 400.0, 69.0)
    hull = upper_hull([past_best, c, below, mid, a, same_rate_worse])
    assert hull == (a, c)
    assert upper_hull([]) == ()
    assert hull_rate(hull, 60.0) == pytest.approx(200.0)
    assert hull_rate(hull, 40.0) == 100.0
    assert hull_rate(hull, 90.0) == 300.0


def test_winner_is_small_at_low_rates_and_large_at_high_rates():
    points = title()
    assert winner_at(points, 150.0)[0] == (640, 360)
    assert winner_at(points, 9000.0)[0] == (1920, 1080)
    size, vmaf, crf = winner_at(points, 2500.0)
    assert size == (1280, 720)  # 720p beats 1080p here (both were probed around it)
    assert model(720, 2500.0) > model(1080, 2500.0)
    assert vmaf == pytest.approx(model(720, 2500.0), abs=1.5)
    assert 13 < crf < 23


def test_ladder_spans_floor_to_vmaf_95_with_growing_pictures():
    ladder = choose_rungs(title(), source_height=1080, floor_kbps=200.0)
    rungs = ladder.rungs
    assert rungs[0].kbps == pytest.approx(200.0)
    assert rungs[-1].kbps == pytest.approx(hull_rate(ladder.hull, 95.0), rel=1e-3)
    assert rungs[-1].vmaf == pytest.approx(95.0, abs=1.0)
    ratios = [b.kbps / a.kbps for a, b in pairwise(rungs)]
    assert all(1.5 - 1e-6 <= r <= 2.0 + 1e-6 for r in ratios), ratios
    heights = [r.height for r in rungs]
    assert heights == sorted(heights) and heights[0] < heights[-1]
    assert all(r.vmaf < s.vmaf for r, s in pairwise(rungs))
    assert rungs[0].reason.startswith("bottom") and rungs[-1].reason.startswith("top")
    as_dict = ladder.to_dict()
    assert len(as_dict["rungs"]) == len(rungs) and len(as_dict["points"]) == len(title())


def test_ladder_never_upscales_the_source():
    ladder = choose_rungs(title(), source_height=720, floor_kbps=200.0)
    assert max(r.height for r in ladder.rungs) <= 720
    assert all(p.height <= 720 for p in ladder.hull)


def test_saturating_title_tops_out_near_its_best():
    ladder = choose_rungs(title(heights=(540, 360)), source_height=540, floor_kbps=150.0)
    best = ladder.hull[-1].vmaf
    assert best < 95
    assert ladder.rungs[-1].vmaf == pytest.approx(best - 0.5, abs=0.6)
    assert "within" in ladder.rungs[-1].reason


def test_rung_count_and_spacing_options():
    fixed = choose_rungs(title(), source_height=1080, floor_kbps=200.0, rungs=3)
    assert len(fixed.rungs) == 3
    crowded = choose_rungs(title(), source_height=1080, floor_kbps=2000.0, rungs=8)
    ratios = [b.kbps / a.kbps for a, b in pairwise(crowded.rungs)]
    assert len(crowded.rungs) < 8 and all(r >= 1.5 - 1e-6 for r in ratios)
    capped = choose_rungs(title(), source_height=1080, floor_kbps=200.0, max_kbps=1000.0)
    assert capped.rungs[-1].kbps == pytest.approx(1000.0)
    single = choose_rungs(title(), source_height=1080, floor_kbps=50000.0)
    assert len(single.rungs) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"source_height": 200},
        {"source_height": 1080, "min_ratio": 1.0},
        {"source_height": 1080, "min_ratio": 2.5, "max_ratio": 2.0},
        {"source_height": 1080, "rungs": 0},
        {"source_height": 1080, "floor_kbps": 0},
        {"source_height": 0},
    ],
)
def test_bad_requests_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        choose_rungs(title(), **kwargs)


def test_bad_points_are_refused():
    with pytest.raises(UsageError):
        RatePoint(640, 360, 23, 0.0, 80.0)
    with pytest.raises(GopflowError):
        RatePoint(640, 360, 23, 100.0, float("nan"))
    with pytest.raises(ValueError):
        RatePoint(0, 360, 23, 100.0, 80.0)
