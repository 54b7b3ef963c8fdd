"""Structure-aware fuzzing of the .gflv reader and decoder (shared by
``tests/unit/test_gflv_fuzz.py`` and ``bench/fuzz_gflv.py``).

The target (:func:`decode_stream`) does what ``gopflow decode`` does, in process: read and
check the header, scan every unit, check the model id and quality against the codec, then
decode every GOP with it (CompressAI's entropy decoding, DVC/FVC motion, grids, synthesis)
and check the frames' count and shape. An input may decode, or stop with a
:class:`~gopflow.errors.GopflowError`; any other exception is a crash.

The mutator (:func:`mutate`) parses a stream into header fields and units (CRCs ignored),
changes fields, unit kinds, indexes and order, level and flag bytes, global motion models
and grids, the varints and strings of the latent containers, or raw payload bytes, and
then (mostly) makes the stream consistent again: frame indexes, the header's frame and GOP
counts, every CRC and the end unit's stream check. Mutated streams so get past the
checksums into payload parsing and the decoder; a share keep stale counts or CRCs, for the
container's own checks.

The codecs are the small untrained models of ``tests/unit/test_learned_codec.py`` (same
archs, fixed seeds), built in process with fixed model ids, so the seed corpus in
``tests/fuzz/corpus`` (:func:`make_corpus`) decodes with them whatever the weights' file
bytes would hash to.
"""

from __future__ import annotations

import contextlib
import functools
import io
import random
import signal
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gopflow.codecs.learned.api import CodedFrame
from gopflow.codecs.learned.bitstream import (
    GLOBAL_LEAD,
    GRID_LEAD,
    MAGIC,
    PREDICTED_LEAD,
    StreamHeader,
    Unit,
    UnitKind,
    gop_structure,
    read_gop,
    read_header,
    scan_gops,
    write_stream,
)
from gopflow.codecs.learned.engine import GopCodec, build_codec_model, pad_to, to_tensor
from gopflow.errors import GopflowError
from gopflow.jobs.decode import check_stream_codec, stream_codec_name
from small_codecs import INTER_ARCHS, SMALL_INTRA

CORPUS = Path(__file__).resolve().parent / "corpus"
NAME = "fuzz.gflv"
MODEL_IDS = {"intra": "intra:f022f022f022",
             "dvc": "dvc:f022f022f0d1+f022f022f022",
             "fvc": "fvc:f022f022f0f1+f022f022f022"}
MAX_DECODE_AREA = 256 * 256
"""Padded frame area the harness still decodes (larger headers are parsed and scanned
only: decoding them takes the same code paths, slower)."""
PER_INPUT_SECONDS = 20.0
"""An input taking longer is a hang."""


class FuzzHang(Exception):
    """An input ran past :data:`PER_INPUT_SECONDS` (not a GopflowError: a finding)."""


def _model(arch: dict[str, Any], seed: int) -> Any:
    torch.manual_seed(seed)
    model = build_codec_model(arch)
    model.eval()
    model.update()
    return model


@functools.cache
def codecs() -> dict[str, GopCodec]:
    """The three small codecs, by codec name (decoders: no encoder decisions)."""
    intra = _model(SMALL_INTRA, 0)
    built = {"intra": GopCodec("intra", intra, None, MODEL_IDS["intra"])}
    for seed, (name, arch) in enumerate(INTER_ARCHS.items(), start=1):
        built[name] = GopCodec(name, intra, _model(arch, seed), MODEL_IDS[name])
    return built


