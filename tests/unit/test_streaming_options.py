"""Ladder encoder options (gopflow.codecs.streaming)."""

from __future__ import annotations

import pytest

from gopflow.codecs.streaming import StreamingEncode
from gopflow.errors import UsageError


def test_every_codec_has_closed_gops_without_scene_cut_keyframes():
    x264 = StreamingEncode(codec="x264", crf=23, threads=2).options()
    assert x264["c:v"] == "libx264" and "scenecut=0" in x264["x264-params"]
    assert "open-gop=0" in x264["x264-params"] and x264["threads"] == "2"
    x265 = StreamingEncode(codec="x265", crf=28).options()
    assert x265["tag:v"] == "hvc1" and "scenecut=0" in x265["x265-params"]
    av1 = StreamingEncode(codec="svtav1", crf=35, threads=3).options()
    assert av1["c:v"] == "libsvtav1" and av1["preset"] == "8"
    assert "scd=0" in av1["svtav1-params"] and "lp=3" in av1["svtav1-params"]


def test_rate_control_modes():
    vbr = StreamingEncode(codec="x264", kbps=1000).options()
    assert (vbr["b:v"], vbr["maxrate"], vbr["bufsize"]) == ("1000k", "1500k", "3000k")
    assert "crf" not in vbr
    capped = StreamingEncode(codec="x265", crf=26, maxrate_kbps=800).options()
    assert (capped["crf"], capped["maxrate"], capped["bufsize"]) == ("26", "800k", "1600k")
    av1 = StreamingEncode(codec="svtav1", kbps=500).options()
    assert av1["b:v"] == "500k" and "maxrate" not in av1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"codec": "vp9", "crf": 30},
        {"codec": "x264"},
        {"codec": "x264", "crf": 20, "kbps": 500},
        {"codec": "x264", "crf": 60},
        {"codec": "svtav1", "crf": 0},
        {"codec": "svtav1", "crf": 30, "preset": "medium"},
        {"codec": "x264", "kbps": -5},
        {"codec": "x264", "crf": 20, "threads": 0},
    ],
)
def test_bad_settings_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        StreamingEncode(**kwargs)
