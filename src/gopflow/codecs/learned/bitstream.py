"""The gopflow learned-video bitstream: a header, then self-delimiting, checksummed units.

It writes format version 9, specified byte by byte in docs/gflv-format.md.

Layout (all integers big-endian)::

    header  b"GFLV" | version u8 | model-id length u8 | model id (UTF-8: name + ":" +
            weights sha256 prefix, never a list position) | width u32 | height u32 |
            fps numerator u32 | fps denominator u32 | GOP size u32 (the longest GOP) |
            frame count u32 | GOP count u32 | quality level u8 | intra offset u8 |
            CRC32 of everything before u32
    unit    kind u8 (I intra, P inter, Q inter at its own levels, S inter without residual,
            R refresh intra, E end) |
            frame index u32 |
            payload length u32 | payload | CRC32 of kind..payload u32
    end     one E unit with frame index = frame count and, as its payload, the stream check
            u32: CRC32 of the header's CRC and every frame unit's CRC, in file order

Key intra frames (I) are coded ``intra offset`` levels above the quality level (capped at the
codec's top level). Refresh units (R) are intra frames the encoder chose in place of inter
frames, coded at the quality level; each starts a closed GOP as an I unit does. A Q unit is an
inter frame whose payload starts with two level bytes of its own (0-based: motion or offsets,
then residual), chosen per frame by the encoder where the header's level is not the cheapest.
An S unit (skip) is an inter frame whose payload starts with one level byte (motion or
offsets) and carries the lead latent only; its residual latent is all zeros and costs
nothing, where a coded all-zero residual still pays for its hyperprior side information. The
lead level byte of Q and S units carries flags: :data:`PREDICTED_LEAD` (bit 7), the lead
latent is coded as its difference from the previous frame's decoded lead latent;
:data:`GLOBAL_LEAD` (bit 6), the lead latent is replaced by a 12-byte global (affine) motion
model that follows the level bytes, and the latent strings hold the residual alone (none in
an S unit); :data:`GRID_LEAD` (bit 5, only with :data:`GLOBAL_LEAD`), a grid of motion
corrections follows the global motion model
(:class:`gopflow.codecs.dvc.global_motion.GridMotion`), as deflated row differences or
rANS-coded (bit 7 of its block size byte; :mod:`gopflow.codecs.dvc.grid_coding`), whichever
is shorter. The reader also decodes versions 2 to 8, which lack some of these fields, units
and flags (docs/gflv-format.md, section 9, lists them).

The stream check (version 9) binds the header to the units: nothing in a unit records the
exact frame size (latents only give it rounded up to 64 pixels), the quality or the intra
offset, so a header edited with its own CRC recomputed would otherwise decode at another size
or quality without complaint. Frame sizes, frame counts and payload lengths are bounded
(:data:`MAX_SIDE`, :data:`MAX_PIXELS`, the file's size) before anything is allocated.

GOP structure: every intra (I or R) unit starts a closed GOP and only they
do, so scene-cut GOPs of any length (up to the header's GOP size) need no table; the reader
checks that the first unit is intra, that no GOP is longer than the GOP size and that the file has
the header's GOP count. :func:`scan_gops` lists each GOP's byte extent, so GOPs can be
decoded in parallel (:func:`read_gop`) without holding the file in memory.

Unlike CompressAI's ``examples/codec.py`` header (no magic, version or checksum, models by
dictionary position), a reader can tell a gopflow stream, its format version and the exact
weights it needs, and a truncated or corrupt file stops with a one-line error at the first
bad unit (after DCVC's ``stream_helper``: units per sequence, intra and inter data).
Payloads are opaque here: entropy-coded latent strings packed with :func:`pack_strings`.
"""

from __future__ import annotations

import enum
import io
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import BinaryIO

from gopflow.errors import CorruptInputError, UsageError
from gopflow.fileio import atomic_write

MAGIC = b"GFLV"
VERSION = 9
READABLE_VERSIONS = (2, 3, 4, 5, 6, 7, 8, 9)
CHECKED_VERSION = 9
"""The first version whose end unit carries the stream check (older ones end empty)."""
_HEAD = struct.Struct(">IIIIIIIB")
_OFFSET = struct.Struct(">B")
_UNIT = struct.Struct(">BII")
_CRC = struct.Struct(">I")
MAX_PAYLOAD = 1 << 30
MAX_SIDE = 1 << 14
"""The largest frame width or height a stream may declare (16384)."""
MAX_PIXELS = 1 << 25
"""The largest frame area (``width x height``) a stream may declare: 33.5 million pixels,
8K UHD (7680 x 4320) fits. A decoder allocates frames and latents from the header's size,
so a header must not be able to ask for more before any unit is read."""