def decode_stream(data: bytes, available: dict[str, GopCodec] | None = None) -> int:
    """Read, scan and decode a whole stream as ``gopflow decode`` does (in process, one GOP
    after another); the number of frames decoded (0 for a frame larger than
    :data:`MAX_DECODE_AREA`, scanned but not decoded). Invalid input raises a GopflowError;
    anything else is a bug (frames of the wrong count or shape: AssertionError)."""
    available = available if available is not None else codecs()
    handle = io.BytesIO(data)
    header = read_header(handle, NAME)
    extents = scan_gops(handle, header, NAME)
    codec = available[stream_codec_name(header, NAME)]
    check_stream_codec(header, codec, NAME)
    step = codec.multiple
    if (-(-header.width // step) * step) * (-(-header.height // step) * step) > MAX_DECODE_AREA:
        return 0
    count = 0
    for extent in extents:
        units = read_gop(handle, extent, NAME)
        frames = codec.decode_gop([CodedFrame(unit.kind, unit.payload) for unit in units],
                                  header.width, header.height, header.quality,
                                  header.intra_offset)
        assert len(frames) == extent.frames, (len(frames), extent)
        for frame in frames:
            assert frame.shape == (header.height, header.width, 3), frame.shape
            assert frame.dtype == np.uint8
        count += len(frames)
    assert count == header.frame_count
    return count


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`FuzzHang` in the main thread after ``seconds`` (Python code only; a
    hang inside C code is caught by libFuzzer's ``-timeout`` or the caller's watchdog)."""

    def expire(signum: int, frame: Any) -> None:
        raise FuzzHang(f"an input ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_one(data: bytes, limit: float | None = PER_INPUT_SECONDS) -> str:
    """The fuzz target: ``"ok"`` or the GopflowError's class name; other exceptions (and
    :class:`FuzzHang`) propagate."""
    try:
        if limit is None:
            decode_stream(data)
        else:
            with time_limit(limit):
                decode_stream(data)
    except GopflowError as exc:
        return type(exc).__name__
    return "ok"


# --- the stream as the mutator sees it ---------------------------------------------------

_NUMBERS = struct.Struct(">IIIIIIIB")
_FIELDS = ("width", "height", "fps_num", "fps_den", "gop_size", "frame_count", "gop_count",
           "quality", "intra_offset")


@dataclass
class Stream:
    """A parsed stream: header fields (as integers, CRC ignored), frame units as
    ``[kind byte, frame index, payload]``, the end unit (or None) and bytes after it."""

    version: int
    model: bytes
    numbers: list[int]
    units: list[list[Any]]
    end: list[Any] | None
    tail: bytes = b""
    fix_counts: bool = True
    fix_crcs: bool = True
    length_lies: dict[int, int] = field(default_factory=dict)


def parse(data: bytes) -> Stream | None:
    """``data`` as a :class:`Stream`, or None if it has no readable header. Units are read
    as far as their lengths allow (CRCs and kinds unchecked); the rest is the tail."""
    if len(data) < 6 or data[:4] != MAGIC:
        return None
    version, size = data[4], data[5]
    numbers_size = _NUMBERS.size + (1 if version >= 3 else 0)
    end_of_header = 6 + size + numbers_size + 4
    if len(data) < end_of_header:
        return None
    model = data[6 : 6 + size]
    raw = data[6 + size : 6 + size + numbers_size]
    numbers = [*_NUMBERS.unpack(raw[: _NUMBERS.size]), raw[-1] if version >= 3 else 0]
    stream = Stream(version, model, numbers, [], None)
    position = end_of_header
    while position + 9 <= len(data):
        kind, frame, length = struct.unpack(">BII", data[position : position + 9])
        if position + 13 + length > len(data):
            break
        payload = data[position + 9 : position + 9 + length]
        position += 13 + length
        if kind == UnitKind.END:
            stream.end = [kind, frame, payload]
            break
        stream.units.append([kind, frame, payload])
    stream.tail = data[position:]
    return stream


def serialize(stream: Stream) -> bytes:
    """The stream's bytes: with ``fix_counts`` the units renumbered and the header's frame
    count, GOP count and GOP size made to match them; with ``fix_crcs`` every CRC and the
    end unit's stream check (version 9 and later; an empty end payload before) recomputed,
    as the writer computes them."""
    numbers = [value % (1 << 32) for value in stream.numbers]
    numbers[7] %= 256
    numbers[8] %= 256
    units = stream.units
    if stream.fix_counts and units:
        for index, unit in enumerate(units):
            unit[1] = index
        kinds = [UnitKind(k) if k in UnitKind._value2member_map_ else UnitKind.INTER
                 for k, _, _ in units]
        gops, longest = gop_structure(kinds)
        gops = max(gops, 1)
        numbers[4] = min(max(longest, -(-len(units) // gops)), len(units))
        numbers[5], numbers[6] = len(units), gops
    body = MAGIC + bytes([stream.version % 256, len(stream.model) % 256]) + stream.model
    body += _NUMBERS.pack(*numbers[:8])
    if stream.version >= 3:
        body += bytes([numbers[8]])
    header_crc = zlib.crc32(body) if stream.fix_crcs else zlib.crc32(body) ^ 1
    out = bytearray(body + struct.pack(">I", header_crc))
    check = zlib.crc32(struct.pack(">I", header_crc))
    for index, (kind, frame, payload) in enumerate(units):
        length = stream.length_lies.get(index, len(payload))
        head = struct.pack(">BII", kind % 256, frame % (1 << 32), length % (1 << 32))
        crc = zlib.crc32(head + payload)
        if not stream.fix_crcs and index == len(units) - 1:
            crc ^= 0x80
        out += head + payload + struct.pack(">I", crc)
        check = zlib.crc32(struct.pack(">I", crc), check)
    if stream.end is not None:
        kind, frame, payload = stream.end
        if stream.fix_counts:
            kind, frame = UnitKind.END, len(units)
        if stream.fix_crcs:
            payload = struct.pack(">I", check) if stream.version >= 9 else b""
        head = struct.pack(">BII", kind % 256, frame % (1 << 32), len(payload))
        out += head + payload + struct.pack(">I", zlib.crc32(head + payload))
    return bytes(out) + stream.tail


# --- payload structure ---------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    value = max(value, 0)
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def container_start(kind: int, payload: bytes) -> int | None:
    """Where the latent string container of a unit's payload starts (after level bytes
    and motion models), or None where the payload does not say."""
    if kind in (UnitKind.INTRA, UnitKind.REFRESH, UnitKind.INTER):
        return 0
    if kind not in (UnitKind.LEVELED_INTER, UnitKind.SKIP) or not payload:
        return None
    start = 2 if kind == UnitKind.LEVELED_INTER else 1
    if payload[0] & GLOBAL_LEAD:
        start += 12
        if payload[0] & GRID_LEAD:
            if len(payload) < start + 3:
                return None
            start += 3 + struct.unpack(">H", payload[start + 1 : start + 3])[0]
    return start if start <= len(payload) else None


def parse_container(data: bytes) -> list[list[Any]] | None:
    """A string container as tokens ``["int", value]`` and ``["str", bytes]`` (a string's
    length varint is implied), or None where it does not parse."""
    tokens: list[list[Any]] = []
    handle = io.BytesIO(data)

    def varint() -> int:
        value = shift = 0
        while True:
            raw = handle.read(1)
            if not raw or shift > 63:
                raise ValueError
            value |= (raw[0] & 0x7F) << shift
            if not raw[0] & 0x80:
                return value
            shift += 7

    try:
        dims = varint()
        tokens.append(["int", dims])
        for _ in range(min(dims, 8)):
            tokens.append(["int", varint()])
        groups = varint()
        tokens.append(["int", groups])
        for _ in range(min(groups, 8)):
            strings = varint()
            tokens.append(["int", strings])
            for _ in range(min(strings, 8)):
                size = varint()
                if size > len(data) - handle.tell():
                    return None
                item = handle.read(size)
                tokens.append(["str", item])
    except ValueError:
        return None
    rest = handle.read()
    if rest:
        tokens.append(["raw", rest])
    return tokens


def pack_container(tokens: list[list[Any]]) -> bytes:
    out = bytearray()
    for kind, value in tokens:
        if kind == "int":
            out += _varint(value)
        elif kind == "str":
            out += _varint(len(value)) + value
        else:
            out += value
    return bytes(out)


# --- mutations ---------------------------------------------------------------------------

INTERESTING = (0, 1, 2, 3, 4, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 255, 256, 1023,
               4096, 16383, 16384, 16385, 60000, 65535, 65536, 1 << 25, (1 << 31) - 1,
               1 << 31, (1 << 32) - 1)


def _number(rng: random.Random, old: int) -> int:
    choice = rng.random()
    if choice < 0.4:
        return old + rng.choice((-64, -16, -2, -1, 1, 2, 16, 64))
    if choice < 0.8:
        return rng.choice(INTERESTING)
    return rng.getrandbits(rng.choice((8, 16, 32)))


def _flip(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return bytes([rng.getrandbits(8)])
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 4))):
        position = rng.randrange(len(out))
        if rng.random() < 0.5:
            out[position] ^= 1 << rng.randrange(8)
        else:
            out[position] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.getrandbits(8)))
    return bytes(out)


def _bytes_edit(rng: random.Random, data: bytes) -> bytes:
    """Flips, inserts, deletes, truncates, extends or copies a range."""
    choice = rng.randrange(6)
    if choice == 0 or not data:
        return _flip(rng, data)
    position = rng.randrange(len(data) + 1)
    if choice == 1:
        return data[:position] + rng.randbytes(rng.choice((1, 2, 4, 8))) + data[position:]
    if choice == 2:
        return data[:position] + data[position + rng.choice((1, 2, 4, 8)) :]
    if choice == 3:
        return data[:position]
    if choice == 4:
        return data + rng.choice((bytes(4), rng.randbytes(4), rng.randbytes(rng.randrange(64))))
    size = rng.randrange(1, 16)
    source = rng.randrange(len(data))
    return data[:position] + data[source : source + size] + data[position + size :]


def _mutate_container(rng: random.Random, payload: bytes, start: int,
                      donors: list[bytes]) -> bytes:
    tokens = parse_container(payload[start:])
    if not tokens:
        return _bytes_edit(rng, payload)
    index = rng.randrange(len(tokens))
    kind, value = tokens[index]
    if kind == "int":
        huge = rng.random() < 0.1  # 9 to 11 byte varints: past 64 bits
        tokens[index][1] = rng.choice((1 << 63, (1 << 64) - 1, 1 << 64, 1 << 70)) if huge else (
            max(0, _number(rng, value)))
    elif kind == "str":
        choice = rng.randrange(5)
        if choice == 0:
            tokens[index][1] = _flip(rng, value)
        elif choice == 1:
            tokens[index][1] = value[: max(len(value) - 4 * rng.randint(1, 2), 0)]
        elif choice == 2:
            tokens[index][1] = value + rng.choice((bytes(4), rng.randbytes(4)))
        elif choice == 3:
            strings = [t for d in donors for t in (parse_container(d) or []) if t[0] == "str"]
            if strings:
                tokens[index][1] = rng.choice(strings)[1]
        else:
            others = [i for i, t in enumerate(tokens) if t[0] == "str" and i != index]
            if others:
                other = rng.choice(others)
                tokens[index][1], tokens[other][1] = tokens[other][1], value
    else:
        tokens[index][1] = _bytes_edit(rng, value)
    return payload[:start] + pack_container(tokens)


def _mutate_levels(rng: random.Random, kind: int, payload: bytes) -> bytes:
    if not payload or kind not in (UnitKind.LEVELED_INTER, UnitKind.SKIP):
        return payload
    out = bytearray(payload)
    choice = rng.randrange(4)
    if choice == 0:
        out[0] ^= rng.choice((PREDICTED_LEAD, GLOBAL_LEAD, GRID_LEAD, GLOBAL_LEAD | GRID_LEAD))
    elif choice == 1:
        out[0] = (out[0] & 0xE0) | rng.randrange(32)
    elif choice == 2 and len(out) > 1 and kind == UnitKind.LEVELED_INTER:
        out[1] = rng.choice((0, 1, 2, 3, 4, 5, 255))
    else:
        out[0] = rng.getrandbits(8)
    return bytes(out)


def _mutate_motion(rng: random.Random, kind: int, payload: bytes) -> bytes:
    """Global motion parameters, or a grid's block byte, length or coded bytes."""
    start = {UnitKind.LEVELED_INTER: 2, UnitKind.SKIP: 1}.get(UnitKind(kind)) if (
        kind in UnitKind._value2member_map_) else None
    if start is None or not payload or not payload[0] & GLOBAL_LEAD:
        return payload
    out = bytearray(payload)
    grid = bool(payload[0] & GRID_LEAD) and len(out) >= start + 15
    choice = rng.randrange(4 if grid else 1)
    if choice == 0:
        if len(out) < start + 12:
            return payload
        slot = start + 2 * rng.randrange(6)
        out[slot : slot + 2] = struct.pack(">h", rng.choice(
            (0, 1, -1, 64, -64, 32767, -32768, rng.randrange(-32768, 32768))))
    elif choice == 1:
        out[start + 12] = rng.choice((0, 1, 2, 4, 0x7F, 0x80, 0x81, 0x82, 0x84, 0xFF,
                                      out[start + 12] ^ 0x80))
    elif choice == 2:
        out[start + 13 : start + 15] = struct.pack(">H", _number(rng, 0) % 65536)
    else:
        grid_start = start + 15
        length = struct.unpack(">H", bytes(out[start + 13 : start + 15]))[0]
        coded = bytes(out[grid_start : grid_start + length])
        edited = _bytes_edit(rng, coded)
        out[start + 13 : start + 15] = struct.pack(">H", len(edited) % 65536)
        out[grid_start : grid_start + length] = edited
    return bytes(out)


