"""CMAF pieces of a fragmented MP4: its init segment, its fragments, their timing, and the
RFC 6381 ``CODECS`` string of its track.

ffmpeg writes one fragmented MP4 per track (a fragment at every keyframe for video, one per
segment duration for audio, see :mod:`gopflow.media.ffmpeg`); here it is cut at top-level
box boundaries: ``ftyp`` + ``moov`` are the init segment, each ``moof`` + ``mdat`` pair a
fragment, and whole fragments are grouped into media segments. Only box headers, ``moov``
and ``moof`` are read, never the media data, so memory does not grow with the title. By
hand, because it is a byte split at box headers plus two fields (``mdhd``'s timescale,
``trun``'s sample count) that no maintained Python MP4 library exposes more simply; sample
timing comes from PyAV's demuxer.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO

import av

from gopflow.errors import CorruptInputError, InputError


@dataclass(frozen=True)
class Fragment:
    """One ``moof`` + ``mdat`` pair: its bytes' extent in the file and its samples, with
    the earliest presentation time and the end of the last sample (track time units)."""

    offset: int
    size: int
    samples: int
    start: int
    end: int


@dataclass(frozen=True)
class FragmentedTrack:
    """A fragmented MP4 with one track, taken apart."""

    path: str
    init: bytes
    fragments: tuple[Fragment, ...]
    timescale: int
    codecs: str
    kind: str
    width: int
    height: int
    sample_rate: int
    channels: int

    @property
    def samples(self) -> int:
        return sum(f.samples for f in self.fragments)


def boxes(
    data: bytes, start: int = 0, end: int | None = None
) -> Iterator[tuple[str, int, int, int]]:
    """ISO BMFF boxes in ``data[start:end]``: (type, offset, size, header size)."""
    end = len(data) if end is None else end
    pos = start
    while pos < end:
        if end - pos < 8:
            raise CorruptInputError(f"truncated box header at byte {pos}")
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if end - pos < 16:
                raise CorruptInputError(f"truncated box header at byte {pos}")
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise CorruptInputError(f"box {kind!r} at byte {pos} runs past its parent")
        yield kind.decode("latin-1"), pos, size, header
        pos += size


def _child(data: bytes, offset: int, size: int, header: int, kind: str) -> tuple[int, int, int]:
    for name, child, child_size, child_header in boxes(data, offset + header, offset + size):
        if name == kind:
            return child, child_size, child_header
    raise CorruptInputError(f"no {kind} box inside the box at byte {offset}")


def _trun_samples(data: bytes, offset: int, size: int, header: int) -> int:
    """Samples in a ``moof`` (sum over its ``traf``/``trun`` boxes; one track here)."""
    total = 0
    for name, traf, traf_size, traf_header in boxes(data, offset + header, offset + size):
        if name != "traf":
            continue
        for child, trun, _, trun_header in boxes(data, traf + traf_header, traf + traf_size):
            if child == "trun":
                # full box: version (1) + flags (3), then sample_count (4)
                total += struct.unpack_from(">I", data, trun + trun_header + 4)[0]
    return total


def codec_string(stream: av.stream.Stream) -> str:
    """The RFC 6381 codec string of a video or audio stream (see :func:`codec_string_of`)."""
    ctx = stream.codec_context
    tag = (ctx.codec_tag or "").strip("\0") if isinstance(ctx.codec_tag, str) else ""
    return codec_string_of(ctx.name, tag, bytes(ctx.extradata or b""))


def codec_string_of(name: str, tag: str, extra: bytes) -> str:
    """The RFC 6381 codec string of decoder ``name`` with sample-entry ``tag`` (``avc1``,
    ``hvc1``...), from its decoder configuration record ``extra`` (``avcC``, ``hvcC``,
    ``av1C``, AAC's AudioSpecificConfig)."""
    if name == "h264":
        if len(extra) < 4 or extra[0] != 1:
            raise InputError("H.264 track without an avcC record: cannot name its codec")
        return f"{tag or 'avc1'}.{extra[1]:02x}{extra[2]:02x}{extra[3]:02x}"
    if name == "hevc":
        if len(extra) < 13 or extra[0] != 1:
            raise InputError("HEVC track without an hvcC record: cannot name its codec")
        space, tier, profile = extra[1] >> 6, (extra[1] >> 5) & 1, extra[1] & 0x1F
        compat = int.from_bytes(extra[2:6], "big")
        reversed_compat = int(f"{compat:032b}"[::-1], 2)
        constraints = list(extra[6:12])
        while constraints and constraints[-1] == 0:
            constraints.pop()
        parts = [
            f"{tag or 'hvc1'}", f"{['', 'A', 'B', 'C'][space]}{profile}",
            f"{reversed_compat:X}", f"{'HL'[tier == 0]}{extra[12]}",
        ]
        parts += [f"{b:02X}" for b in constraints]
        return ".".join(parts)
    if name in ("av1", "libdav1d", "libaom-av1"):
        if len(extra) < 4 or extra[0] != 0x81:
            raise InputError("AV1 track without an av1C record: cannot name its codec")
        profile, level = extra[1] >> 5, extra[1] & 0x1F
        tier = "H" if extra[2] >> 7 else "M"
        depth = 12 if (extra[2] >> 5) & 1 else 10 if (extra[2] >> 6) & 1 else 8
        return f"av01.{profile}.{level:02d}{tier}.{depth:02d}"
    if name == "aac":
        if len(extra) < 2:
            raise InputError("AAC track without an AudioSpecificConfig: cannot name its codec")
        return f"mp4a.40.{extra[0] >> 3}"
    raise InputError(f"no streaming codec string for {name!r} (use H.264, HEVC, AV1 or AAC)")


def _top_level(handle: BinaryIO, path: str) -> Iterator[tuple[str, int, int, int]]:
    """Top-level boxes of an open file, read header by header (media data is skipped, so
    memory does not grow with the file)."""
    end = os.fstat(handle.fileno()).st_size
    pos = 0
    while pos < end:
        handle.seek(pos)
        head = handle.read(16)
        if len(head) < 8:
            raise CorruptInputError(f"{path}: truncated box header at byte {pos}")
        size, kind = struct.unpack_from(">I4s", head)
        header = 8
        if size == 1:
            if len(head) < 16:
                raise CorruptInputError(f"{path}: truncated box header at byte {pos}")
            size, header = struct.unpack_from(">Q", head, 8)[0], 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise CorruptInputError(f"{path}: box {kind!r} at byte {pos} runs past the file")
        yield kind.decode("latin-1"), pos, size, header
        pos += size


def _read_box(handle: BinaryIO, offset: int, size: int) -> bytes:
    handle.seek(offset)
    return handle.read(size)


def read_track(path: str) -> FragmentedTrack:
    """Take apart a one-track fragmented MP4 written by ffmpeg with ``empty_moov``."""
    init = bytearray()
    fragments: list[tuple[int, int, int]] = []
    moof: tuple[int, int, int] | None = None
    timescale = 0
    with open(path, "rb") as handle:
        for kind, offset, size, header in _top_level(handle, path):
            if kind in ("ftyp", "moov"):
                if fragments or moof:
                    raise CorruptInputError(f"{path}: {kind} after the first fragment")
                data = _read_box(handle, offset, size)
                init += data
                if kind == "moov":
                    trak = _child(data, 0, size, header, "trak")
                    mdia = _child(data, *trak, "mdia")
                    mdhd, _, mdhd_header = _child(data, *mdia, "mdhd")
                    version = data[mdhd + mdhd_header]
                    at = mdhd + mdhd_header + (20 if version == 1 else 12)
                    timescale = struct.unpack_from(">I", data, at)[0]
            elif kind == "moof":
                data = _read_box(handle, offset, size)
                moof = (offset, size, _trun_samples(data, 0, size, header))
            elif kind == "mdat":
                if moof is None:
                    raise CorruptInputError(f"{path}: mdat without a moof")
                fragments.append((moof[0], offset + size - moof[0], moof[2]))
                moof = None
    if not init or not timescale:
        raise CorruptInputError(f"{path}: no init segment (ftyp + moov) with a timescale")
    out: list[Fragment] = []
    with av.open(path) as container:
        stream = container.streams[0]
        if Fraction(stream.time_base) != Fraction(1, timescale):
            raise CorruptInputError(f"{path}: time base {stream.time_base} != 1/{timescale}")
        codecs = codec_string(stream)
        ctx = stream.codec_context
        kind = stream.type
        width = getattr(ctx, "width", 0) or 0
        height = getattr(ctx, "height", 0) or 0
        sample_rate = getattr(ctx, "sample_rate", 0) or 0
        channels = getattr(ctx, "channels", 0) or 0
        # Samples come in the order the fragments list them: each fragment takes the next
        # ``samples`` packets; its start is their earliest presentation time.
        pending = iter(fragments)
        current: tuple[int, int, int] | None = None
        taken, start, stop = 0, 0, 0
        for packet in container.demux(stream):
            if not packet.size or packet.pts is None:
                continue
            if current is None:
                current = next(pending, None)
                if current is None:
                    raise CorruptInputError(f"{path}: more samples than its fragments list")
                taken, start, stop = 0, int(packet.pts), 0
            pts = int(packet.pts)
            start = min(start, pts)
            stop = max(stop, pts + int(packet.duration or 0))
            taken += 1
            if taken == current[2]:
                out.append(Fragment(current[0], current[1], current[2], start, stop))
                current = None
    if current is not None or len(out) != len(fragments) or any(f[2] < 1 for f in fragments):
        raise CorruptInputError(f"{path}: fewer samples than its fragments list")
    return FragmentedTrack(path, bytes(init), tuple(out), timescale, codecs, kind,
                           width, height, sample_rate, channels)


def fragment_bytes(track: FragmentedTrack, first: int, last: int) -> bytes:
    """The bytes of fragments ``first``..``last`` (inclusive): one media segment."""
    start = track.fragments[first].offset
    end = track.fragments[last].offset + track.fragments[last].size
    with open(track.path, "rb") as handle:
        handle.seek(start)
        return handle.read(end - start)