def frame_size_fits(width: int, height: int) -> bool:
    """Whether a stream may declare ``width`` x ``height`` frames (:data:`MAX_SIDE`,
    :data:`MAX_PIXELS`): what a transcode to .gflv checks before it codes anything."""
    return max(width, height) <= MAX_SIDE and width * height <= MAX_PIXELS


MIN_UNIT = _UNIT.size + _CRC.size
"""Bytes of the smallest unit (an empty payload): a header's frame count must fit the file."""
_READ_CHUNK = 1 << 20
PREDICTED_LEAD = 0x80
"""Set in the lead level byte of a Q or S unit where the frame's lead latent (DVC motion) is
coded as its difference from the previous frame's decoded lead latent."""
GLOBAL_LEAD = 0x40
"""Set in the lead level byte of a Q or S unit where the frame's motion is a global motion
model (DVC; :mod:`gopflow.codecs.dvc.global_motion`) instead of a lead latent."""
GRID_LEAD = 0x20
"""Set with :data:`GLOBAL_LEAD` where a grid of motion corrections follows the
global motion model (:class:`gopflow.codecs.dvc.global_motion.GridMotion`)."""


class BitstreamError(CorruptInputError):
    """A learned bitstream is truncated, corrupt, or not a gopflow stream."""


class UnitKind(enum.IntEnum):
    """What a unit carries: a key intra frame (at the header's level plus its intra offset),
    an inter frame (at the header's level, at the levels its payload starts with, or without
    a residual at the motion level its payload starts with), a refresh intra frame (chosen by
    the encoder in place of an inter frame, coded at the inter frames' level) or the end
    marker."""

    INTRA = ord("I")
    INTER = ord("P")
    LEVELED_INTER = ord("Q")
    SKIP = ord("S")
    REFRESH = ord("R")
    END = ord("E")

    @property
    def starts_gop(self) -> bool:
        """Intra frames (key or refresh) start a closed GOP."""
        return self in (UnitKind.INTRA, UnitKind.REFRESH)

    @property
    def predicted(self) -> bool:
        """Inter frames (at the stream's levels or their own) predict from the previous."""
        return self in (UnitKind.INTER, UnitKind.LEVELED_INTER, UnitKind.SKIP)


@dataclass(frozen=True)
class StreamHeader:
    """Everything a decoder needs before the first frame."""

    model_id: str
    width: int
    height: int
    fps: Fraction
    gop_size: int
    """Frames in the longest GOP."""
    frame_count: int
    gop_count: int
    quality: int
    """The quality every GOP was coded at (``--quality``: 1 = lowest rate)."""
    intra_offset: int = 0
    """Key intra frames (I units) are coded this many levels above ``quality`` (capped at the
    top level); refresh units (R) stay at ``quality``."""
    version: int = field(default=VERSION, compare=False)
    """The format version the header was read in (:meth:`to_bytes` writes :data:`VERSION`)."""
    checksum: int | None = field(default=None, compare=False, repr=False)
    """The CRC the header was read with (``None``: one to write, :meth:`to_bytes` computes
    it); the reader's stream check starts from it."""

    def __post_init__(self) -> None:
        encoded = self.model_id.encode()
        if not 0 < len(encoded) < 256:
            raise UsageError("a model id must be 1 to 255 bytes of UTF-8")
        for name in ("width", "height", "gop_size", "frame_count", "gop_count"):
            value = getattr(self, name)
            if not 0 < value < 1 << 32:
                raise UsageError(f"stream {name} out of range: {value}")
        if not 0 < self.quality < 256:
            raise UsageError(f"stream quality out of range: {self.quality}")
        if not 0 <= self.intra_offset < 256:
            raise UsageError(f"stream intra offset out of range: {self.intra_offset}")
        if self.gop_count > self.frame_count or self.gop_size > self.frame_count:
            raise UsageError(
                f"{self.gop_count} GOPs of up to {self.gop_size} frames do not fit "
                f"{self.frame_count} frames"
            )
        if self.gop_count * self.gop_size < self.frame_count:
            raise UsageError(
                f"{self.frame_count} frames do not fit {self.gop_count} GOPs of at most "
                f"{self.gop_size}"
            )
        if self.fps <= 0:
            raise UsageError(f"frame rate must be positive, got {self.fps}")
        if not frame_size_fits(self.width, self.height):
            raise UsageError(
                f"a {self.width}x{self.height} frame is too large for a stream (at most "
                f"{MAX_SIDE} a side and {MAX_PIXELS} pixels)"
            )

    def to_bytes(self) -> bytes:
        model = self.model_id.encode()
        body = (
            MAGIC + bytes([VERSION, len(model)]) + model
            + _HEAD.pack(self.width, self.height, self.fps.numerator, self.fps.denominator,
                         self.gop_size, self.frame_count, self.gop_count, self.quality)
            + _OFFSET.pack(self.intra_offset)
        )
        return body + _CRC.pack(zlib.crc32(body))


