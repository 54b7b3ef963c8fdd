"""x264/x265/SVT-AV1 (and lossless FFV1, for dataset archives) through the ffmpeg CLI.

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
from dataclasses import asdict, dataclass
from typing import Any, Literal

from gopflow.errors import EncoderError, EncoderRejectedError, GopflowError, UsageError
from gopflow.media.ffmpeg import (
    colour_options,
    cut_command,
    encode_raw_command,
    feed_process,
    ffv1_options,
    find_ffmpeg,
    refusal,
)
from gopflow.media.reader import check_frame_size, feed_format, frame_bytes
from gopflow.types import GopSpec, ReadMode, SourceFormat

ENCODER_NAMES = {"x264": "libx264", "x265": "libx265", "svtav1": "libsvtav1", "ffv1": "ffv1"}
LOSSLESS_CODECS = ("ffv1",)
"""Codecs without rate control: every GOP is coded losslessly (after ``pix_fmt``)."""
PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast",
    "medium", "slow", "slower", "veryslow", "placebo",
)
DEFAULT_CRF = {"x264": 23.0, "x265": 28.0, "svtav1": 35.0}
"""Each encoder's own default CRF (x265's scale sits about 5 above x264's for equal quality;
SVT-AV1's runs 0-63)."""
MAX_CRF = {"x264": 51.0, "x265": 51.0, "svtav1": 63.0}
SVTAV1_PRESETS = {
    "ultrafast": 12, "superfast": 11, "veryfast": 10, "faster": 9, "fast": 8,
    "medium": 7, "slow": 5, "slower": 4, "veryslow": 2, "placebo": 1,
}
"""SVT-AV1 takes a preset number (0 slowest .. 13 fastest): x264's names map onto it, and a
number is taken as it is."""
PIX_FMTS = ("yuv420p", "yuv422p", "yuv444p", "yuv420p10le", "yuv422p10le", "yuv444p10le")


