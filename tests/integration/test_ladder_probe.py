"""Probe encodes for the per-title hull on a real clip: real x264 encodes, real libvmaf at
the source size (gopflow.quality.ladder_probe)."""

from __future__ import annotations

import pytest

from conftest import media
from gopflow.errors import UsageError
from gopflow.quality.hull import choose_rungs
from gopflow.quality.ladder_probe import ladder_heights, probe_grid, scaled_width

pytestmark = pytest.mark.slow


def test_heights_and_widths():
    assert ladder_heights(540) == (540, 432, 360, 270, 216)
    assert ladder_heights(1080, (720, 1440, 360)) == (1080, 720, 360)
    assert ladder_heights(17, (16, 8)) == (16, 8)
    assert scaled_width(1920, 1080, 360) == 640
    assert scaled_width(960, 540, 270) == 480
    assert scaled_width(33, 17, 16) == 32
    assert scaled_width(720, 576, 216) == 270


def test_probe_grid_on_a_real_clip():
    clip = media("his_girl_friday_640x480.mp4")
    result = probe_grid(clip, [(0, 15), (90, 15)], codec="x264", heights=(240,),
                        crfs=(20, 34), preset="veryfast", threads=2)
    assert result.frames == 30
    assert result.encode_seconds > 0 and result.vmaf_seconds > 0
    points = {(p.height, p.crf): p for p in result.points}
    assert set(points) == {(480, 20.0), (480, 34.0), (240, 20.0), (240, 34.0)}
    assert {p.width for p in result.points} == {640, 320}
    for height in (480, 240):
        fine, coarse = points[(height, 20.0)], points[(height, 34.0)]
        assert fine.kbps > 1.5 * coarse.kbps
        assert fine.vmaf > coarse.vmaf + 3
    assert points[(480, 20.0)].vmaf > 85
    # Same CRF, quarter the pixels: fewer bits, less quality once upscaled to 640x480.
    assert points[(240, 20.0)].kbps < points[(480, 20.0)].kbps
    assert points[(240, 20.0)].vmaf < points[(480, 20.0)].vmaf
    ladder = choose_rungs(result.points, source_height=480, floor_kbps=50)
    assert all(r.height <= 480 for r in ladder.rungs)


def test_the_walk_measures_part_of_the_grid_and_the_same_points():
    """Given the ladder's floor and top, only the points the ladder can use are encoded;
    each is the full grid's point, and the rungs chosen are the same."""
    clip = media("his_girl_friday_640x480.mp4")
    args = dict(codec="x264", heights=(360, 240), crfs=(16, 21, 26, 31, 37),
                preset="veryfast", threads=1, workers=2)
    full = probe_grid(clip, [(0, 15), (90, 15)], **args)
    walk = probe_grid(clip, [(0, 15), (90, 15)], floor_kbps=150, top_vmaf=95, **args)
    assert len(full.points) == 15
    assert 0 < len(walk.points) < len(full.points)
    assert set(walk.points) <= set(full.points)
    again = probe_grid(clip, [(0, 15), (90, 15)], floor_kbps=150, top_vmaf=95, **args)
    assert again.points == walk.points
    for points in (full.points, walk.points):
        assert min(p.kbps for p in points if p.height == 480) < 150  # the floor, bracketed
    chosen = [choose_rungs(r.points, source_height=480).rungs for r in (full, walk)]
    assert [(r.height, r.kbps) for r in chosen[0]] == [(r.height, r.kbps) for r in chosen[1]]


def test_probe_grid_refuses_bad_requests():
    clip = media("his_girl_friday_640x480.mp4")
    with pytest.raises(UsageError, match="outside"):
        probe_grid(clip, [(180, 20)])
    with pytest.raises(UsageError, match="codec"):
        probe_grid(clip, codec="vp9")  # type: ignore[arg-type]
