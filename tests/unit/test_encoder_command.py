"""The ffmpeg command built for a GOP: closed GOPs, padding, rate control, colour."""

from __future__ import annotations

from fractions import Fraction

import pytest

from gopflow.codecs.x26x import build_command, coded_size
from gopflow.errors import UsageError
from gopflow.media.reader import feed_format
from gopflow.types import EncodeSettings, SourceFormat


def _source(width: int = 1280, height: int = 720, pix_fmt: str = "yuv420p") -> SourceFormat:
    return SourceFormat(width, height, Fraction(30000, 1001), pix_fmt, "pc", "bt709",
                        "bt709", "bt709")


def test_coded_size_pads_only_what_subsampling_needs() -> None:
    assert coded_size(721, 405, "yuv420p") == (722, 406)
    assert coded_size(721, 405, "yuv422p") == (722, 405)
    assert coded_size(721, 405, "yuv444p") == (721, 405)
    assert coded_size(1280, 720, "yuv420p10le") == (1280, 720)


def test_x264_command_is_closed_gop_with_fixed_threads() -> None:
    command = build_command("ffmpeg", _source(), EncodeSettings(crf=18, keyint=60), "o.mp4")
    joined = " ".join(command)
    assert "-c:v libx264" in joined and "-crf 18" in joined and "-threads 1" in joined
    assert "open-gop=0" in joined and "-g 60" in joined
    assert "-framerate 30000/1001" in joined
    assert "-color_range pc" in joined and "-colorspace bt709" in joined
    assert "+bitexact" in joined and "-vf" not in command


def test_x265_bitrate_uses_vbv() -> None:
    settings = EncodeSettings(codec="x265", crf=None, bitrate_kbps=3000, threads=2)
    joined = " ".join(build_command("ffmpeg", _source(), settings, "o.mp4"))
    assert "-c:v libx265" in joined and "-b:v 3000k" in joined
    assert "-maxrate 3000k" in joined and "-bufsize 6000k" in joined
    assert "open-gop=0" in joined and "pools=2" in joined and "hvc1" in joined


def test_odd_source_is_padded_with_replicated_edges() -> None:
    command = build_command("ffmpeg", _source(721, 405), EncodeSettings(), "o.mp4")
    chain = command[command.index("-vf") + 1]
    assert chain == "pad=722:406:0:0,fillborders=right=1:bottom=1:mode=smear"
    assert command[command.index("-s") + 1] == "721x405"


def test_feed_format_keeps_plain_planar_sources() -> None:
    assert feed_format("yuvj420p", "yuv420p") == "yuv420p"
    assert feed_format("yuv444p", "yuv420p") == "yuv444p"
    assert feed_format("nv12", "yuv420p") == "yuv420p"
    command = build_command("ffmpeg", _source(pix_fmt="yuv444p"), EncodeSettings(), "o.mp4")
    assert command[command.index("-vf") + 1] == "format=yuv420p"


def test_unknown_codec_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        build_command("ffmpeg", _source(), EncodeSettings(codec="vp9"), "o.mp4")  # type: ignore[arg-type]
