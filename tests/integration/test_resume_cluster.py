"""Resume after Ctrl-C, and a job on an existing two-node Ray cluster: byte-identical output."""

from __future__ import annotations

import glob
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import media
from integration.helpers import ray_cluster

CLIP = "car_traffic_768x432.mp4"  # 377 frames at 12.5 fps: 15 GOPs of 2 s


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gopflow", *args]


# A background shell (CI may be one) starts children with SIGINT ignored; a user's Ctrl-C
# reaches a foreground job with the default handler, which this restores.
_CTRL_C_ABLE = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from gopflow.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _transcode(src: str, out: Path, *extra: str) -> dict:
    report = str(out) + ".json"
    done = subprocess.run(
        _cli("transcode", src, "-o", str(out), "--crf", "26", "--preset", "faster",
             "--no-progress", "--report", report, *extra),
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    with open(report, encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """An uninterrupted run on a fresh local cluster."""
    out = tmp_path_factory.mktemp("reference") / "reference.mp4"
    report = _transcode(media(CLIP), out)
    assert report["totals"]["gops"] >= 10
    return out.read_bytes()


def test_interrupted_run_resumes_byte_identical(tmp_path: Path, reference: bytes) -> None:
    src, out, work = media(CLIP), tmp_path / "out.mp4", tmp_path / "work"
    process = subprocess.Popen(
        [sys.executable, "-c", _CTRL_C_ABLE, "transcode", src, "-o", str(out), "--crf", "26",
         "--preset", "faster", "--no-progress", "--work-dir", str(work)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if len(glob.glob(str(work / "*" / "done" / "gop_*.json"))) >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the job finished before it could be interrupted"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    assert not out.exists()
    finished = len(glob.glob(str(work / "*" / "done" / "gop_*.json")))
    assert 3 <= finished < 15

    report = _transcode(src, out, "--work-dir", str(work), "--resume")
    assert report["totals"]["resumed_gops"] == finished
    assert out.read_bytes() == reference
    assert not glob.glob(str(work / "*" / "segments"))  # work dir removed after success


@pytest.fixture()
def two_node_cluster() -> Iterator[str]:
    """A head and a worker node on this machine (one CPU each)."""
    with ray_cluster(nodes=2) as (address, _):
        yield address


def test_existing_two_node_cluster_gives_identical_output(
    tmp_path: Path, reference: bytes, two_node_cluster: str
) -> None:
    out = tmp_path / "cluster.mp4"
    report = _transcode(media(CLIP), out, "--ray-address", two_node_cluster)
    nodes = report["totals"]["nodes"]
    assert len(nodes) == 2, nodes
    per_node = {n: sum(1 for g in report["gops"] if g["node_id"] == n) for n in nodes}
    assert all(count > 0 for count in per_node.values()), per_node
    assert out.read_bytes() == reference