def mutate(data: bytes, rng: random.Random, max_size: int = 1 << 20,
           donors: list[bytes] | None = None,
           raw: Callable[[bytes], bytes] | None = None) -> bytes:
    """One structure-aware mutation of ``data`` (a few edits, then consistency restored
    mostly). ``donors``: other streams to splice units and strings from; ``raw``: the
    fallback for input that does not parse (atheris' own mutator), byte flips without."""
    stream = parse(data)
    donors = donors or []
    if stream is None or rng.random() < 0.03:
        out = raw(data) if raw is not None else _bytes_edit(rng, data)
        return out[:max_size]
    donor_units = [u for d in donors if (s := parse(d)) is not None for u in s.units]
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        _edit(rng, stream, donor_units)
    intra = [i for i, unit in enumerate(stream.units)
             if unit[0] in (UnitKind.INTRA, UnitKind.REFRESH)]
    if intra and intra[0] and rng.random() < 0.8:  # mostly keep a stream that opens a GOP
        stream.units.insert(0, stream.units.pop(intra[0]))
    roll = rng.random()
    stream.fix_counts = roll > 0.08
    stream.fix_crcs = roll > 0.03
    return serialize(stream)[:max_size]


def _edit(rng: random.Random, stream: Stream, donor_units: list[list[Any]]) -> None:
    units = stream.units
    choice = rng.random()
    unit = rng.choice(units) if units else None
    if choice < 0.12:  # a header field
        slot = rng.randrange(len(_FIELDS))
        stream.numbers[slot] = _number(rng, stream.numbers[slot])
    elif choice < 0.15:
        stream.version = rng.choice((2, 3, 7, 8, 9, 9, 10, rng.getrandbits(8)))
    elif choice < 0.18:
        if rng.random() < 0.5:
            stream.model = rng.choice(list(MODEL_IDS.values())).encode()
        else:
            stream.model = _bytes_edit(rng, stream.model)[:255]
    elif choice < 0.25 and unit is not None:  # a unit's kind
        unit[0] = rng.choice([int(k) for k in UnitKind] + [rng.getrandbits(8)])
    elif choice < 0.45 and unit is not None:  # the latent strings
        start = container_start(unit[0], unit[2])
        if start is None:
            unit[2] = _bytes_edit(rng, unit[2])
        else:
            unit[2] = _mutate_container(rng, unit[2], start, [u[2] for u in donor_units])
    elif choice < 0.55 and unit is not None:
        unit[2] = _mutate_levels(rng, unit[0], unit[2])
    elif choice < 0.63 and unit is not None:
        unit[2] = _mutate_motion(rng, unit[0], unit[2])
    elif choice < 0.75 and unit is not None:  # raw payload bytes
        unit[2] = _bytes_edit(rng, unit[2])
    elif choice < 0.87 and units:  # unit order
        action = rng.randrange(4)
        i, j = rng.randrange(len(units)), rng.randrange(len(units))
        if action == 0:
            units[i], units[j] = units[j], units[i]
        elif action == 1:
            units.insert(j, list(units[i]))
        elif action == 2 and len(units) > 1:
            del units[i]
        else:
            units.insert(j, units.pop(i))
    elif choice < 0.93 and donor_units:  # a unit from another stream
        donor = list(rng.choice(donor_units))
        if units and rng.random() < 0.5:
            units[rng.randrange(len(units))] = donor
        else:
            units.insert(rng.randrange(len(units) + 1), donor)
    elif choice < 0.96 and unit is not None:
        unit[1] = _number(rng, unit[1])
        stream.fix_counts = False
    elif units:
        stream.length_lies[rng.randrange(len(units))] = _number(rng, 0)