@dataclass(frozen=True)
class Unit:
    """One frame's coded data (or the end marker)."""

    kind: UnitKind
    frame: int
    payload: bytes

    def to_bytes(self) -> bytes:
        if len(self.payload) > MAX_PAYLOAD:
            raise UsageError(f"a unit payload of {len(self.payload)} bytes is too large")
        body = _UNIT.pack(int(self.kind), self.frame, len(self.payload)) + self.payload
        return body + _CRC.pack(zlib.crc32(body))


class _GopChecker:
    """Checks the GOP structure unit by unit (shared by the writer and the reader)."""

    def __init__(self, header: StreamHeader, fail: Callable[[str], Exception]) -> None:
        self.header = header
        self.fail = fail
        self.gops = 0
        self.length = 0

    def add(self, unit: Unit) -> bool:
        """Account for ``unit``; return True if it starts a GOP."""
        starts = unit.kind.starts_gop
        if unit.frame == 0 and not starts:
            raise self.fail("the first frame is not an intra frame")
        if starts:
            self.gops += 1
            self.length = 0
            if self.gops > self.header.gop_count:
                raise self.fail(f"more GOPs than the header's {self.header.gop_count}")
        self.length += 1
        if self.length > self.header.gop_size:
            raise self.fail(
                f"GOP {self.gops - 1} is longer than the header's GOP size {self.header.gop_size}"
            )
        return starts

    def finish(self) -> None:
        if self.gops != self.header.gop_count:
            raise self.fail(f"{self.gops} GOPs where the header says {self.header.gop_count}")


def gop_structure(kinds: Iterable[UnitKind]) -> tuple[int, int]:
    """``(GOP count, longest GOP)`` of frames of these kinds in order (an intra frame starts a
    GOP, so an all-intra stream has one-frame GOPs)."""
    count = longest = length = 0
    for kind in kinds:
        if kind.starts_gop:
            count, length = count + 1, 0
        length += 1
        longest = max(longest, length)
    return count, longest


def _chain(check: int, crc: int) -> int:
    """The stream check carried on past one unit with CRC ``crc`` (or the header's)."""
    return zlib.crc32(_CRC.pack(crc), check)


def write_stream(path: str, header: StreamHeader, units: Iterable[Unit]) -> int:
    """Write a complete stream atomically (temp file, then rename); return its size."""
    written = 0

    def write(handle: BinaryIO) -> None:
        nonlocal written
        frames = 0
        gops = _GopChecker(header, UsageError)
        head = header.to_bytes()
        written += handle.write(head)
        check = _chain(0, _CRC.unpack(head[-_CRC.size :])[0])
        for unit in units:
            if unit.kind == UnitKind.END:
                raise UsageError("the end unit is written by write_stream itself")
            if unit.frame != frames:
                raise UsageError(f"unit for frame {unit.frame} out of order (expected {frames})")
            if frames >= header.frame_count:
                raise UsageError(f"more than the header's {header.frame_count} frames")
            gops.add(unit)
            data = unit.to_bytes()
            written += handle.write(data)
            check = _chain(check, _CRC.unpack(data[-_CRC.size :])[0])
            frames += 1
        if frames != header.frame_count:
            raise UsageError(f"header says {header.frame_count} frames, {frames} were written")
        gops.finish()
        written += handle.write(Unit(UnitKind.END, frames, _CRC.pack(check)).to_bytes())

    atomic_write(path, write)
    return written


def _read_exact(handle: BinaryIO, size: int, what: str, name: str) -> bytes:
    """``size`` bytes, or a truncation error; read in chunks, so a corrupt length costs no
    more memory than the file holds."""
    if size <= _READ_CHUNK:
        data = handle.read(size)
    else:
        parts, left = [], size
        while left:
            part = handle.read(min(left, _READ_CHUNK))
            if not part:
                break
            parts.append(part)
            left -= len(part)
        data = b"".join(parts)
    if len(data) != size:
        raise BitstreamError(f"{name} is truncated: {what} needs {size} bytes, {len(data)} left")
    return data


