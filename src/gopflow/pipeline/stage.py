"""The per-GOP stage: read the GOP's frames, encode them, return the segment.

Pure Python with no knowledge of Ray: the runner hosts :class:`GopEncodeStage` in an actor,
where it keeps its decoder open so that consecutive GOPs are decoded in one pass. Data flow:
:class:`GopTask` -> frame-accurate decode (PyAV, in this process) -> codec -> :class:`EncodedGop`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from gopflow.codecs.ffmpeg_encoder import FfmpegEncoder
from gopflow.errors import FrameCountError
from gopflow.media.reader import GopReader
from gopflow.types import EncodedGop, GopTask


class _Counter:
    """Counts frames while passing them through to the encoder."""

    def __init__(self, frames: Iterable[Any]) -> None:
        self.frames = frames
        self.count = 0

    def __iter__(self) -> Iterator[Any]:
        for frame in self.frames:
            self.count += 1
            yield frame


class GopEncodeStage:
    """Encodes GOPs one after another, reusing the decoder between consecutive GOPs."""

    def __init__(self) -> None:
        self._reader: GopReader | None = None

    def _reader_for(self, task: GopTask) -> GopReader:
        reader = self._reader
        wanted = (task.input_path, task.stream_index, task.read_mode, task.settings.threads)
        if reader is None or (
            reader.path, reader.stream_index, reader.read_mode, reader.threads
        ) != wanted:
            if reader is not None:
                reader.close()
            reader = GopReader(*wanted)
            self._reader = reader
        return reader

    def __call__(self, task: GopTask) -> EncodedGop:
        started = time.perf_counter()
        tail = task.settings.lookahead_tail
        frames = _Counter(self._reader_for(task).read(task.gop, tail=tail))
        data = FfmpegEncoder(task.settings).encode_gop(
            frames, task.source, keep=task.gop.frame_count if tail else None
        )
        if not task.gop.frame_count <= frames.count <= task.gop.frame_count + tail:
            raise FrameCountError(f"encoded {frames.count} frames, planned {task.gop.frame_count}")
        return EncodedGop(
            index=task.gop.index,
            data=data,
            frames=task.gop.frame_count,
            encode_seconds=time.perf_counter() - started,
        )

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