@dataclass(frozen=True)
class EncodeSettings:
    """x264/x265 settings, identical for every GOP of a job (part of the work-dir key).

    Checked when made: a library caller gets the same errors as the command line. Rate
    control is CRF (default: the codec's :data:`DEFAULT_CRF`) or an average bitrate with VBV
    (``maxrate`` default: the bitrate; ``bufsize`` default: twice the maxrate).
    """

    codec: Literal["x264", "x265", "svtav1", "ffv1"] = "x264"
    preset: str = "medium"
    crf: float | None = None
    bitrate_kbps: int | None = None
    maxrate_kbps: int | None = None
    bufsize_kbps: int | None = None
    pix_fmt: str = "yuv420p"
    threads: int = 1
    keyint: int = 250
    lookahead_tail: int = 0
    height: int | None = None
    """Scale each picture down (Lanczos) to this height, the width in proportion (even);
    None, or a height at or above the source's, keeps the source's size."""

    def __post_init__(self) -> None:
        if self.codec not in ENCODER_NAMES:
            raise UsageError(f"unknown codec {self.codec!r}; choose {', '.join(ENCODER_NAMES)}")
        if self.codec in LOSSLESS_CODECS:
            given = [flag for flag, value in (
                ("--crf", self.crf), ("--bitrate", self.bitrate_kbps),
                ("--maxrate", self.maxrate_kbps), ("--bufsize", self.bufsize_kbps),
            ) if value is not None]
            if self.lookahead_tail:
                given.append("--lookahead-tail")
            if given:
                verb = "does" if len(given) == 1 else "do"
                raise UsageError(f"{', '.join(given)} {verb} not apply to {self.codec}: it is "
                                 "lossless, with no rate control")
        if self.codec == "svtav1":
            if not (self.preset in SVTAV1_PRESETS or (self.preset.isdigit()
                    and 0 <= int(self.preset) <= 13)):
                raise UsageError(f"unknown SVT-AV1 preset {self.preset!r}: 0-13 or one of "
                                 f"{', '.join(SVTAV1_PRESETS)}")
        elif self.preset not in PRESETS:
            raise UsageError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.height is not None and self.height < 2:
            raise UsageError(f"the output height must be at least 2, got {self.height}")
        if self.pix_fmt not in PIX_FMTS:
            raise UsageError(
                f"unsupported pixel format {self.pix_fmt!r}; use {', '.join(PIX_FMTS)}"
            )
        if self.codec in LOSSLESS_CODECS:
            pass
        elif self.bitrate_kbps is None:
            # CRF, capped by --maxrate/--bufsize when given (streaming's capped VBR).
            if self.bufsize_kbps is not None and self.maxrate_kbps is None:
                raise UsageError("--bufsize needs --maxrate or --bitrate")
            crf = DEFAULT_CRF[self.codec] if self.crf is None else float(self.crf)
            if not 0 <= crf <= MAX_CRF[self.codec]:
                raise UsageError(f"--crf must be between 0 and {MAX_CRF[self.codec]:g} for "
                                 f"{self.codec}, got {crf:g}")
            object.__setattr__(self, "crf", crf)
        elif self.crf is not None:
            raise UsageError("--crf and --bitrate are alternatives: give one")
        for flag, kbps in (("--bitrate", self.bitrate_kbps), ("--maxrate", self.maxrate_kbps),
                           ("--bufsize", self.bufsize_kbps)):
            if kbps is not None and kbps <= 0:
                raise UsageError(f"{flag} must be positive")
        if self.threads < 1:
            raise UsageError("--encoder-threads must be at least 1")
        if self.keyint < 1:
            raise UsageError("the keyframe interval must be at least 1")
        if self.lookahead_tail < 0:
            raise UsageError(f"--lookahead-tail must be 0 or more, got {self.lookahead_tail}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GopTask:
    """Everything a worker needs for one x264/x265 GOP; paths and numbers only."""

    input_path: str
    stream_index: int
    read_mode: ReadMode
    gop: GopSpec
    source: SourceFormat
    settings: EncodeSettings


# Chroma subsampling (log2 of the divisor) per output pixel format family.
_SUBSAMPLING = {"420": (1, 1), "422": (1, 0), "444": (0, 0)}


def coded_size(width: int, height: int, pix_fmt: str) -> tuple[int, int]:
    """The size actually encoded: 4:2:0 needs even width and height, 4:2:2 an even width.

    Odd sources are padded by one replicated row/column (documented in the README).
    """
    sub_x, sub_y = next((v for k, v in _SUBSAMPLING.items() if k in pix_fmt), (0, 0))
    return width + (width % 2 if sub_x else 0), height + (height % 2 if sub_y else 0)


def _rate_args(settings: EncodeSettings) -> dict[str, str]:
    """Rate-control options: CRF, or an average bitrate with VBV (none: lossless)."""
    if settings.codec in LOSSLESS_CODECS:
        return {}
    if settings.bitrate_kbps and settings.codec == "svtav1":
        # SVT-AV1 caps only CRF encodes ("Max Bitrate only supported with CRF mode"): an
        # average bitrate is plain VBR; peaks are measured from the files in any case.
        return {"b:v": f"{settings.bitrate_kbps}k"}
    if settings.bitrate_kbps:
        maxrate = settings.maxrate_kbps or settings.bitrate_kbps
        bufsize = settings.bufsize_kbps or 2 * maxrate
        return {
            "b:v": f"{settings.bitrate_kbps}k",
            "maxrate": f"{maxrate}k",
            "bufsize": f"{bufsize}k",
        }
    # EncodeSettings resolves the codec's default CRF when it is made.
    assert settings.crf is not None
    rate = {"crf": f"{settings.crf:g}"}
    if settings.maxrate_kbps:
        rate.update(maxrate=f"{settings.maxrate_kbps}k",
                    bufsize=f"{settings.bufsize_kbps or 2 * settings.maxrate_kbps}k")
    return rate


def _codec_args(settings: EncodeSettings, in_band_headers: bool) -> dict[str, str]:
    """The encoder and its options: closed GOPs, fixed threads."""
    threads = max(1, settings.threads)
    # In-band parameter sets let one stream change resolution from GOP to GOP.
    repeat = ":repeat-headers=1" if in_band_headers else ""
    if settings.codec == "x264":
        return {
            "c:v": "libx264",
            "preset": settings.preset,
            "threads": str(threads),
            "g": str(settings.keyint),
            "x264-params": f"open-gop=0:sliced-threads=0{repeat}",
        }
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
        return {
            "c:v": "libx265",
            "preset": settings.preset,
            "x265-params": ":".join(params),
            "tag:v": "hvc1",
        }
    if settings.codec == "ffv1":
        return ffv1_options(threads)
    if settings.codec == "svtav1":
        preset = SVTAV1_PRESETS.get(settings.preset, settings.preset)
        return {
            "c:v": "libsvtav1",
            "preset": str(preset),
            "g": str(settings.keyint),
            # lp: the encoder's thread pool, fixed like x264's threads; closed key frames.
            "svtav1-params": f"lp={threads}:irefresh-type=2",
        }
    raise UsageError(f"unknown codec {settings.codec!r}; choose {', '.join(ENCODER_NAMES)}")


def encoder_options(settings: EncodeSettings, in_band_headers: bool = False) -> dict[str, str]:
    """ffmpeg output options of ``settings``: the codec with its closed-GOP and thread
    options, and the rate control. The one place a GOP encode's, a ladder rung's and a
    ladder probe's encoder options come from."""
    return {**_codec_args(settings, in_band_headers), **_rate_args(settings)}


def scaled_size(width: int, height: int, target: int | None) -> tuple[int, int] | None:
    """The even size a picture of ``width`` x ``height`` is scaled to for a ``target``
    height, or None when it is not scaled (no target, or one at or above ``height``)."""
    if target is None or target >= height:
        return None
    out_height = max(2, target - target % 2)
    out_width = max(2, round(width * out_height / height / 2) * 2)
    return out_width, out_height


def output_size(width: int, height: int, settings: EncodeSettings) -> tuple[int, int]:
    """The picture size a GOP of a ``width`` x ``height`` source is coded at."""
    return scaled_size(width, height, settings.height) or coded_size(width, height,
                                                                     settings.pix_fmt)


# Colour primaries x265 refuses ("Color Primaries must be ..."); x264 takes them all.
_X265_REFUSED_PRIMARIES = frozenset({"jedec-p22", "ebu3213"})


def _encoder_primaries(codec: str, primaries: str) -> str:
    if codec == "x265" and primaries in _X265_REFUSED_PRIMARIES:
        return "unknown"
    return primaries


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
    Assembled by :func:`gopflow.media.ffmpeg.encode_raw_command`; here: the codec's part.
    """
    pad_to: tuple[int, int] | None = coded_size(source.width, source.height, settings.pix_fmt)
    scaled = scaled_size(source.width, source.height, settings.height)
    if scaled is not None:
        pre_filters = [*pre_filters, f"scale={scaled[0]}:{scaled[1]}:flags=lanczos"]
    if any(f.startswith("scale=") for f in pre_filters):
        # A precoder's scaler already chose an even coded size.
        pad_to = None
    return encode_raw_command(
        output,
        width=source.width,
        height=source.height,
        fps=source.fps,
        pix_fmt=feed_format(source.pix_fmt, settings.pix_fmt),
        out_pix_fmt=settings.pix_fmt,
        encoder=encoder_options(settings, in_band_headers),
        colour=colour_options(
            source.color_range, source.color_space,
            _encoder_primaries(settings.codec, source.color_primaries), source.color_trc,
        ),
        input_path=input_path,
        filters=pre_filters,
        pad_to=pad_to,
        keyframe_at=keyframe_at,
        exe=ffmpeg,
    )


class FfmpegEncoder:
    """Runs libx264/libx265/libsvtav1 in ffmpeg."""

    def __init__(self, settings: EncodeSettings) -> None:
        if settings.codec not in ENCODER_NAMES:
            raise UsageError(f"unknown codec {settings.codec!r}; choose "
                             f"{', '.join(ENCODER_NAMES)}")
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
                check_frame_size(frame, source.width, source.height)
                fed += 1
                yield frame_bytes(frame, in_fmt)

        with tempfile.TemporaryDirectory(prefix="gopflow-enc-") as scratch:
            output = os.path.join(scratch, "gop.mp4")
            log_path = os.path.join(scratch, "ffmpeg.log")
            command = build_command(tool.path, source, self.settings, output, keyframe_at=keep)
            code, reason = feed_process(command, payload(), log_path)
            if code != 0 or not os.path.exists(output):
                raise encoder_failure(ENCODER_NAMES[self.settings.codec], reason, log_path)
            if keep is not None and fed > keep:
                output = _cut(tool.path, output, keep, os.path.join(scratch, "cut.mp4"))
            with open(output, "rb") as segment:
                data = segment.read()
        return data


def encoder_failure(what: str, reason: str, log_path: str) -> GopflowError:
    """The error of a failed encode whose ffmpeg log is ``log_path``: an
    :class:`EncoderRejectedError` (not retried) when ffmpeg refused the settings before
    encoding, else an :class:`EncoderError` (retried: a crash, a lost process)."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as log:
            refused = refusal(log.read())
    except OSError:
        refused = None
    if refused:
        return EncoderRejectedError(f"{what} refused the encode: {refused}")
    return EncoderError(f"{what} failed: {reason}")


def _cut(ffmpeg: str, source: str, frames: int, output: str) -> str:
    """The first ``frames`` frames of ``source`` (decode order), stream-copied."""
    command = cut_command(source, frames, output, exe=ffmpeg)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise EncoderError(f"cutting the look-ahead tail off a GOP failed: {last}")
    return output