def _bytes_left(handle: BinaryIO) -> int | None:
    """Bytes from the position to the end of a seekable stream (``None`` if it is not)."""
    try:
        if not handle.seekable():
            return None
        here = handle.tell()
        end = handle.seek(0, io.SEEK_END)
        handle.seek(here)
    except (OSError, ValueError):
        return None
    return end - here


def read_header(handle: BinaryIO, name: str = "stream") -> StreamHeader:
    """Read and check the header of a stream positioned at its start."""
    start = _read_exact(handle, 6, "the header", name)
    if start[:4] != MAGIC:
        raise BitstreamError(f"{name} is not a gopflow learned bitstream (bad magic)")
    if start[4] not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise BitstreamError(
            f"{name} has format version {start[4]}; this gopflow reads versions {readable}")
    model = _read_exact(handle, start[5], "the model id", name)
    has_offset = start[4] >= 3
    numbers = _read_exact(handle, _HEAD.size + has_offset * _OFFSET.size, "the header", name)
    (crc,) = _CRC.unpack(_read_exact(handle, _CRC.size, "the header checksum", name))
    if zlib.crc32(start + model + numbers) != crc:
        raise BitstreamError(f"{name} has a corrupt header (checksum mismatch)")
    width, height, num, den, gop, frames, gops, quality = _HEAD.unpack(numbers[: _HEAD.size])
    (offset,) = _OFFSET.unpack(numbers[_HEAD.size :]) if has_offset else (0,)
    try:
        return StreamHeader(
            model.decode(), width, height, Fraction(num, den), gop, frames, gops, quality, offset,
            start[4], crc,
        )
    except (UsageError, UnicodeDecodeError, ZeroDivisionError) as exc:
        raise BitstreamError(f"{name} has an invalid header: {exc}") from None


def _read_unit(handle: BinaryIO, expected: int, name: str) -> Unit:
    """One unit, its checksum checked, that must carry frame ``expected``."""
    return _read_checked_unit(handle, expected, name)[0]


def _read_checked_unit(handle: BinaryIO, expected: int, name: str) -> tuple[Unit, int]:
    """:func:`_read_unit` and the unit's CRC."""
    head = _read_exact(handle, _UNIT.size, f"unit {expected}", name)
    kind_value, frame, length = _UNIT.unpack(head)
    if length > MAX_PAYLOAD:
        raise BitstreamError(f"{name}: unit {expected} claims {length} bytes (corrupt)")
    payload = _read_exact(handle, length, f"unit {expected}", name)
    (crc,) = _CRC.unpack(_read_exact(handle, _CRC.size, f"unit {expected}'s checksum", name))
    if zlib.crc32(head + payload) != crc:
        raise BitstreamError(f"{name}: unit {expected} is corrupt (checksum mismatch)")
    try:
        kind = UnitKind(kind_value)
    except ValueError:
        raise BitstreamError(f"{name}: unit {expected} has unknown kind {kind_value}") from None
    if frame != expected:
        raise BitstreamError(f"{name}: unit for frame {frame} where {expected} was due")
    return Unit(kind, frame, payload), crc


def _units_at(
    handle: BinaryIO, header: StreamHeader, name: str
) -> Iterator[tuple[int, bool, Unit]]:
    """``(offset, starts a GOP, unit)`` for every frame unit; checks the end and structure
    (and first, where the stream is seekable, that the rest of it can hold the frames the
    header counts)."""
    left = _bytes_left(handle)
    if left is not None and left < MIN_UNIT * (header.frame_count + 1):
        raise BitstreamError(
            f"{name} is truncated: its header counts {header.frame_count} frames, the "
            f"{left} bytes after it cannot hold them"
        )
    gops = _GopChecker(header, lambda text: BitstreamError(f"{name}: {text}"))
    expected = 0
    seed = header.checksum
    if seed is None:  # a header built here, not read: the CRC it would be written with
        seed = _CRC.unpack(header.to_bytes()[-_CRC.size :])[0]
    check = _chain(0, seed)
    while True:
        offset = handle.tell()
        unit, crc = _read_checked_unit(handle, expected, name)
        if unit.kind == UnitKind.END:
            if unit.frame != header.frame_count:
                raise BitstreamError(
                    f"{name} ends after {unit.frame} frames; its header says {header.frame_count}"
                )
            _check_end(unit, header, check, name)
            gops.finish()
            return
        if expected >= header.frame_count:
            raise BitstreamError(f"{name} has more frames than its header's {header.frame_count}")
        check = _chain(check, crc)
        yield offset, gops.add(unit), unit
        expected += 1