def crossover(first: bytes, second: bytes, rng: random.Random, max_size: int) -> bytes:
    """The header of one stream with units from both (then made consistent)."""
    a, b = parse(first), parse(second)
    if a is None or b is None or not a.units or not b.units:
        return mutate(first, rng, max_size, [second])
    cut_a, cut_b = rng.randrange(len(a.units) + 1), rng.randrange(len(b.units) + 1)
    a.units = a.units[:cut_a] + [list(u) for u in b.units[cut_b:]]
    return serialize(a)[:max_size]


def load_corpus() -> list[bytes]:
    return [path.read_bytes() for path in sorted(CORPUS.glob("*.gflv"))]


# --- the seed corpus ---------------------------------------------------------------------


def _frames(count: int, height: int, width: int, seed: int = 7) -> list[np.ndarray]:
    """A moving smooth pattern with texture (test_learned_codec's), so motion is coded."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    noise = rng.integers(0, 40, size=(height, width, 3)).astype(np.float32)
    frames = []
    for t in range(count):
        base = 120 + 80 * np.sin((xx + 3 * t) / 9.0)[..., None] * np.cos(yy / 7.0)[..., None]
        frame = base + np.roll(noise, 2 * t, axis=1) * np.array([1.0, 0.5, 0.2])
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def _inter_frame(codec: GopCodec, plan: str, x: torch.Tensor, state: Any, level: int,
                 frame: np.ndarray) -> CodedFrame:
    """A P frame coded the way ``plan`` names: ``P`` (stream levels), ``Q`` (levels one
    up / one down), ``S`` (skip), ``Qp``/``Sp`` (predicted motion), ``G``/``GS`` (global
    motion with / without residual), ``GG``/``GGS`` (with a correction grid), ``GGZ``
    (a zero grid: deflate-coded), ``GGR`` (a noisy 16-px grid: rANS-coded)."""
    from gopflow.codecs.dvc.global_motion import GlobalMotion, GridMotion

    inter = codec.inter
    assert inter is not None
    skip = "S" in plan
    residuals = [] if skip else ([max(level - 1, 0)] if plan.startswith("Q") else [level])
    lead = min(level + 1, codec.levels - 1) if plan.startswith("Q") else level
    if plan.startswith("G"):
        motion = None
        if plan in ("GGZ", "GGR"):  # a zero grid (deflated), a noisy 16-px one (rANS)
            block = 32 if plan == "GGZ" else 16
            rows, cols = -(-x.shape[-2] // block), -(-x.shape[-1] // block)
            noise = np.random.default_rng(1).laplace(0.0, 1.5, 2 * rows * cols)
            values = np.zeros(2 * rows * cols) if plan == "GGZ" else np.round(noise)
            motion = GridMotion(GlobalMotion(3, -2, 0, 0, 0, 0), block, rows, cols,
                                values.astype(np.int8).tobytes())
        candidates = list(inter.compress_global(  # type: ignore[attr-defined]
            x, state, lead, residuals, (0.5,), skip, motion))
        grid = plan.startswith("GG")
        best = next(c for c in candidates if c.lead_grid == grid
                    and (c.residual_level is None) == skip)
    else:
        best = next(c for c in inter.compress_inter(
            x, state, [lead], residuals, (0.5,), skip_residual=skip,
            predict_lead=plan.endswith("p")) if (c.residual_level is None) == skip)
    flags = ((PREDICTED_LEAD if best.lead_predicted else 0)
             | (GLOBAL_LEAD if best.lead_global else 0) | (GRID_LEAD if best.lead_grid else 0))
    byte = best.lead_level | flags
    if best.residual_level is None:
        return CodedFrame(UnitKind.SKIP, bytes((byte,)) + best.payload)
    if (byte, best.residual_level) == (level, level):
        return CodedFrame(UnitKind.INTER, best.payload)
    return CodedFrame(UnitKind.LEVELED_INTER, bytes((byte, best.residual_level)) + best.payload)


def encode_plan(codec: GopCodec, frames: list[np.ndarray], plans: list[str], quality: int,
                intra_offset: int) -> list[CodedFrame]:
    """Frames coded by the plan (``I``, ``R`` or a :func:`_inter_frame` plan each), each
    decoded right after, as the encoder does, so the decoder's state follows."""
    level = codec.quality_index(quality)
    key = min(level + intra_offset, codec.levels - 1)
    coded: list[CodedFrame] = []
    state: Any = None
    from gopflow.codecs.learned.engine import codec_threads

    with codec_threads(), torch.no_grad():
        for frame, plan in zip(frames, plans, strict=True):
            x = pad_to(to_tensor(frame), codec.multiple)
            if plan == "I":
                item = CodedFrame(UnitKind.INTRA, codec.intra.compress(x, key))
            elif plan == "R":
                item = CodedFrame(UnitKind.REFRESH, codec.intra.compress(x, level))
            else:
                item = _inter_frame(codec, plan, x, state, level, frame)
            _, state = codec._decode(item, state, (x.shape[-2], x.shape[-1]), level, key)
            coded.append(item)
    return coded


