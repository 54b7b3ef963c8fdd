"""The .gflv reader and decoder against edited and mutated real streams (tests/fuzz/corpus).

A short, deterministic run of the structure-aware fuzzer (``tests/fuzz/gflv_harness.py``;
no atheris needed): every mutated stream must decode, or stop with a GopflowError. The long,
coverage-guided run is ``bench/fuzz_gflv.py``.
"""

from __future__ import annotations

import collections
import faulthandler
import io
import random
import struct
import time
import zlib
from pathlib import Path

import pytest
import torch

from fuzz.gflv_harness import (
    CORPUS,
    CORPUS_PLANS,
    crossover,
    decode_stream,
    load_corpus,
    mutate,
    parse,
    run_one,
    serialize,
)
from gopflow.codecs.learned.bitstream import BitstreamError, read_header

torch.set_num_threads(1)
MUTATIONS = 300
SEED = 20240611


def _corpus() -> dict[str, bytes]:
    return {path.stem: path.read_bytes() for path in sorted(CORPUS.glob("*.gflv"))}


def _edit_header(data: bytes, **fields: int) -> bytes:
    """A real stream with header fields changed and its CRC recomputed as the writer
    computes it (zlib's CRC-32 of every header byte before it); the units untouched."""
    model = data[5]
    names = ["width", "height", "fps_num", "fps_den", "gop_size", "frame_count", "gop_count",
             "quality", "intra_offset"]
    numbers = list(struct.unpack(">IIIIIIIBB", data[6 + model : 36 + model]))
    for name, value in fields.items():
        numbers[names.index(name)] = value
    body = data[: 6 + model] + struct.pack(">IIIIIIIBB", *numbers)
    return body + struct.pack(">I", zlib.crc32(body)) + data[40 + model :]


def test_the_seed_corpus_is_small_real_and_decodes() -> None:
    corpus = _corpus()
    assert len(corpus) == len(CORPUS_PLANS) + 2
    assert sum(map(len, corpus.values())) < 50_000
    kinds = set()
    for name, data in corpus.items():
        header = read_header(io.BytesIO(data))
        assert decode_stream(data) == header.frame_count, name
        stream = parse(data)
        assert stream is not None and serialize(stream) == data  # the mutator's model
        kinds |= {chr(unit[0]) for unit in stream.units}
        flags = {unit[2][0] & 0xE0 for unit in stream.units if chr(unit[0]) in "QS"}
        if "grid" in name:
            assert 0x60 in flags
    assert kinds == set("IPQSR")
    # Older versions decode to the same frames as the version 9 stream they were made from.
    for old in ("dvc-48x32-p-v8", "intra-16x16-q1-v2"):
        assert corpus[old][4] in (8, 2)
        assert decode_stream(corpus[old]) == decode_stream(corpus[old.rsplit("-", 1)[0]])


@pytest.mark.parametrize("fields", [
    {"width": 47},  # 48 -> 47: the same 64-px padded frame, so the same latent shapes
    {"height": 33},
    {"quality": 3},
    {"intra_offset": 2},
    {"width": 65},  # another padded size as well
])
def test_a_real_stream_with_an_edited_header_is_refused(fields: dict[str, int]) -> None:
    data = _corpus()["dvc-48x32-p"]
    edited = _edit_header(data, **fields)
    header = read_header(io.BytesIO(edited))  # the header's own CRC is fine
    assert all(getattr(header, name) == value for name, value in fields.items())
    with pytest.raises(BitstreamError, match="header does not belong to its units") as caught:
        decode_stream(edited)
    assert "\n" not in str(caught.value)


def test_without_the_stream_check_a_header_edit_within_the_padding_goes_unseen() -> None:
    """Why version 9 binds the header: a version 8 stream decodes at the edited size."""
    edited = _edit_header(_corpus()["dvc-48x32-p-v8"], width=47)
    assert decode_stream(edited) == 3
    with pytest.raises(BitstreamError, match="frame payload is for latents"):
        decode_stream(_edit_header(_corpus()["dvc-48x32-p-v8"], width=65))


def test_a_huge_declared_frame_is_refused_before_allocation() -> None:
    data = _corpus()["intra-16x16-q1"]
    with pytest.raises(BitstreamError, match="too large"):
        decode_stream(_edit_header(data, width=60000, height=60000))


def test_mutated_streams_decode_or_fail_cleanly(tmp_path: Path) -> None:
    """A few hundred structure-aware mutations (seeded): no crash, no hang, and most of them
    get past the checksums (the mutator recomputes them) into payload parsing and the
    decoder."""
    seeds = load_corpus()
    rng = random.Random(SEED)
    outcomes: collections.Counter[str] = collections.Counter()
    started = time.perf_counter()
    faulthandler.dump_traceback_later(240, exit=True)  # a hang in C code ends the run
    try:
        for index in range(MUTATIONS):
            data = rng.choice(seeds)
            if rng.random() < 0.1:
                data = crossover(data, rng.choice(seeds), rng, 1 << 16)
            for _ in range(rng.choice((1, 1, 2, 4))):
                data = mutate(data, rng, 1 << 16, seeds)
            try:
                outcomes[run_one(data, limit=20.0)] += 1
            except Exception:
                crash = tmp_path / f"crash-{index}.gflv"
                crash.write_bytes(data)
                raise AssertionError(
                    f"input {index} crashed the decoder (saved as {crash})") from None
    finally:
        faulthandler.cancel_dump_traceback_later()
    print(dict(outcomes))
    assert sum(outcomes.values()) == MUTATIONS
    assert outcomes["ok"] >= MUTATIONS // 10, outcomes
    assert outcomes["BitstreamError"] >= MUTATIONS // 4, outcomes
    assert time.perf_counter() - started < 120, outcomes
