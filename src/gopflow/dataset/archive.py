"""The GOP-indexed video archive (``.gfd`` folder): format, writer and random-access reader.

Layout (``docs/dataset-format.md`` has every field)::

    clips.gfd/
      card.json                  the dataset card: format, settings, totals, the parts below
      index/part-00000.parquet   one row per GOP (one part per compress run)
      shards/shard-00000.bin     GOP payloads back to back (one or more per run)

A GOP payload is the closed GOP as coded (an MP4 segment: x264/x265/SVT-AV1, its first
frame an IDR; a learned codec's: its .gflv units, decoded by :mod:`gopflow.dataset.learned`),
so reading a clip decodes only the GOPs that cover it. The card is written
last, atomically, and lists the index parts that belong to the archive: shard bytes of a run
that never finished are not referenced by any listed part, and a folder without a card is
not an archive.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from gopflow.dataset.learned import LEARNED_CODECS, LearnedDecoder, LearnedPayloads
from gopflow.errors import CorruptInputError, InputError, InputNotFoundError, UsageError
from gopflow.fileio import atomic_write_json

FORMAT = "gopflow-dataset"
VERSION = 2
"""The card version an archive with learned payloads is written with (``settings.learned``
in its card); an archive of x264/x265/SVT-AV1/FFV1 payloads is written as version 1, which
it still is, so older readers read it."""
READABLE_VERSIONS = (1, 2)
CARD = "card.json"
SHARD_BYTES = 1 << 30
"""A shard is closed once it holds this many bytes (a GOP never spans two shards)."""
COLUMNS = (
    "video_id", "source_path", "source_sha256", "source_bytes", "gop_index", "first_frame",
    "frame_count", "shard", "offset", "length", "sha256", "codec", "width", "height",
    "coded_width", "coded_height", "fps_num", "fps_den", "quality",
)


def _arrow() -> Any:
    import pyarrow

    return pyarrow


@dataclass(frozen=True)
class GopRow:
    """One GOP of one video in the archive (a row of the Parquet index)."""

    video_id: str
    source_path: str
    source_sha256: str
    source_bytes: int
    gop_index: int
    first_frame: int
    frame_count: int
    shard: str
    offset: int
    length: int
    sha256: str
    codec: str
    width: int
    height: int
    coded_width: int
    coded_height: int
    fps_num: int
    fps_den: int
    quality: float | None = None


class ShardWriter:
    """Appends GOP payloads to shard files (thread-safe); returns where each one went."""

    def __init__(self, root: str, prefix: str) -> None:
        self.root = os.path.join(root, "shards")
        os.makedirs(self.root, exist_ok=True)
        self.prefix = prefix
        self._lock = threading.Lock()
        self._number = 0
        self._size = 0

    def _name(self) -> str:
        return f"{self.prefix}-{self._number:05d}.bin"

    def append(self, payloads: Sequence[bytes]) -> list[tuple[str, int, int]]:
        """Write ``payloads`` (one video's GOPs) and fsync; (shard, offset, length) each."""
        with self._lock:
            placed = []
            for data in payloads:
                if self._size and self._size + len(data) > SHARD_BYTES:
                    self._number += 1
                    self._size = 0
                path = os.path.join(self.root, self._name())
                with open(path, "ab") as handle:
                    offset = handle.tell()
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                self._size = offset + len(data)
                placed.append((f"shards/{self._name()}", offset, len(data)))
            return placed


def read_card(root: str) -> dict[str, Any]:
    """The card of the archive at ``root``; a clear error when there is none (not an
    archive, or one whose first compress run never finished)."""
    path = os.path.join(root, CARD)
    if not os.path.isdir(root):
        raise InputNotFoundError(f"no dataset at {root}")
    try:
        with open(path, encoding="utf-8") as handle:
            card = json.load(handle)
    except FileNotFoundError:
        raise InputError(f"{root} is not a complete gopflow dataset (no {CARD})") from None
    except (OSError, ValueError) as exc:
        raise CorruptInputError(f"unreadable {path}: {exc}") from exc
    if card.get("format") != FORMAT:
        raise InputError(f"{path} is not a gopflow dataset card")
    if card.get("version") not in READABLE_VERSIONS:
        raise InputError(f"{path} is a gopflow dataset of version {card.get('version')}; this "
                         f"gopflow reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    return card


def write_part(root: str, name: str, rows: Sequence[GopRow]) -> str:
    """Write one index part (Parquet) atomically; its path relative to ``root``."""
    pa = _arrow()
    import pyarrow.parquet as pq

    table = pa.table({column: [getattr(row, column) for row in rows] for column in COLUMNS})
    relative = f"index/{name}.parquet"
    target = os.path.join(root, relative)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    temp = f"{target}.partial"
    pq.write_table(table, temp)
    with open(temp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, target)
    return relative


def write_card(root: str, card: dict[str, Any]) -> None:
    atomic_write_json(os.path.join(root, CARD), card)


def _read_rows(root: str, card: dict[str, Any]) -> list[GopRow]:
    import pyarrow.parquet as pq

    rows: list[GopRow] = []
    for part in card.get("parts", []):
        try:
            table = pq.read_table(os.path.join(root, part))
        except Exception as exc:  # pyarrow raises its own error types
            raise CorruptInputError(f"unreadable index part {part}: {exc}") from exc
        for record in table.to_pylist():
            rows.append(GopRow(**{column: record.get(column) for column in COLUMNS}))
    return rows


def _entry(packets: Sequence[Any], wanted: int) -> int:
    """Where decoding starts for a frame shown at ``wanted``: the last key frame at or
    before it in decode order that is a clean entry point (every packet after it shown
    after it, every packet before it shown before it). The first packet of an x264/x265
    payload (its IDR) is the only one; every packet of an FFV1 payload coded with ``-g 1``
    is one (an FFV1 payload with one key frame per GOP, as archives coded before that have,
    decodes from its start)."""
    shown_after: list[float] = [0] * len(packets)  # the earliest timestamp from each packet on
    earliest = math.inf
    for number in range(len(packets) - 1, -1, -1):
        earliest = min(earliest, packets[number].pts)
        shown_after[number] = earliest
    entry, latest = 0, -math.inf  # latest: the last timestamp shown before each packet
    for number, packet in enumerate(packets):
        if packet.pts > wanted:
            break
        if packet.is_keyframe and latest < packet.pts == shown_after[number]:
            entry = number
        latest = max(latest, packet.pts)
    return entry


def decode_gop(data: bytes, first: int = 0, last: int | None = None) -> list[np.ndarray]:
    """Frames ``first .. last-1`` (default: every frame) of one GOP payload, as RGB24
    arrays, in presentation order. Decoding starts at the last clean key frame at or before
    ``first`` (FFV1: every frame; x264/x265: the GOP's IDR) and stops once ``last`` is out;
    frames before ``first`` that no other frame references (x264/x265's non-reference
    B-frames) are not decoded at all; only the frames returned are converted to RGB."""
    import av
    from av.video.reformatter import VideoReformatter

    frames: list[np.ndarray] = []
    # One converter for the GOP: frame.to_ndarray makes a new swscale context per frame,
    # which costs more than converting it.
    rgb = VideoReformatter()
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # FFV1's slices, x264/x265's frames: ~1.2-2x faster
            packets = [p for p in container.demux(stream) if p.size]
            stamps = sorted(p.pts for p in packets if p.pts is not None)
            if len(stamps) != len(packets):
                raise CorruptInputError("a GOP payload has frames without timestamps")
            place = {pts: number for number, pts in enumerate(stamps)}
            stop = len(stamps) if last is None else min(last, len(stamps))
            if stop <= first:
                return []
            wanted, context = stamps[first], stream.codec_context

            def take(decoded: Any) -> None:
                for frame in decoded:
                    if first <= place.get(frame.pts, -1) < stop:
                        frames.append(rgb.reformat(frame, format="rgb24").to_ndarray())

            for packet in packets[_entry(packets, wanted):]:
                # A frame shown before the clip and referenced by none is skipped (the
                # decoder's own NONREF discard; the frames decoded are unchanged).
                context.skip_frame = "NONREF" if packet.pts < wanted else "DEFAULT"
                take(context.decode(packet))
                if len(frames) >= stop - first:
                    break
            else:
                take(context.decode(None))
    except (av.FFmpegError, IndexError) as exc:
        raise CorruptInputError(f"a GOP payload does not decode: {exc}") from exc
    return frames


class Dataset:
    """A read-only view of an archive: videos, GOPs, and exact frames by index."""

    def __init__(self, root: str, cache_gops: int = 0) -> None:
        self.root = os.path.abspath(root)
        self.cache_gops = cache_gops
        """Decoded GOPs kept for the next reads (0: none; a reader of clips in order keeps a
        few, so clips sharing a GOP decode it once)."""
        self._cache: OrderedDict[tuple[str, int], list[np.ndarray]] = OrderedDict()
        self.card = read_card(self.root)
        self.rows = _read_rows(self.root, self.card)
        self._by_video: dict[str, list[GopRow]] = {}
        for row in self.rows:
            self._by_video.setdefault(row.video_id, []).append(row)
        for gops in self._by_video.values():
            gops.sort(key=lambda r: r.gop_index)
        self._learned: Any = None
        """The learned codec's decoder (loaded on the first learned GOP read)."""

    @property
    def videos(self) -> list[str]:
        return sorted(self._by_video)

    def frames(self, video: str) -> int:
        return sum(r.frame_count for r in self._gops(video))

    def fps(self, video: str) -> Fraction:
        first = self._gops(video)[0]
        return Fraction(first.fps_num, first.fps_den)

    def quality(self, video: str) -> tuple[float, float] | None:
        """``video``'s PSNR-Y measured at encode time: (pooled over its frames, its worst
        GOP's), in dB, ``inf`` when exact; None if a GOP was not measured."""
        gops = self._gops(video)
        if any(r.quality is None for r in gops):
            return None
        worst = min(float(r.quality) for r in gops)  # type: ignore[arg-type]
        frames = sum(r.frame_count for r in gops)
        mse = sum(r.frame_count * 10.0 ** (-float(r.quality) / 10.0)  # type: ignore[arg-type]
                  for r in gops) / frames
        return (10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf), worst

    def _gops(self, video: str) -> list[GopRow]:
        if video not in self._by_video:
            raise UsageError(f"no video {video!r} in {self.root}")
        return self._by_video[video]

    def payload(self, row: GopRow, check: bool = True) -> bytes:
        """One GOP's bytes, read from its shard (and checked against its SHA-256)."""
        path = os.path.join(self.root, row.shard)
        try:
            with open(path, "rb") as handle:
                handle.seek(row.offset)
                data = handle.read(row.length)
        except OSError as exc:
            raise CorruptInputError(f"cannot read {row.shard}: {exc.strerror}") from exc
        if len(data) != row.length or (check and hashlib.sha256(data).hexdigest() != row.sha256):
            raise CorruptInputError(
                f"GOP {row.gop_index} of {row.video_id} is damaged ({row.shard} at {row.offset})"
            )
        return data

    def read(self, video: str, start: int, count: int) -> np.ndarray:
        """Frames ``start .. start+count-1`` of ``video`` as a uint8 array (count, H, W, 3),
        at the source's size; only the GOPs that cover them are read and decoded."""
        total = self.frames(video)
        if count < 1 or start < 0 or start + count > total:
            raise UsageError(f"frames {start}:{start + count} are outside {video}'s 0:{total}")
        out: list[np.ndarray] = []
        for row in self._gops(video):
            end = row.first_frame + row.frame_count
            if end <= start or row.first_frame >= start + count:
                continue
            first = max(start, row.first_frame) - row.first_frame
            last = min(start + count, end) - row.first_frame
            if self.cache_gops > 0:
                frames = self._decoded(row)[first:last]
            else:
                frames = self._decode(row, first, last)
                if len(frames) != last - first:
                    raise CorruptInputError(
                        f"GOP {row.gop_index} of {video} decoded to fewer than {last} frames "
                        f"(the index says {row.frame_count})")
            out.extend(f[: row.height, : row.width] for f in frames)
        return np.stack(out)

    def _decode(self, row: GopRow, first: int = 0, last: int | None = None) -> list[np.ndarray]:
        """Frames ``first .. last-1`` of one GOP (its payload read and checked): FFmpeg's
        decoders, or the learned codec for dvc/fvc/intra payloads."""
        data = self.payload(row)
        if row.codec not in LEARNED_CODECS:
            return decode_gop(data, first, last)
        if self._learned is None:
            self._learned = LearnedDecoder(LearnedPayloads.from_card(self.card, self.root))
        return self._learned.decode(data, row.first_frame, row.width, row.height, first, last,
                                    f"GOP {row.gop_index} of {row.video_id}")

    def _decoded(self, row: GopRow) -> list[np.ndarray]:
        key = (row.video_id, row.gop_index)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        frames = self._decode(row)
        if len(frames) != row.frame_count:
            raise CorruptInputError(f"GOP {row.gop_index} of {row.video_id} decoded to "
                                    f"{len(frames)} frames, not {row.frame_count}")
        if self.cache_gops > 0:
            self._cache[key] = frames
            while len(self._cache) > self.cache_gops:
                self._cache.popitem(last=False)
        return frames

    def clips(self, clip_len: int, stride: int | None = None) -> list[tuple[str, int]]:
        """(video, first frame) of every whole clip of ``clip_len`` frames, ``stride`` apart
        (default: ``clip_len``, no overlap)."""
        stride = stride or clip_len
        if clip_len < 1 or stride < 1:
            raise UsageError("clip_len and stride must be at least 1")
        return [(video, start) for video in self.videos
                for start in range(0, self.frames(video) - clip_len + 1, stride)]

    def to_torch(self, clip_len: int, stride: int | None = None) -> Any:
        """A map-style ``torch.utils.data.Dataset`` of clips (uint8 tensors T x H x W x 3)."""
        return TorchClips(self.root, self.clips(clip_len, stride), clip_len)

    def to_ray(self, clip_len: int, stride: int | None = None) -> Any:
        """A ``ray.data.Dataset`` of clips ({"video", "start", "frames"}) read by a
        datasource (:class:`~gopflow.dataset.ray_source.GopClipDatasource`): read tasks over
        contiguous groups of clips, spread over the cluster and streamed; nothing is read on
        the driver. Every node must see the archive at this path."""
        import ray.data

        from gopflow.dataset.ray_source import GOP_CACHE, GopClipDatasource

        sizes = {video: (gops[0].height, gops[0].width) for video, gops in self._by_video.items()}
        opener = functools.partial(cached_reader, self.root, GOP_CACHE)
        return ray.data.read_datasource(
            GopClipDatasource(opener, self.clips(clip_len, stride), clip_len, sizes))

    def verify(self) -> Iterator[tuple[GopRow, str | None]]:
        """Every GOP with None, or what is wrong with it (hash, decodability, frame count)."""
        for row in self.rows:
            try:
                frames = self._decode(row)
            except CorruptInputError as exc:
                yield row, str(exc)
                continue
            if len(frames) != row.frame_count:
                yield row, f"decodes to {len(frames)} frames, not {row.frame_count}"
            else:
                yield row, None


_READERS: dict[tuple[str, int], Dataset] = {}


def cached_reader(root: str, cache_gops: int = 0) -> Dataset:
    """One open :class:`Dataset` per archive (and GOP cache size) per process: workers
    reuse its index."""
    key = (root, cache_gops)
    if key not in _READERS:
        _READERS[key] = Dataset(root, cache_gops)
    return _READERS[key]


class TorchClips:
    """Map-style clips for a ``DataLoader``; picklable (workers reopen the archive)."""

    def __init__(self, root: str, clips: list[tuple[str, int]], clip_len: int) -> None:
        self.root = root
        self.items = clips
        self.clip_len = clip_len

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        import torch

        video, start = self.items[index]
        return torch.from_numpy(cached_reader(self.root).read(video, start, self.clip_len))