CORPUS_PLANS: tuple[tuple[str, str, int, int, int, int, str], ...] = (
    # file name, codec, width, height, quality, intra offset, frame plans
    ("intra-16x16-q1", "intra", 16, 16, 1, 0, "I I"),
    ("intra-33x17-q4", "intra", 33, 17, 4, 0, "I"),
    ("dvc-48x32-p", "dvc", 48, 32, 2, 1, "I P P"),
    ("dvc-64x48-qs", "dvc", 64, 48, 2, 1, "I Q S"),
    ("dvc-64x48-predicted", "dvc", 64, 48, 3, 0, "I P Qp Sp"),
    ("dvc-64x48-global", "dvc", 64, 48, 2, 1, "I G GS"),
    ("dvc-64x48-grid", "dvc", 64, 48, 2, 1, "I GG GGS GGZ GGR"),
    ("dvc-40x24-refresh", "dvc", 40, 24, 2, 1, "I P R P"),
    ("fvc-32x32-p", "fvc", 32, 32, 1, 0, "I P P"),
    ("fvc-64x48-qs", "fvc", 64, 48, 4, 0, "I Q S"),
    ("fvc-48x48-refresh", "fvc", 48, 48, 2, 1, "I R S"),
)


def old_version(data: bytes, version: int) -> bytes:
    """A version 9 stream rewritten as an older version (no stream check; version 2:
    no intra offset byte)."""
    stream = parse(data)
    assert stream is not None
    stream.version = version
    return serialize(stream)


def make_corpus(directory: Path = CORPUS) -> list[Path]:
    """Write the seed streams (:data:`CORPUS_PLANS`, plus version 8 and version 2 copies
    of two of them) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    available = codecs()
    for seed, (name, codec_name, width, height, quality, offset, plans) in enumerate(
            CORPUS_PLANS):
        codec = available[codec_name]
        steps = plans.split()
        frames = _frames(len(steps), height, width, seed)
        coded = encode_plan(codec, frames, steps, quality, offset)
        kinds = [frame.kind for frame in coded]
        gops, longest = gop_structure(kinds)
        header = StreamHeader(codec.model_id, width, height, Fraction(25), longest, len(coded),
                              gops, quality, offset)
        path = directory / f"{name}.gflv"
        write_stream(str(path), header, [Unit(frame.kind, i, frame.payload)
                                         for i, frame in enumerate(coded)])
        written.append(path)
    for source, version in (("dvc-48x32-p", 8), ("intra-16x16-q1", 2)):
        path = directory / f"{source}-v{version}.gflv"
        path.write_bytes(old_version((directory / f"{source}.gflv").read_bytes(), version))
        written.append(path)
    return written
