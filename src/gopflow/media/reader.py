"""Frame-accurate GOP reading with PyAV, run inside a worker.

A worker opens the input itself (PyAV objects never cross a process boundary) and yields
exactly the frames ``[gop.start_frame, gop.end_frame)`` in presentation order:

- ``seek`` mode (containers with timestamps): seek to the keyframe at or before the GOP's
  first timestamp, decode, drop frames before it. If the demuxer lands after the target
  (a sparse index), seek again further back, and in the end fall back to ``scan``.
- ``scan`` mode (raw elementary streams have neither timestamps nor an index): decode from
  the start and count frames. Correct for any input; costs a decode of the frames before
  the GOP, never memory.

``frame_bytes`` turns a decoded frame into tightly packed planar bytes (rawvideo layout),
which is what the encoder process reads on its stdin.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import av
import numpy as np

from gopflow.errors import CorruptInputError, FrameCountError
from gopflow.media.probe import open_input
from gopflow.types import GopSpec, ReadMode

# JPEG-range pixel formats carry the same planes as their MPEG twins; the range is signalled
# separately (``-color_range pc``), which is how current ffmpeg wants it.
_SAME_LAYOUT = {"yuvj420p": "yuv420p", "yuvj422p": "yuv422p", "yuvj444p": "yuv444p"}
# Planar formats whose planes gopflow can copy out of a frame byte for byte.
PLANAR_FORMATS = frozenset(
    {
        "gray", "yuv420p", "yuv422p", "yuv444p",
        "yuv420p10le", "yuv422p10le", "yuv444p10le",
        "yuv420p12le", "yuv422p12le", "yuv444p12le",
    }
)
_SEEK_RETRIES = 3


def feed_format(source_pix_fmt: str, target_pix_fmt: str) -> str:
    """The raw format frames are piped in: the source's own when it is plain planar."""
    plain = _SAME_LAYOUT.get(source_pix_fmt, source_pix_fmt)
    return plain if plain in PLANAR_FORMATS else target_pix_fmt


def frame_bytes(frame: Any, pix_fmt: str) -> bytes:
    """Packed planar bytes of ``frame`` in ``pix_fmt`` (converting with swscale if needed)."""
    name = _SAME_LAYOUT.get(frame.format.name, frame.format.name)
    if name != pix_fmt:
        frame = frame.reformat(format=pix_fmt)
    sample_bytes = 2 if pix_fmt.endswith(("10le", "12le", "16le")) else 1
    parts = []
    for plane in frame.planes:
        row = plane.width * sample_bytes
        rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        parts.append(rows[:, :row].tobytes())
    return b"".join(parts)


def _scan(path: str, stream_index: int, gop: GopSpec, threads: int) -> Iterator[Any]:
    with open_input(path) as container:
        stream = container.streams[stream_index]
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        for position, frame in enumerate(container.decode(stream)):
            if position >= gop.end_frame:
                return
            if position >= gop.start_frame:
                yield frame


def _seek(
    path: str, stream_index: int, gop: GopSpec, threads: int, target: int
) -> tuple[Iterator[Any] | None, int]:
    """Frames of ``gop`` after seeking to ``target``; ``(None, first_pts)`` on overshoot."""
    assert gop.start_pts is not None
    opened = open_input(path)
    container = opened.__enter__()
    try:
        stream = container.streams[stream_index]
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        container.seek(target, stream=stream, backward=True)
        frames = container.decode(stream)
        first = None
        for frame in frames:
            if frame.pts is None:
                break
            if frame.pts >= gop.start_pts:
                first = frame
                break
        if first is None or first.pts != gop.start_pts:
            opened.__exit__(None, None, None)
            landed = gop.start_pts + 1 if first is None or first.pts is None else first.pts
            return None, landed
    except BaseException:
        opened.__exit__(None, None, None)
        raise

    def rest() -> Iterator[Any]:
        try:
            yield first
            yield from frames
        finally:
            opened.__exit__(None, None, None)

    return rest(), first.pts


def iter_gop_frames(
    path: str, stream_index: int, read_mode: ReadMode, gop: GopSpec, threads: int = 1
) -> Iterator[Any]:
    """Yield exactly ``gop.frame_count`` decoded frames, else raise a clear error."""
    source: Iterator[Any] | None = None
    delivered = 0
    try:
        if read_mode == "seek" and gop.start_pts is not None:
            target = gop.start_pts
            for _ in range(_SEEK_RETRIES):
                source, landed = _seek(path, stream_index, gop, threads, target)
                if source is not None:
                    break
                # Overshot: step back by four times the miss and try again.
                target -= 4 * max(1, abs(landed - gop.start_pts))
        if source is None:
            source = _scan(path, stream_index, gop, threads)
        for frame in source:
            yield frame
            delivered += 1
            if delivered == gop.frame_count:
                break
    except av.error.FFmpegError as exc:
        raise CorruptInputError(
            f"decoding frames {gop.start_frame}-{gop.end_frame - 1} of {path} failed: "
            f"{exc.strerror or exc}"
        ) from exc
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
    if delivered != gop.frame_count:
        raise FrameCountError(
            f"expected {gop.frame_count} frames from frame {gop.start_frame}, the input gave "
            f"{delivered} (truncated or corrupt input?)"
        )
