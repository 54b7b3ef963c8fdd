"""A ladder's probe and rung encodes share one settings type and one option builder
(gopflow.codecs.x26x.encoder_options): closed GOPs, fixed threads, capped CRF."""

from __future__ import annotations

import pytest

from gopflow.codecs.x26x import EncodeSettings, encoder_options
from gopflow.errors import UsageError


def test_every_codec_has_closed_gops_and_fixed_threads():
    x264 = encoder_options(EncodeSettings(codec="x264", crf=23, threads=2, keyint=60))
    assert x264["c:v"] == "libx264" and "open-gop=0" in x264["x264-params"]
    assert (x264["threads"], x264["g"], x264["crf"]) == ("2", "60", "23")
    x265 = encoder_options(EncodeSettings(codec="x265", crf=28))
    assert x265["tag:v"] == "hvc1" and "open-gop=0" in x265["x265-params"]
    av1 = encoder_options(EncodeSettings(codec="svtav1", preset="8", crf=35, threads=3))
    assert av1["c:v"] == "libsvtav1" and av1["preset"] == "8"
    assert "lp=3" in av1["svtav1-params"] and "irefresh-type=2" in av1["svtav1-params"]
    named = encoder_options(EncodeSettings(codec="svtav1", preset="veryfast", crf=35))
    assert named["preset"] == "10"


def test_rate_control_modes():
    capped = encoder_options(EncodeSettings(codec="x264", crf=26, maxrate_kbps=800))
    assert (capped["crf"], capped["maxrate"], capped["bufsize"]) == ("26", "800k", "1600k")
    vbv = encoder_options(EncodeSettings(codec="x265", bitrate_kbps=1000, maxrate_kbps=1500))
    assert (vbv["b:v"], vbv["maxrate"], vbv["bufsize"]) == ("1000k", "1500k", "3000k")
    # SVT-AV1 refuses a cap outside CRF mode: an average bitrate is plain VBR.
    av1 = encoder_options(EncodeSettings(codec="svtav1", bitrate_kbps=500, maxrate_kbps=750))
    assert av1["b:v"] == "500k" and "maxrate" not in av1 and "crf" not in av1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"codec": "vp9", "crf": 30},
        {"codec": "x264", "crf": 20, "bitrate_kbps": 500},
        {"codec": "x264", "crf": 60},
        {"codec": "svtav1", "crf": 70},
        {"codec": "svtav1", "preset": "14"},
        {"codec": "x264", "bitrate_kbps": -5},
        {"codec": "x264", "crf": 20, "threads": 0},
    ],
)
def test_bad_settings_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        EncodeSettings(**kwargs)
