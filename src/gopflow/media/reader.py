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

import functools
from collections import deque
from collections.abc import Iterator
from typing import Any

import av
import numpy as np

from gopflow.errors import CorruptInputError, FrameCountError, InputError
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


RGB_MATRIX = "bt709"
"""The matrix RGB sources are converted to YUV with (to limited range), and tagged with."""
_RGB_MATRIX_SWS = "ITU709"  # the same, as swscale (PyAV's reformat) names it


def feed_format(source_pix_fmt: str, target_pix_fmt: str) -> str:
    """The raw format frames are piped in: the source's own when it is plain planar."""
    plain = _SAME_LAYOUT.get(source_pix_fmt, source_pix_fmt)
    return plain if plain in PLANAR_FORMATS else target_pix_fmt


@functools.lru_cache(maxsize=64)
def is_rgb_format(pix_fmt: str) -> bool:
    """Whether ``pix_fmt`` holds RGB samples (planar ``gbrp``, packed, paletted, Bayer):
    frames a YUV encoder can only take after a matrix conversion."""
    try:
        layout = av.VideoFormat(pix_fmt)
    except ValueError:
        return False
    return bool(layout.is_rgb or layout.has_palette)


def yuv_colour(pix_fmt: str, color_range: str, color_space: str) -> tuple[str, str]:
    """Range and matrix of the YUV frames an encoder gets from a ``pix_fmt`` source.

    RGB sources are converted by :func:`frame_bytes` with :data:`RGB_MATRIX` to limited
    range, so that is what their frames are; YUV sources keep their own, except an RGB
    matrix (``gbr``), which no YUV stream can carry (``unknown`` instead).
    """
    if is_rgb_format(pix_fmt):
        return "tv", RGB_MATRIX
    if color_space in ("gbr", "rgb"):
        return color_range, "unknown"
    return color_range, color_space


def check_frame_size(frame: Any, width: int, height: int) -> None:
    """Refuse a frame whose size is not the stream's (``width`` x ``height``, as probed):
    a stream that changes size mid-way (concatenated raw streams) cannot be one encode."""
    if (frame.width, frame.height) != (width, height):
        raise InputError(
            f"the video changes frame size mid-stream ({width}x{height}, then "
            f"{frame.width}x{frame.height}); gopflow encodes one size: cut the video where "
            "its size changes"
        )


def convert_frame(frame: Any, pix_fmt: str) -> Any:
    """``frame`` with ``pix_fmt``'s planes: itself when it has them (a JPEG-range twin
    included), else converted with swscale (RGB to YUV with :data:`RGB_MATRIX`, limited
    range, whatever the frame is tagged)."""
    name = _SAME_LAYOUT.get(frame.format.name, frame.format.name)
    if name == pix_fmt:
        return frame
    if is_rgb_format(name) and not is_rgb_format(pix_fmt):
        return frame.reformat(format=pix_fmt, dst_colorspace=_RGB_MATRIX_SWS,
                              dst_color_range="MPEG")
    return frame.reformat(format=pix_fmt)


def frame_bytes(frame: Any, pix_fmt: str) -> bytes:
    """Packed planar bytes of ``frame`` in ``pix_fmt`` (:func:`convert_frame`)."""
    frame = convert_frame(frame, pix_fmt)
    sample_bytes = 2 if pix_fmt.endswith(("10le", "12le", "16le")) else 1
    parts = []
    for plane in frame.planes:
        row = plane.width * sample_bytes
        rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        parts.append(rows[:, :row].tobytes())
    return b"".join(parts)


def _open_stream(path: str, stream_index: int, threads: int) -> tuple[Any, Any, Any]:
    opened = open_input(path)
    container = opened.__enter__()
    stream = container.streams[stream_index]
    stream.thread_type = "AUTO"
    stream.thread_count = threads
    return opened, container, stream


