"""Probe an input with PyAV (the static ffmpeg has no ffprobe).

``probe(path)`` opens the container, picks the first real video stream (attached pictures
are skipped), and demuxes its packets once, without decoding, to count frames, detect
variable frame rate and decide how workers will find their GOPs (``seek`` by timestamp
when packets carry them, ``scan`` from the start for raw elementary streams).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from typing import Any

import av

from gopflow.errors import (
    CorruptInputError,
    InputError,
    InputNotFoundError,
    NoVideoStreamError,
)
from gopflow.types import AudioStreamInfo, StreamSummary, VideoInfo

# Timestamps this far (relative) from the median frame duration make a stream VFR.
_VFR_TOLERANCE = 0.02
_RAW_FORMATS = frozenset({"h264", "hevc", "mpegvideo", "m4v", "rawvideo", "yuv4mpegpipe", "vvc"})


@contextmanager
def open_input(path: str) -> Iterator[Any]:
    """Open ``path`` with PyAV, turning its errors into one-line :class:`InputError` s."""
    if not os.path.exists(path):
        raise InputNotFoundError(f"input not found: {path}")
    if os.path.isdir(path):
        raise InputError(f"input is a directory, not a video file: {path}")
    if os.path.getsize(path) == 0:
        raise InputError(f"input is empty (0 bytes): {path}")
    try:
        container = av.open(path, metadata_errors="ignore")
    except av.error.FileNotFoundError as exc:
        raise InputNotFoundError(f"input not found: {path}") from exc
    except (av.error.InvalidDataError, av.error.EOFError) as exc:
        raise CorruptInputError(
            f"not a readable video (unknown format, corrupt or truncated): {path}"
        ) from exc
    except av.error.PermissionError as exc:
        raise InputError(f"cannot read {path}: permission denied") from exc
    except av.error.FFmpegError as exc:
        # ffmpeg's errno here says little (a y4m header claiming 60000x60000 gives EBUSY).
        raise CorruptInputError(
            f"cannot open {path} as a video ({exc.strerror or exc}): unknown format, corrupt "
            "or truncated"
        ) from exc
    try:
        yield container
    finally:
        container.close()


def _video_stream(container: Any, path: str) -> Any:
    streams = [
        s
        for s in container.streams.video
        if not (s.disposition & av.stream.Disposition.attached_pic)
    ]
    if not streams:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        # Only data streams (or none): an index cut short names tracks it cannot describe.
        hint = "" if {"audio", "subtitle"} & set(kinds) else "; truncated or corrupt?"
        raise NoVideoStreamError(
            f"no video stream in {path} (it has: {', '.join(kinds)}{hint})"
        )
    return streams[0], len(streams) - 1


# PyAV hands colour properties back as the raw AVCOL_* integers; these are ffmpeg's own
# option names for them (libavutil/pixfmt.h), so they can be passed straight to the encoder.
_RANGE_NAMES = {1: "tv", 2: "pc"}
_SPACE_NAMES = {
    0: "gbr", 1: "bt709", 4: "fcc", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m",
    8: "ycgco", 9: "bt2020nc", 10: "bt2020c", 14: "ictcp",
}
_PRIMARIES_NAMES = {
    1: "bt709", 4: "bt470m", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 8: "film",
    9: "bt2020", 10: "smpte428", 11: "smpte431", 12: "smpte432", 22: "jedec-p22",
}
_TRC_NAMES = {
    1: "bt709", 4: "gamma22", 5: "gamma28", 6: "smpte170m", 7: "smpte240m", 8: "linear",
    11: "iec61966-2-4", 13: "iec61966-2-1", 14: "bt2020-10", 15: "bt2020-12",
    16: "smpte2084", 18: "arib-std-b67",
}


def _name(value: Any, names: dict[int, str]) -> str:
    """A PyAV colour value as ffmpeg's option name (``unknown`` when unset)."""
    if value is None:
        return "unknown"
    try:
        return names.get(int(value), "unknown")
    except (TypeError, ValueError):
        return str(getattr(value, "name", value)).lower()


def _rotation(stream: Any) -> int:
    try:
        matrix = stream.side_data.get("DISPLAYMATRIX") if stream.side_data else None
    except (AttributeError, KeyError, TypeError):
        matrix = None
    if matrix is None:
        return 0
    try:
        return round(float(matrix)) % 360
    except (TypeError, ValueError):
        return 0


def _audio_streams(container: Any) -> tuple[AudioStreamInfo, ...]:
    found = []
    for s in container.streams.audio:
        ctx = s.codec_context
        start = float(s.start_time * s.time_base) if s.start_time is not None else 0.0
        found.append(
            AudioStreamInfo(
                index=s.index,
                codec=ctx.name if ctx is not None else "unknown",
                sample_rate=int(ctx.sample_rate or 0) if ctx is not None else 0,
                channels=int(ctx.channels or 0) if ctx is not None else 0,
                start_seconds=start,
                language=s.metadata.get("language"),
            )
        )
    return tuple(found)


