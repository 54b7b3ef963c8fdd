"""x264/x265 hand-off through the ffmpeg CLI.

Data flow: decoded frames -> packed planar bytes on ffmpeg's stdin (``-f rawvideo``) ->
[pad odd sizes to even, edge pixels replicated] -> libx264/libx265 -> an MP4 segment in a
temporary file -> bytes. Every GOP is a separate encode, so its first frame is an IDR
(x264) / IDR (x265 with ``open-gop=0``) picture and the GOP is closed. Settings are
identical for every GOP and include the thread count, so output is byte-identical
wherever a GOP runs.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from gopflow.errors import EncoderError, UsageError
from gopflow.media.ffmpeg import feed_process, find_ffmpeg
from gopflow.media.reader import feed_format, frame_bytes
from gopflow.types import EncodeSettings, SourceFormat

ENCODER_NAMES = {"x264": "libx264", "x265": "libx265"}
PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast",
    "medium", "slow", "slower", "veryslow", "placebo",
)
# Chroma subsampling (log2 of the divisor) per output pixel format family.
_SUBSAMPLING = {"420": (1, 1), "422": (1, 0), "444": (0, 0)}


def coded_size(width: int, height: int, pix_fmt: str) -> tuple[int, int]:
    """The size actually encoded: 4:2:0 needs even width and height, 4:2:2 an even width.

    Odd sources are padded by one replicated row/column (documented in the README).
    """
    sub_x, sub_y = next((v for k, v in _SUBSAMPLING.items() if k in pix_fmt), (0, 0))
    return width + (width % 2 if sub_x else 0), height + (height % 2 if sub_y else 0)


def colour_args(source: Any) -> list[str]:
    """ffmpeg colour options for anything with color_range/space/primaries/trc fields."""
    args = []
    for option, value in (
        ("-color_range", source.color_range),
        ("-colorspace", source.color_space),
        ("-color_primaries", source.color_primaries),
        ("-color_trc", source.color_trc),
    ):
        if value and value != "unknown":
            args += [option, value]
    return args


def _rate_args(settings: EncodeSettings) -> list[str]:
    if settings.bitrate_kbps:
        maxrate = settings.maxrate_kbps or settings.bitrate_kbps
        bufsize = settings.bufsize_kbps or 2 * maxrate
        return [
            "-b:v", f"{settings.bitrate_kbps}k",
            "-maxrate", f"{maxrate}k",
            "-bufsize", f"{bufsize}k",
        ]
    crf = 23.0 if settings.crf is None else settings.crf
    return ["-crf", f"{crf:g}"]


def _codec_args(settings: EncodeSettings, in_band_headers: bool) -> list[str]:
    threads = max(1, settings.threads)
    # In-band parameter sets let one stream change resolution from GOP to GOP.
    repeat = ":repeat-headers=1" if in_band_headers else ""
    if settings.codec == "x264":
        return [
            "-c:v", "libx264",
            "-preset", settings.preset,
            "-threads", str(threads),
            "-g", str(settings.keyint),
            "-x264-params", f"open-gop=0:sliced-threads=0{repeat}",
        ]
    if settings.codec == "x265":
        params = [
            f"keyint={settings.keyint}",
            "open-gop=0",
            "forced-idr=1",
            f"pools={threads}",
            f"frame-threads={min(threads, 4)}",
            "log-level=error",
        ]
        if in_band_headers:
            params.append("repeat-headers=1")
        return [
            "-c:v", "libx265",
            "-preset", settings.preset,
            "-x265-params", ":".join(params),
            "-tag:v", "hvc1",
        ]
    raise UsageError(f"unknown codec {settings.codec!r}; choose x264 or x265")


def build_command(
    ffmpeg: str,
    source: SourceFormat,
    settings: EncodeSettings,
    output: str,
    pre_filters: Sequence[str] = (),
    input_path: str = "pipe:0",
    in_band_headers: bool = False,
    keyframe_at: int | None = None,
) -> list[str]:
    """The ffmpeg command that encodes raw frames (stdin, or a raw file) to an MP4 segment.

    ``pre_filters`` (e.g. a precoder's down-sampling) run before padding and conversion;
    timestamps pass through untouched, so dropped frames leave gaps the decoder fills.
    """
    in_fmt = feed_format(source.pix_fmt, settings.pix_fmt)
    filters = list(pre_filters)
    width, height = coded_size(source.width, source.height, settings.pix_fmt)
    if any(f.startswith("scale=") for f in filters):
        # A precoder's scaler already chose an even coded size.
        width, height = source.width, source.height
    if (width, height) != (source.width, source.height):
        pad_x, pad_y = width - source.width, height - source.height
        filters.append(f"pad={width}:{height}:0:0")
        filters.append(f"fillborders=right={pad_x}:bottom={pad_y}:mode=smear")
    if in_fmt != settings.pix_fmt:
        filters.append(f"format={settings.pix_fmt}")
    colour = colour_args(source)
    command = [
        ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", in_fmt,
        "-s", f"{source.width}x{source.height}",
        "-framerate", f"{source.fps.numerator}/{source.fps.denominator}",
        *colour,
        "-i", input_path,
        "-an", "-sn", "-dn",
    ]
    if filters:
        command += ["-vf", ",".join(filters)]
    if keyframe_at is not None:
        # An IDR where the GOP ends: frames after it (look-ahead context) never become
        # references for the GOP's own frames, so the stream can be cut there.
        command += ["-force_key_frames", f"expr:eq(n,{keyframe_at})"]
    command += [
        "-fps_mode", "passthrough",
        *_codec_args(settings, in_band_headers),
        *_rate_args(settings),
        "-pix_fmt", settings.pix_fmt,
        *colour,
        "-map_metadata", "-1",
        "-fflags", "+bitexact", "-flags:v", "+bitexact",
        "-f", "mp4", output,
    ]
    return command


class FfmpegEncoder:
    """Runs libx264/libx265 in ffmpeg."""

    def __init__(self, settings: EncodeSettings) -> None:
        if settings.codec not in ENCODER_NAMES:
            raise UsageError(f"unknown codec {settings.codec!r}; choose x264 or x265")
        self.settings = settings

    def encode_gop(
        self, frames: Iterable[Any], source: SourceFormat, keep: int | None = None
    ) -> bytes:
        """Encode ``frames``; with ``keep``, frames after the first ``keep`` are look-ahead
        context only: the encoder sees them (x264's lookahead and MB-tree plan the GOP's end
        as in one long encode), an IDR is forced at ``keep`` and the segment is cut there."""
        tool = find_ffmpeg()
        tool.require(encoders=[ENCODER_NAMES[self.settings.codec]])
        in_fmt = feed_format(source.pix_fmt, self.settings.pix_fmt)
        fed = 0

        def payload() -> Iterator[bytes]:
            nonlocal fed
            for frame in frames:
                fed += 1
                yield frame_bytes(frame, in_fmt)

        with tempfile.TemporaryDirectory(prefix="gopflow-enc-") as scratch:
            output = os.path.join(scratch, "gop.mp4")
            log_path = os.path.join(scratch, "ffmpeg.log")
            command = build_command(tool.path, source, self.settings, output, keyframe_at=keep)
            code, reason = feed_process(command, payload(), log_path)
            if code != 0 or not os.path.exists(output):
                raise EncoderError(f"{ENCODER_NAMES[self.settings.codec]} failed: {reason}")
            if keep is not None and fed > keep:
                output = _cut(tool.path, output, keep, os.path.join(scratch, "cut.mp4"))
            with open(output, "rb") as segment:
                data = segment.read()
        return data


def _cut(ffmpeg: str, source: str, frames: int, output: str) -> str:
    """The first ``frames`` frames of ``source`` (decode order), stream-copied."""
    command = [
        ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", source,
        "-map", "0:v:0", "-c", "copy", "-frames:v", str(frames),
        "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact",
        "-f", "mp4", output,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise EncoderError(f"cutting the look-ahead tail off a GOP failed: {last}")
    return output
