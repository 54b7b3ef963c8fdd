"""Ray Data reads of an archive's clips: :class:`GopClipDatasource`.

``Dataset.to_ray(clip_len, stride)`` is ``ray.data.read_datasource(GopClipDatasource(...))``.
The clips, in archive order (videos sorted, then first frame), are cut into contiguous
groups, one read task each: Ray Data spreads the tasks over the cluster's nodes and streams
their blocks, so no clip is read on the driver and none is read before it is wanted. A task
opens the archive once (its worker keeps the index), reads its clips in order and keeps the
last GOPs it decoded, so clips that overlap (``stride < clip_len``) or share a GOP decode
it once. Blocks hold clips of one video, at most ~64 MiB of frames each. Every node must see
the archive's folder at the same path (a shared file system).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from ray.data import Datasource, ReadTask
from ray.data.block import BlockAccessor, BlockMetadata

BLOCK_BYTES = 64 << 20
"""A block is cut once its frames reach this size (and at every change of video)."""
GOP_CACHE = 4
"""Decoded GOPs a read task keeps (clips in order reuse the GOPs they share)."""


def _blocks(open_reader: Callable[[], Any], clips: Sequence[tuple[str, int]], clip_len: int,
            clip_bytes: int) -> Iterator[Any]:
    reader = open_reader()
    per_block = max(1, BLOCK_BYTES // max(1, clip_bytes))
    videos: list[str] = []
    starts: list[int] = []
    frames: list[np.ndarray] = []

    def flush() -> Any:
        block = BlockAccessor.batch_to_block({
            "video": np.array(videos, dtype=object), "start": np.array(starts, dtype=np.int64),
            "frames": np.stack(frames)})
        videos.clear()
        starts.clear()
        frames.clear()
        return block

    for video, start in clips:
        if videos and (video != videos[-1] or len(videos) >= per_block):
            yield flush()
        videos.append(video)
        starts.append(start)
        frames.append(reader.read(video, start, clip_len))
    if videos:
        yield flush()


class GopClipDatasource(Datasource):
    """Clips of ``clip_len`` frames of a gopflow dataset as rows ``{"video", "start",
    "frames"}`` (``frames``: uint8, clip_len x H x W x 3), read by Ray Data's tasks."""

    def __init__(self, open_reader: Callable[[], Any], clips: Sequence[tuple[str, int]],
                 clip_len: int, sizes: dict[str, tuple[int, int]]) -> None:
        self.open_reader = open_reader
        """Opens (or reuses) the archive in a worker: anything with ``read(video, start,
        n)``; picklable (the archive module passes a partial of its ``cached_reader``)."""
        self.clips = list(clips)
        self.clip_len = clip_len
        self.sizes = sizes
        """(height, width) of each video."""

    def _clip_bytes(self, video: str) -> int:
        height, width = self.sizes[video]
        return self.clip_len * height * width * 3

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(self._clip_bytes(video) for video, _ in self.clips)

    def get_name(self) -> str:
        return "GopflowClips"

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        count = len(self.clips)
        groups = max(1, min(parallelism if parallelism > 0 else count, count))
        tasks = []
        for number in range(groups):
            group = self.clips[number * count // groups:(number + 1) * count // groups]
            if not group:
                continue
            largest = max(self._clip_bytes(video) for video, _ in group)
            metadata = BlockMetadata(
                num_rows=len(group), size_bytes=sum(self._clip_bytes(v) for v, _ in group),
                exec_stats=None, input_files=None)

            read = functools.partial(_blocks, self.open_reader, group, self.clip_len, largest)
            tasks.append(ReadTask(read, metadata, per_task_row_limit=per_task_row_limit))
        return tasks
