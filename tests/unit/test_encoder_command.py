"""The ffmpeg commands gopflow builds: closed GOPs, padding, rate control, colour, and the
other builders of :mod:`gopflow.media.ffmpeg`. Checked by option and value, not by order
(ffmpeg-python sorts options and writes filters as one ``-filter_complex`` graph)."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from gopflow.codecs.x26x import EncodeSettings, build_command, coded_size, encoder_failure
from gopflow.errors import EncoderError, EncoderRejectedError, UsageError
from gopflow.jobs.transcode import source_format
from gopflow.media.ffmpeg import (
    colour_options,
    concat_command,
    cut_command,
    parse_filter,
    raw_vmaf_command,
    refusal,
    restore_writer_command,
    rgb_writer_command,
    scene_detect_command,
    split_chain,
)
from gopflow.media.reader import feed_format, frame_bytes, yuv_colour
from gopflow.types import SourceFormat, VideoInfo

_FLAGS = {"-nostdin", "-hide_banner", "-y", "-an", "-sn", "-dn"}


@dataclass
class Parsed:
    """A command split the way ffmpeg reads it."""

    inputs: list[tuple[dict[str, str | None], str]] = field(default_factory=list)
    filters: list[tuple[str, list[str], dict[str, str]]] = field(default_factory=list)
    maps: list[str] = field(default_factory=list)
    options: dict[str, str | None] = field(default_factory=dict)
    metadata: list[str] = field(default_factory=list)
    output: str = ""
    globals: dict[str, str | None] = field(default_factory=dict)


def _graph_filters(graph: str) -> list[tuple[str, list[str], dict[str, str]]]:
    """Every filter of a graph, in order, without its pad labels."""
    filters = []
    chains, start, pos = [], 0, 0
    while pos < len(graph):
        if graph[pos] == "\\":
            pos += 1
        elif graph[pos] == ";":
            chains.append(graph[start:pos])
            start = pos + 1
        pos += 1
    chains.append(graph[start:])
    for chain in chains:
        for spec in split_chain(chain):
            while spec.startswith("["):
                spec = spec[spec.index("]") + 1:]
            while spec.endswith("]") and not spec.endswith("\\]"):
                spec = spec[: spec.rindex("[")]
            filters.append(parse_filter(spec))
    return filters


def parse(command: list[str]) -> Parsed:
    parsed = Parsed()
    pending: dict[str, str | None] = {}
    args, pos = command[1:], 0
    while pos < len(args):
        arg = args[pos]
        if arg in _FLAGS:
            (parsed.globals if parsed.output else pending)[arg] = None
            pos += 1
        elif arg == "-i":
            parsed.inputs.append((pending, args[pos + 1]))
            pending = {}
            pos += 2
        elif arg == "-filter_complex":
            parsed.filters += _graph_filters(args[pos + 1])
            pos += 2
        elif arg in ("-map", "-metadata"):
            (parsed.maps if arg == "-map" else parsed.metadata).append(args[pos + 1])
            pos += 2
        elif arg.startswith("-") and arg != "-":
            (parsed.globals if parsed.output else pending)[arg] = args[pos + 1]
            pos += 2
        else:
            assert not parsed.output, f"two outputs in {command}"
            parsed.output, parsed.options, pending = arg, pending, {}
            pos += 1
    return parsed


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
    assert command[0] == "ffmpeg"
    got = parse(command)
    (raw, path), = got.inputs
    assert path == "pipe:0" and raw["-f"] == "rawvideo" and raw["-pix_fmt"] == "yuv420p"
    assert raw["-s"] == "1280x720" and raw["-framerate"] == "30000/1001"
    assert raw["-color_range"] == "pc" and raw["-colorspace"] == "bt709"
    out = got.options
    assert out["-c:v"] == "libx264" and out["-crf"] == "18" and out["-threads"] == "1"
    assert out["-g"] == "60" and "open-gop=0" in (out["-x264-params"] or "").split(":")
    assert out["-fps_mode"] == "passthrough" and out["-pix_fmt"] == "yuv420p"
    assert out["-color_range"] == "pc" and out["-color_primaries"] == "bt709"
    assert out["-fflags"] == "+bitexact" and out["-flags:v"] == "+bitexact"
    assert out["-map_metadata"] == "-1" and out["-f"] == "mp4"
    assert {"-an", "-sn", "-dn"} <= set(out)
    assert got.output == "o.mp4" and got.filters == [] and got.maps == []
    assert "-force_key_frames" not in out
    assert {"-nostdin", "-y"} <= set(got.globals) and got.globals["-loglevel"] == "error"


def test_x265_bitrate_uses_vbv() -> None:
    settings = EncodeSettings(codec="x265", crf=None, bitrate_kbps=3000, threads=2)
    out = parse(build_command("ffmpeg", _source(), settings, "o.mp4")).options
    assert out["-c:v"] == "libx265" and out["-b:v"] == "3000k"
    assert out["-maxrate"] == "3000k" and out["-bufsize"] == "6000k" and "-crf" not in out
    params = (out["-x265-params"] or "").split(":")
    assert "open-gop=0" in params and "pools=2" in params and out["-tag:v"] == "hvc1"


def test_odd_source_is_padded_with_replicated_edges() -> None:
    settings = EncodeSettings(threads=3)
    got = parse(build_command("ffmpeg", _source(721, 405), settings, "o.mp4"))
    assert got.filters == [
        ("pad", ["722", "406", "0", "0"], {}),
        ("fillborders", [], {"right": "1", "bottom": "1", "mode": "smear"}),
    ]
    assert got.inputs[0][0]["-s"] == "721x405"
    # -vf ran on the encoder's threads; the -filter_complex graph is given the same count.
    assert got.globals["-filter_complex_threads"] == "3"
    assert len(got.maps) == 1 and got.maps[0].startswith("[")


def test_feed_format_keeps_plain_planar_sources() -> None:
    assert feed_format("yuvj420p", "yuv420p") == "yuv420p"
    assert feed_format("yuv444p", "yuv420p") == "yuv444p"
    assert feed_format("nv12", "yuv420p") == "yuv420p"
    got = parse(build_command("ffmpeg", _source(pix_fmt="yuv444p"), EncodeSettings(), "o.mp4"))
    assert got.inputs[0][0]["-pix_fmt"] == "yuv444p"
    assert got.filters == [("format", ["yuv420p"], {})]


def test_precoder_filters_run_first_and_replace_padding() -> None:
    pre = ["select='not(mod(n\\,2))'", "scale=264:216:flags=lanczos"]
    command = build_command("ffmpeg", _source(353, 287), EncodeSettings(), "o.mp4",
                            pre_filters=pre, input_path="/tmp/raw.yuv", in_band_headers=True,
                            keyframe_at=12)
    got = parse(command)
    assert got.filters == [
        ("select", ["not(mod(n,2))"], {}),
        ("scale", ["264", "216"], {"flags": "lanczos"}),
    ]
    assert got.inputs[0][1] == "/tmp/raw.yuv"
    assert "repeat-headers=1" in (got.options["-x264-params"] or "").split(":")
    assert got.options["-force_key_frames"] == "expr:eq(n,12)"


def test_unknown_codec_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        build_command("ffmpeg", _source(), EncodeSettings(codec="vp9"), "o.mp4")  # type: ignore[arg-type]


def test_cut_copies_the_first_frames_of_the_video() -> None:
    got = parse(cut_command("gop.mp4", 17, "cut.mp4", exe="ffmpeg"))
    assert got.inputs == [({}, "gop.mp4")] and got.maps == ["0:v:0"]
    assert got.options["-c"] == "copy" and got.options["-frames:v"] == "17"
    assert got.options["-f"] == "mp4" and got.options["-fflags"] == "+bitexact"
    assert got.output == "cut.mp4"


def test_concat_maps_audio_and_writes_tags_in_key_order() -> None:
    tags = {"B": "2", "A": "x=1"}
    got = parse(concat_command(
        "list.txt", "out.mp4", "mp4", video_offset=0.4, audio_source="src.mkv",
        audio=[(1, True), (3, False)], rotation=90, tags=tags, exe="ffmpeg",
    ))
    (concat, listing), (_, source) = got.inputs
    assert listing == "list.txt" and source == "src.mkv"
    assert concat == {"-f": "concat", "-safe": "0", "-itsoffset": "0.400000"}
    assert got.maps == ["0:v:0", "1:1", "1:3"]
    assert got.options["-c:v"] == "copy" and got.options["-c:a:0"] == "copy"
    assert got.options["-c:a:1"] == "aac" and got.options["-b:a:1"] == "192k"
    assert got.options["-metadata:s:v:0"] == "rotate=90"
    assert got.options["-movflags"] == "+faststart+use_metadata_tags"
    assert got.metadata == ["A=x=1", "B=2"] and got.output == "out.mp4"
    plain = parse(concat_command("list.txt", "out.mkv", "matroska", exe="ffmpeg"))
    assert len(plain.inputs) == 1 and plain.maps == ["0:v:0"]
    assert "-movflags" not in plain.options and "-itsoffset" not in plain.inputs[0][0]
    assert plain.metadata == [] and plain.options["-f"] == "matroska"


def test_scene_detection_escapes_the_listing_path() -> None:
    listing = "/tmp/odd: [dir],it's;/cuts.txt"
    got = parse(scene_detect_command("in.mp4", 2, 27.5, listing, exe="ffmpeg"))
    assert got.inputs[0][0] == {"-skip_loop_filter": "all", "-flags2": "+fast"}
    assert [name for name, _, _ in got.filters] == ["scale", "scdet", "metadata"]
    assert got.filters[0][2] == {"w": "min(320,iw)", "h": "-2", "flags": "fast_bilinear"}
    assert got.filters[1][2] == {"threshold": "27.5"}
    assert got.filters[2][2]["file"] == listing
    assert got.options["-f"] == "null" and got.output == "-"


def test_gop_vmaf_model_survives_escaping() -> None:
    got = parse(raw_vmaf_command(
        "src.yuv", width=353, height=287, fps=Fraction(25), pix_fmt="yuv420p",
        model_name="vmaf_neg", model_version="vmaf_v0.6.1neg", log_name="vmaf.json",
        threads=2, full_range=True, exe="ffmpeg",
    ))
    assert [path for _, path in got.inputs] == ["pipe:0", "src.yuv"]
    assert all(opts["-color_range"] == "pc" for opts, _ in got.inputs)
    *convert, (name, _, named) = got.filters
    assert [f[0] for f in convert] == ["setparams", "scale"] * 2
    assert name == "libvmaf" and named["model"] == "version=vmaf_v0.6.1neg:name=vmaf_neg"
    assert named["log_path"] == "vmaf.json" and named["n_threads"] == "2"


def test_writers() -> None:
    restore = parse(restore_writer_command(
        "r.mkv", ".mkv", width=640, height=480, fps=Fraction(30), pix_fmt="yuv420p",
        input_range="tv", colour={"colorspace": "bt709"}, audio_source="src.mp4",
        exe="ffmpeg",
    ))
    assert restore.inputs[0][0]["-color_range"] == "tv" and restore.maps == ["0:v", "1:a"]
    assert restore.options["-c:v"] == "ffv1" and restore.options["-level"] == "3"
    assert restore.options["-c:a"] == "copy" and restore.options["-colorspace"] == "bt709"
    rgb = parse(rgb_writer_command("d.mp4", ".mp4", width=353, height=287,
                                   fps=Fraction(30000, 1001), exe="ffmpeg"))
    assert rgb.inputs[0][0]["-pix_fmt"] == "rgb24"
    assert rgb.options["-c:v"] == "libx264rgb" and rgb.options["-qp"] == "0"
    assert rgb.options["-threads"] == "1" and rgb.options["-f"] == "mp4"


def _info(pix_fmt: str, color_range: str, color_space: str) -> VideoInfo:
    return VideoInfo(
        path="in.mkv", container="matroska,webm", stream_index=0, codec="ffv1", width=320,
        height=240, pix_fmt=pix_fmt, fps=Fraction(25), vfr=False, frame_count=25,
        duration_seconds=1.0, time_base=Fraction(1, 1000), start_seconds=0.0,
        container_start_seconds=0.0, color_range=color_range, color_space=color_space,
        color_primaries="bt709", color_trc="iec61966-2-1", rotation=0, read_mode="seek",
    )


@pytest.mark.parametrize("pix_fmt", ["gbrp", "bgr0", "rgb24", "pal8", "gbrp10le"])
def test_rgb_source_is_converted_and_tagged_as_bt709_yuv(pix_fmt: str) -> None:
    # An RGB source's matrix is gbr: libx264 refuses `-colorspace gbr` for YUV output.
    source = source_format(_info(pix_fmt, "pc", "gbr"))
    assert (source.color_space, source.color_range) == ("bt709", "tv")
    assert (source.color_primaries, source.color_trc) == ("bt709", "iec61966-2-1")
    got = parse(build_command("ffmpeg", source, EncodeSettings(), "o.mp4"))
    assert got.inputs[0][0]["-pix_fmt"] == "yuv420p"  # converted before the pipe
    for options in (got.inputs[0][0], got.options):
        assert options["-colorspace"] == "bt709" and options["-color_range"] == "tv"


def test_yuv_sources_keep_their_colour_but_never_an_rgb_matrix() -> None:
    assert yuv_colour("yuvj420p", "pc", "smpte170m") == ("pc", "smpte170m")
    assert yuv_colour("yuv420p", "tv", "gbr") == ("tv", "unknown")
    assert "colorspace" not in colour_options("tv", "gbr", "bt709", "bt709")
    assert colour_options("pc", "bt709", "unknown", "bt709") == {
        "color_range": "pc", "colorspace": "bt709", "color_trc": "bt709"}


def test_rgb_frames_are_converted_with_bt709_limited_range() -> None:
    red = av.VideoFrame.from_ndarray(np.tile(np.uint8([255, 0, 0]), (4, 4, 1)), format="rgb24")
    red.colorspace = 0  # tagged RGB, as decoded gbrp frames are
    luma = frame_bytes(red, "yuv420p")[0]
    assert luma == 63  # BT.709 limited: 16 + 219 * 0.2126; BT.601 would give 81


def test_x265_never_gets_primaries_it_refuses() -> None:
    source = SourceFormat(64, 48, Fraction(25), "yuv420p", "tv", "bt709", "jedec-p22", "bt709")
    x265 = parse(build_command("ffmpeg", source, EncodeSettings(codec="x265"), "o.mp4"))
    assert "-color_primaries" not in x265.options
    x264 = parse(build_command("ffmpeg", source, EncodeSettings(), "o.mp4"))
    assert x264.options["-color_primaries"] == "jedec-p22"


_REFUSED_LOG = """\
[libx264 @ 0x55abdf533480] [Eval @ 0x7ffdad62c6e0] Undefined constant or missing '(' in 'gbr'
[libx264 @ 0x55abdf533480] Unable to parse "colorspace" option value "gbr"
[libx264 @ 0x55abdf533480] Error setting option colorspace to value gbr.
[vost#0:0/libx264 @ 0x55abdf532880] Error applying encoder options: Invalid argument
Error opening output file /tmp/gopflow-enc-x/gop.mp4.
Error opening output files: Invalid argument
"""
_X265_LOG = """\
x265 [error]: Color Primaries must be unknown, bt709, bt470m, bt470bg, smpte170m
[libx265 @ 0x55c0843b7a00] Cannot open libx265 encoder.
[vost#0:0/libx265 @ 0x55c0843b6e00] [enc:libx265 @ 0x55c0843b7940] Error while opening encoder
[out#0/mp4 @ 0x55c0843b6080] Nothing was written into output file
"""


def test_an_encoder_refusing_its_settings_is_not_retryable(tmp_path: Path) -> None:
    assert refusal(_REFUSED_LOG) == 'Unable to parse "colorspace" option value "gbr"'
    assert refusal(_X265_LOG) == "x265 [error]: Color Primaries must be unknown, bt709, " \
        "bt470m, bt470bg, smpte170m"
    assert refusal("injected encoder crash\n") is None
    assert refusal("Error opening output file x.mp4.\nError opening output files: No space "
                   "left on device\n") is None
    log = tmp_path / "ffmpeg.log"
    log.write_text(_REFUSED_LOG)
    error = encoder_failure("libx264", "Error opening output files: Invalid argument", str(log))
    assert isinstance(error, EncoderRejectedError) and not isinstance(error, EncoderError)
    assert not error.resumable
    assert str(error) == 'libx264 refused the encode: Unable to parse "colorspace" option ' \
        'value "gbr"'
    log.write_text("Segmentation fault\n")
    assert type(encoder_failure("libx264", "exit 139", str(log))) is EncoderError