def _check_end(unit: Unit, header: StreamHeader, check: int, name: str) -> None:
    """The end unit's payload: empty before :data:`CHECKED_VERSION`, then the stream check,
    which must match the header and the units read."""
    if header.version < CHECKED_VERSION:
        if unit.payload:
            raise BitstreamError(f"{name}: its end unit has a payload (format version "
                                 f"{header.version} has none)")
        return
    if len(unit.payload) != _CRC.size:
        raise BitstreamError(f"{name}: its end unit holds {len(unit.payload)} bytes; the stream "
                             f"check is {_CRC.size}")
    if _CRC.unpack(unit.payload)[0] != check:
        raise BitstreamError(
            f"{name}: its header does not belong to its units (stream check mismatch: the "
            "header or a unit was changed after the stream was written)"
        )


def read_units(handle: BinaryIO, header: StreamHeader, name: str = "stream") -> Iterator[Unit]:
    """Yield every frame unit in order, checking each checksum and the GOP structure; stop
    at the end unit."""
    for _, _, unit in _units_at(handle, header, name):
        yield unit


@dataclass(frozen=True)
class GopExtent:
    """Where one GOP's units lie in a stream file."""

    index: int
    first_frame: int
    frames: int
    offset: int
    size: int


def scan_gops(handle: BinaryIO, header: StreamHeader, name: str = "stream") -> list[GopExtent]:
    """Check a whole stream (checksums, structure, end) and list its GOPs' byte extents.

    Reads the payloads once to check them but keeps none: memory stays constant.
    """
    extents: list[GopExtent] = []
    start = first = end = 0
    for offset, starts, unit in _units_at(handle, header, name):
        if starts and unit.frame:
            extents.append(
                GopExtent(len(extents), first, unit.frame - first, start, offset - start)
            )
        if starts:
            start, first = offset, unit.frame
        end = offset + MIN_UNIT + len(unit.payload)
    extents.append(GopExtent(len(extents), first, header.frame_count - first, start, end - start))
    return extents


def read_gop(handle: BinaryIO, extent: GopExtent, name: str = "stream") -> list[Unit]:
    """The units of one GOP listed by :func:`scan_gops` (checksums checked again)."""
    handle.seek(extent.offset)
    units = [_read_unit(handle, extent.first_frame + i, name) for i in range(extent.frames)]
    if handle.tell() != extent.offset + extent.size:
        raise BitstreamError(f"{name}: GOP {extent.index} does not end where it was listed")
    if not units[0].kind.starts_gop or any(not u.kind.predicted for u in units[1:]):
        raise BitstreamError(f"{name}: GOP {extent.index} is not one intra frame then inter")
    return units


def units_from_bytes(data: bytes, first_frame: int, name: str = "segment") -> list[Unit]:
    """Parse a run of serialised units (``Unit.to_bytes`` joined) starting at ``first_frame``."""
    handle = io.BytesIO(data)
    units: list[Unit] = []
    while handle.tell() < len(data):
        units.append(_read_unit(handle, first_frame + len(units), name))
    return units


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(handle: io.BytesIO) -> int:
    value, shift = 0, 0
    while True:
        raw = handle.read(1)
        if not raw:
            raise BitstreamError("a frame payload is truncated (inside a length)")
        value |= (raw[0] & 0x7F) << shift
        if value >> 64:
            raise BitstreamError("a frame payload has a malformed length")
        if not raw[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise BitstreamError("a frame payload has a malformed length")


def pack_strings(groups: Sequence[Sequence[bytes]], shape: Sequence[int]) -> bytes:
    """Entropy-coded strings (CompressAI's ``compress()`` output: one list per latent) and
    the latent's spatial shape, as one self-delimiting payload."""
    out = bytearray(_varint(len(shape)))
    for size in shape:
        out += _varint(size)
    out += _varint(len(groups))
    for group in groups:
        out += _varint(len(group))
        for item in group:
            out += _varint(len(item)) + item
    return bytes(out)


def unpack_strings(payload: bytes) -> tuple[list[list[bytes]], list[int]]:
    """The inverse of :func:`pack_strings`."""
    handle = io.BytesIO(payload)
    shape = [_read_varint(handle) for _ in range(_read_varint(handle))]
    groups: list[list[bytes]] = []
    for _ in range(_read_varint(handle)):
        group = []
        for _ in range(_read_varint(handle)):
            size = _read_varint(handle)
            if size > len(payload) - handle.tell():  # before reading: it may not fit a read
                raise BitstreamError("a frame payload is truncated (inside a string)")
            item = handle.read(size)
            group.append(item)
        groups.append(group)
    if handle.read(1):
        raise BitstreamError("a frame payload has trailing bytes")
    return groups, shape