def frame_timestamps(path: str, stream_index: int) -> list[int | None]:
    """Presentation timestamps of every video packet, sorted (``None`` where absent).

    Demux only (no decoding). Sorting the packets' pts gives the frames' presentation order,
    so index ``i`` of the result is frame ``i`` of the stream.
    """
    stamps: list[int | None] = []
    with open_input(path) as container:
        stream = container.streams[stream_index]
        indexed = int(stream.frames or 0)
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                stamps.append(packet.pts)
        except av.error.FFmpegError as exc:
            raise CorruptInputError(
                f"corrupt or truncated input {path}: demux failed after "
                f"{len(stamps)} frames ({exc.strerror or exc})"
            ) from exc
    if indexed and len(stamps) < indexed:
        raise CorruptInputError(
            f"truncated input {path}: its index lists {indexed} frames, only {len(stamps)} "
            "can be read"
        )
    if stamps and all(s is not None for s in stamps):
        return sorted(stamps)  # type: ignore[type-var]
    return [None] * len(stamps)


def _is_vfr(stamps: list[int | None]) -> bool:
    if len(stamps) < 3 or stamps[0] is None:
        return False
    gaps = sorted(b - a for a, b in itertools.pairwise(stamps))  # type: ignore[operator]
    median = gaps[len(gaps) // 2]
    if median <= 0:
        return True
    return any(abs(g - median) > max(1, median * _VFR_TOLERANCE) for g in gaps)


def probe(path: str) -> VideoInfo:
    """Describe ``path``'s first video stream and its audio streams."""
    return probe_with_timestamps(path)[0]


def probe_with_timestamps(path: str) -> tuple[VideoInfo, list[int | None]]:
    """:func:`probe`, plus the frames' presentation timestamps its demux pass collected
    (what GOP planning needs), so a job demuxes the input once."""
    path = os.path.abspath(path)
    with open_input(path) as container:
        stream, others = _video_stream(container, path)
        ctx = stream.codec_context
        if ctx is None or not ctx.width or not ctx.height:
            raise CorruptInputError(f"video stream of {path} has no frame size (corrupt?)")
        if stream.average_rate and container.format.name not in _RAW_FORMATS:
            rate = stream.average_rate
        else:
            # Raw elementary streams have no timing; the VUI rate (codec framerate) is the
            # truth where present, then ffmpeg's guess, else 25 fps as ffmpeg assumes.
            rate = ctx.framerate or stream.guessed_rate or stream.average_rate
        fps = Fraction(rate) if rate else Fraction(25)
        if fps <= 0 or fps > 1000:
            fps = Fraction(25)
        info_common = {
            "container": container.format.name,
            "codec": ctx.name,
            "width": int(ctx.width),
            "height": int(ctx.height),
            "pix_fmt": ctx.pix_fmt or "unknown",
            "time_base": Fraction(stream.time_base) if stream.time_base else Fraction(1, 90000),
            "color_range": _name(ctx.color_range, _RANGE_NAMES),
            "color_space": _name(ctx.colorspace, _SPACE_NAMES),
            "color_primaries": _name(ctx.color_primaries, _PRIMARIES_NAMES),
            "color_trc": _name(ctx.color_trc, _TRC_NAMES),
            "rotation": _rotation(stream),
            "audio": _audio_streams(container),
            "stream_index": stream.index,
            "other_video_streams": others,
            "streams": tuple(
                StreamSummary(
                    s.index,
                    s.type,
                    s.codec_context.name if s.codec_context is not None else "unknown",
                )
                for s in container.streams
            ),
        }
        start = (
            float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        )
        container_start = container.start_time / 1e6 if container.start_time is not None else 0.0

    stamps = frame_timestamps(path, info_common["stream_index"])
    if not stamps:
        raise InputError(f"input has a video stream but zero frames: {path}")
    seekable = stamps[0] is not None
    vfr = _is_vfr(stamps) if seekable else False
    frame_count = len(stamps)
    if seekable and vfr:
        tb = info_common["time_base"]
        span = float((stamps[-1] - stamps[0]) * tb)  # type: ignore[operator]
        if span > 0:
            fps = Fraction(frame_count - 1) / Fraction(span).limit_denominator(1_000_000)
            fps = fps.limit_denominator(1001)
    duration = frame_count / float(fps)
    info = VideoInfo(
        path=path,
        fps=fps,
        vfr=vfr,
        frame_count=frame_count,
        duration_seconds=duration if math.isfinite(duration) else 0.0,
        start_seconds=start,
        container_start_seconds=container_start,
        read_mode="seek" if seekable else "scan",
        **info_common,
    )
    return info, stamps
