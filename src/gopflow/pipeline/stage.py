"""The per-GOP stage: read the GOP's frames, encode them, return the segment.

Pure Python with no knowledge of Ray: the runner decides where it runs. Data flow:
:class:`GopTask` -> frame-accurate decode (PyAV, in this process) -> codec -> :class:`EncodedGop`.
"""

from __future__ import annotations

import time

from gopflow.codecs.ffmpeg_encoder import FfmpegEncoder
from gopflow.errors import FrameCountError
from gopflow.media.reader import iter_gop_frames
from gopflow.types import EncodedGop, GopTask


class _Counter:
    """Counts frames while passing them through to the encoder."""

    def __init__(self, frames):  # type: ignore[no-untyped-def]
        self.frames = frames
        self.count = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        for frame in self.frames:
            self.count += 1
            yield frame


def encode_gop(task: GopTask) -> EncodedGop:
    """Decode exactly ``task.gop``'s frames and encode them as one closed GOP."""
    started = time.perf_counter()
    frames = _Counter(
        iter_gop_frames(
            task.input_path, task.stream_index, task.read_mode, task.gop, task.settings.threads
        )
    )
    data = FfmpegEncoder(task.settings).encode_gop(frames, task.source)
    if frames.count != task.gop.frame_count:
        raise FrameCountError(
            f"encoded {frames.count} frames, planned {task.gop.frame_count}"
        )
    return EncodedGop(
        index=task.gop.index,
        data=data,
        frames=frames.count,
        encode_seconds=time.perf_counter() - started,
    )
