"""Bad inputs for the learned codecs: ``gopflow transcode X -o y.gflv --codec intra|dvc`` and
``gopflow decode`` of damaged .gflv files, through ``python -m gopflow``.

Each gives exactly one stderr line ``gopflow: error: ...`` and a non-zero exit, and leaves
nothing in the output's directory (no partial output, no temp file, no work dir): never a
traceback, a hang or a .gflv that cannot be decoded. The shipped weights code the streams;
the jobs share one Ray node this module starts (its own temp dir and ports) and stops.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from integration.corpus import CASES, clip
from integration.helpers import ray_cluster

TIMEOUT_S = 120
_CORPUS = {case.name: case for case in CASES}


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    with ray_cluster(nodes=1, head_cpus=2) as (address, _):
        yield address


def _gopflow(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([sys.executable, "-m", "gopflow", *args, "--no-progress"],
                              capture_output=True, text=True, timeout=TIMEOUT_S,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail(f"gopflow {args[0]} hung (no exit in {TIMEOUT_S} s)")


def _refused(done: subprocess.CompletedProcess[str], words: str, outputs: Path) -> None:
    stderr = done.stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    assert done.returncode == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gopflow: error: "), stderr
    assert words in lines[0], lines[0]
    assert os.listdir(outputs) == []  # no partial output, no temp file, no work dir


# -- transcodes to .gflv ---------------------------------------------------------------------


def _y4m(name: str, width: int, height: int) -> Callable[[Path], str]:
    """A one-frame 4:2:0 y4m of ``width`` x ``height`` (a sparse file: it probes, with its
    frame's bytes all there, at no disk cost)."""

    def make(root: Path) -> str:
        path = root / name
        with open(path, "wb") as handle:
            handle.write(f"YUV4MPEG2 W{width} H{height} F25:1 Ip A1:1 C420jpeg\nFRAME\n".encode())
            handle.truncate(handle.tell() + width * height * 3 // 2)
        return str(path)

    return make


@dataclass(frozen=True)
class Bad:
    name: str
    make: Callable[[Path], str]
    words: str
    options: tuple[str, ...] = ()


_SIZE_CHANGE = _CORPUS["raw H.264 changing size mid-stream"]  # 10 frames 64x48, 10 96x64
_ONE_GOP_EACH = ("--gop-seconds", "0.4", "--min-gop-seconds", "0.04")
TRANSCODES = (
    *(Bad(name, _CORPUS[name].make, str(_CORPUS[name].words))
      for name in ("empty file", "random bytes", "directory", "mp4, moov last, cut at 30%")),
    # The size changes inside the one GOP: refused as frames are read (the codec refused it
    # too, as a usage error: exit status 2, a line naming array shapes).
    Bad("intra, size change inside a GOP", _SIZE_CHANGE.make, "changes frame size"),
    # The size changes where a GOP starts: each GOP alone has one size, and without the
    # check the second was coded at its own size into a stream that could not be decoded.
    Bad("intra, size change at a GOP start", _SIZE_CHANGE.make, "changes frame size",
        _ONE_GOP_EACH),
    # Over .gflv's limits: refused before Ray starts, not after coding, at write time.
    Bad("8200x4100 (over 2^25 pixels)", _y4m("big.y4m", 8200, 4100), "too large for a .gflv"),
    Bad("16400x16 (over 16384 a side)", _y4m("wide.y4m", 16400, 16), "too large for a .gflv"),
)


@pytest.mark.parametrize("bad", TRANSCODES, ids=[bad.name for bad in TRANSCODES])
def test_learned_transcode_refuses_with_one_line(bad: Bad, tmp_path: Path, cluster: str) -> None:
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    outputs.mkdir()
    done = _gopflow("transcode", bad.make(inputs), "-o", str(outputs / "y.gflv"), "--codec",
                    "intra", *bad.options, "--ray-address", cluster)
    _refused(done, bad.words, outputs)


# -- decodes of damaged .gflv files ----------------------------------------------------------


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory, cluster: str) -> bytes:
    """A good 10-frame 64x48 intra stream, coded by a transcode in two GOPs of 5 frames."""
    root = tmp_path_factory.mktemp("gflv")
    source = clip("clip.mkv", "-c:v", "ffv1")(root)
    done = _gopflow("transcode", source, "-o", str(root / "good.gflv"), "--codec", "intra",
                    "--gop-seconds", "0.2", "--min-gop-seconds", "0.04",
                    "--ray-address", cluster)
    assert done.returncode == 0, done.stderr
    return (root / "good.gflv").read_bytes()


def _recoded(data: bytes, edit: Callable[[list[list[object]]], None]) -> bytes:
    """``data`` with its units edited and every CRC and the stream check recomputed (as a
    writer would), so that only decoding can find the damage."""
    from fuzz.gflv_harness import parse, serialize

    parsed = parse(data)
    assert parsed is not None
    edit(parsed.units)
    return serialize(parsed)


def _halve_last_payload(units: list[list[object]]) -> None:
    payload = units[-1][2]
    assert isinstance(payload, bytes)
    units[-1][2] = payload[: len(payload) // 2]


def _flip(at: float) -> Callable[[bytes], bytes]:
    def damage(data: bytes) -> bytes:
        blob = bytearray(data)
        blob[int(len(blob) * at)] ^= 0x10
        return bytes(blob)

    return damage


DAMAGED: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "empty": (lambda _: b"", "truncated"),
    "random bytes": (lambda _: random.Random(7).randbytes(4096), "not a gopflow learned bitstream"),
    "cut after the header": (lambda data: data[:60], "truncated"),
    "cut in half": (lambda data: data[: len(data) // 2], "truncated"),
    "end unit cut off": (lambda data: data[:-17], "truncated"),
    "a header byte flipped": (_flip(0.005), "header"),
    "a payload byte flipped": (_flip(0.6), "checksum mismatch"),
    "last payload halved, CRCs recomputed": (
        lambda data: _recoded(data, _halve_last_payload), "payload is truncated"),
}


@pytest.mark.parametrize("name", list(DAMAGED))
def test_decode_of_a_damaged_stream_refuses_with_one_line(
    name: str, stream: bytes, tmp_path: Path, cluster: str
) -> None:
    damage, words = DAMAGED[name]
    source, outputs = tmp_path / "damaged.gflv", tmp_path / "out"
    outputs.mkdir()
    source.write_bytes(damage(stream))
    done = _gopflow("decode", str(source), "-o", str(outputs / "y.y4m"),
                    "--ray-address", cluster)
    _refused(done, words, outputs)


def test_decode_of_a_directory_refuses_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "a.gflv").mkdir()
    outputs = tmp_path / "out"
    outputs.mkdir()
    done = _gopflow("decode", str(tmp_path / "a.gflv"), "-o", str(outputs / "y.y4m"))
    _refused(done, "a.gflv", outputs)
