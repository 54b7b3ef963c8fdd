"""GOP planning: coverage, limits, scene alignment and timestamps."""

from __future__ import annotations

import itertools
import random

import pytest

from gopflow.errors import UsageError
from gopflow.pipeline.plan import GopPlanner, plan_gops


def _check_cover(gops, frame_count):  # type: ignore[no-untyped-def]
    assert gops[0].start_frame == 0
    for before, after in itertools.pairwise(gops):
        assert after.start_frame == before.end_frame
    assert gops[-1].end_frame == frame_count
    assert [g.index for g in gops] == list(range(len(gops)))


def test_fixed_length_without_cuts() -> None:
    gops = plan_gops(300, max_frames=60, min_frames=15)
    _check_cover(gops, 300)
    assert [g.frame_count for g in gops] == [60] * 5


def test_cuts_start_gops() -> None:
    gops = plan_gops(300, max_frames=60, min_frames=15, cuts=[100, 130, 260])
    _check_cover(gops, 300)
    starts = [g.start_frame for g in gops]
    assert {100, 130, 260} <= set(starts)
    assert all(g.scene_cut for g in gops if g.start_frame in (0, 100, 130, 260))
    assert not any(g.scene_cut for g in gops if g.start_frame not in (0, 100, 130, 260))


def test_cut_too_close_to_start_is_merged() -> None:
    gops = plan_gops(200, max_frames=60, min_frames=15, cuts=[5, 70])
    _check_cover(gops, 200)
    assert 5 not in [g.start_frame for g in gops]
    assert 70 in [g.start_frame for g in gops]


def test_short_tail_is_balanced() -> None:
    gops = plan_gops(125, max_frames=60, min_frames=15)
    _check_cover(gops, 125)
    assert min(g.frame_count for g in gops) >= 15
    assert max(g.frame_count for g in gops) <= 60


def test_single_short_video_is_one_gop() -> None:
    gops = plan_gops(7, max_frames=60, min_frames=15)
    assert [(g.start_frame, g.frame_count) for g in gops] == [(0, 7)]


def test_timestamps_become_start_pts() -> None:
    stamps = [i * 512 + 1000 for i in range(130)]
    gops = plan_gops(130, max_frames=50, min_frames=10, timestamps=stamps)
    assert [g.start_pts for g in gops] == [stamps[g.start_frame] for g in gops]


@pytest.mark.parametrize("seed", range(20))
def test_random_plans_respect_limits(seed: int) -> None:
    rng = random.Random(seed)
    frames = rng.randint(1, 2000)
    max_frames = rng.randint(10, 120)
    min_frames = rng.randint(1, max_frames // 2)
    cuts = sorted(rng.sample(range(1, max(2, frames)), k=min(frames - 1, rng.randint(0, 40))))
    gops = plan_gops(frames, max_frames, min_frames, cuts)
    _check_cover(gops, frames)
    assert all(g.frame_count <= max_frames for g in gops)
    if frames >= min_frames:
        assert all(g.frame_count >= min_frames for g in gops)
    accepted = [c for c in cuts if c <= frames - min_frames]
    starts = {g.start_frame for g in gops}
    # every cut far enough from its neighbours starts a GOP
    for cut in accepted:
        near = [c for c in accepted if c != cut and abs(c - cut) < min_frames]
        if not near and cut >= min_frames:
            assert cut in starts, (cut, sorted(starts))


def test_bad_arguments() -> None:
    with pytest.raises(UsageError):
        plan_gops(0, 60, 15)
    with pytest.raises(UsageError):
        plan_gops(10, 0, 1)


@pytest.mark.parametrize("seed", range(30))
def test_streamed_plan_equals_the_whole_plan(seed: int) -> None:
    """Fed a few scanned frames at a time (cuts below the scanned count only), the planner
    gives out every GOP once it is certain, and the GOPs are those of the whole plan."""
    rng = random.Random(seed)
    frames = rng.randint(1, 1500)
    max_frames = rng.randint(5, 90)
    min_frames = rng.randint(1, max_frames)
    cuts = sorted(set(rng.sample(range(1, max(2, frames)), k=min(frames - 1, rng.randint(0, 60)))))
    whole = plan_gops(frames, max_frames, min_frames, cuts)
    planner = GopPlanner(frames, max_frames, min_frames)
    streamed, scanned, given = [], 0, 0
    while scanned < frames:
        scanned = min(frames, scanned + rng.randint(1, 40))
        new = [c for c in cuts[given:] if c < scanned]
        given += len(new)
        batch = planner.advance(scanned, new)
        streamed += batch
        # nothing is given out that the whole plan does not have
        assert streamed == whole[: len(streamed)]
    assert planner.done and streamed == whole