class GopReader:
    """Reads GOPs of one input; consecutive GOPs continue the same decode, without a seek.

    A worker that is handed GOP k+1 right after GOP k (the runner arranges that) decodes
    the video once, as a single ffmpeg would, instead of decoding from the keyframe before
    every GOP: sources with long keyframe intervals, and raw streams that can only be
    scanned from the start, cost no more than one pass.
    """

    def __init__(self, path: str, stream_index: int, read_mode: ReadMode, threads: int = 1):
        self.path = path
        self.stream_index = stream_index
        self.read_mode = read_mode
        self.threads = threads
        self._opened: Any = None
        self._frames: Iterator[Any] | None = None
        self._buffered: deque[Any] = deque()
        self._next_frame = -1

    # -- positioning -----------------------------------------------------------------
    def _seek_to(self, gop: GopSpec, target: int) -> int | None:
        """Position on ``gop``'s first frame; return the overshooting pts on failure."""
        assert gop.start_pts is not None
        opened, container, stream = _open_stream(self.path, self.stream_index, self.threads)
        self._opened = opened
        container.seek(target, stream=stream, backward=True)
        self._frames = iter(container.decode(stream))
        for frame in self._frames:
            if frame.pts is None:
                break
            if frame.pts >= gop.start_pts:
                if frame.pts == gop.start_pts:
                    self._buffered.append(frame)
                    return None
                self.close()
                return int(frame.pts)
        self.close()
        return gop.start_pts + 1

    def _scan_to(self, gop: GopSpec) -> None:
        opened, container, stream = _open_stream(self.path, self.stream_index, self.threads)
        self._opened = opened
        self._frames = iter(container.decode(stream))
        for _ in range(gop.start_frame):
            if next(self._frames, None) is None:
                break

    def _position(self, gop: GopSpec) -> None:
        self.close()
        if self.read_mode == "seek" and gop.start_pts is not None:
            target = gop.start_pts
            for _ in range(_SEEK_RETRIES):
                landed = self._seek_to(gop, target)
                if landed is None:
                    return
                # Overshot (a sparse index): step back by four times the miss and retry.
                target -= 4 * max(1, abs(landed - gop.start_pts))
        self._scan_to(gop)

    # -- reading ---------------------------------------------------------------------
    def _take(self) -> Any:
        if self._buffered:
            return self._buffered.popleft()
        assert self._frames is not None
        return next(self._frames, None)

    def read(self, gop: GopSpec, tail: int = 0) -> Iterator[Any]:
        """Yield exactly ``gop.frame_count`` decoded frames (else raise a clear error), then
        up to ``tail`` frames that follow the GOP (fewer at the end of the video).

        The tail is look-ahead context for an encoder; it is kept and replayed when the next
        GOP is read, so consecutive GOPs still cost one decode.
        """
        delivered = 0
        try:
            if self._frames is None or self._next_frame != gop.start_frame:
                self._position(gop)
            while delivered < gop.frame_count:
                frame = self._take()
                if frame is None:
                    break
                yield frame
                delivered += 1
            if delivered == gop.frame_count:
                extra = []
                while len(extra) < tail:
                    frame = self._take()
                    if frame is None:
                        break
                    extra.append(frame)
                self._buffered.extendleft(reversed(extra))
                yield from extra
        except av.error.FFmpegError as exc:
            self.close()
            raise CorruptInputError(
                f"decoding frames {gop.start_frame}-{gop.end_frame - 1} of {self.path} "
                f"failed: {exc.strerror or exc}"
            ) from exc
        except BaseException:
            self.close()  # abandoned mid-GOP: the position is unknown
            raise
        if delivered != gop.frame_count:
            self.close()
            raise FrameCountError(
                f"expected {gop.frame_count} frames from frame {gop.start_frame}, the input "
                f"gave {delivered} (truncated or corrupt input?)"
            )
        self._next_frame = gop.end_frame

    def close(self) -> None:
        if self._opened is not None:
            self._opened.__exit__(None, None, None)
        self._opened, self._frames, self._next_frame = None, None, -1
        self._buffered = deque()

    def __enter__(self) -> GopReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()



class ReaderCache:
    """One open :class:`GopReader` per stage, reused while consecutive GOPs come from the
    same stream (an actor sees a contiguous lane of GOPs and decodes it in one pass)."""

    def __init__(self) -> None:
        self._reader: GopReader | None = None

    def reader(
        self, path: str, stream_index: int, read_mode: ReadMode, threads: int = 1
    ) -> GopReader:
        """The open reader of that stream; replaces (and closes) one of another stream."""
        wanted = (path, stream_index, read_mode, threads)
        reader = self._reader
        if reader is None or (
            reader.path, reader.stream_index, reader.read_mode, reader.threads
        ) != wanted:
            self.close()
            reader = self._reader = GopReader(*wanted)
        return reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

def iter_gop_frames(
    path: str, stream_index: int, read_mode: ReadMode, gop: GopSpec, threads: int = 1
) -> Iterator[Any]:
    """Yield exactly ``gop.frame_count`` decoded frames of one GOP (a fresh reader)."""
    with GopReader(path, stream_index, read_mode, threads) as reader:
        yield from reader.read(gop)
