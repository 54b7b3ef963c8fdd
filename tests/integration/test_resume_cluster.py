"""Resume after Ctrl-C, and a job on an existing two-node Ray cluster: byte-identical output."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import media

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


def _free_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return int(probe_socket.getsockname()[1])


def _start_node(ray: str, temp_root: str, name: str, *args: str) -> subprocess.Popen[bytes]:
    """``ray start --block`` for one node, in a session of its own, with its own temp dir and
    ports (never Ray's defaults, which a user's own cluster may be using); returns once the
    node is up."""
    log_path = os.path.join(temp_root, f"{name}.log")
    ports = [f"--{option}={_free_port()}" for option in (
        "node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [ray, "start", "--block", "--num-cpus=1", "--node-ip-address=127.0.0.1",
             f"--temp-dir={os.path.join(temp_root, name)}", *ports, *args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"},
        )
    deadline = time.monotonic() + 180
    while b"Ray runtime started" not in Path(log_path).read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            _stop_node(process)
            pytest.fail(f"ray node {name} did not start:\n{Path(log_path).read_text()}")
        time.sleep(0.2)
    return process


def _stop_node(process: subprocess.Popen[bytes]) -> None:
    """Stop one node this fixture started, and nothing else: its process group (``ray start``,
    the GCS, the raylet, the agents), then any of its descendants that left the group (Ray's
    workers run in groups of their own)."""
    import psutil

    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        for child in descendants:
            with contextlib.suppress(psutil.Error):
                child.send_signal(sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            continue
        _, alive = psutil.wait_procs(descendants, timeout=30)
        if not alive:
            return
    process.wait()


@pytest.fixture()
def two_node_cluster() -> Iterator[str]:
    """A head and a worker node on this machine, stopped by their PIDs afterwards: never
    ``ray stop``, which stops every Ray process of the machine (a user's own cluster too)."""
    ray = shutil.which("ray", path=os.path.dirname(sys.executable))
    if ray is None:
        pytest.skip("the ray CLI is not installed beside this Python")
    # Short: Ray's socket paths under it must fit in 107 bytes.
    temp_root = tempfile.mkdtemp(prefix="gfray-")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    started: list[subprocess.Popen[bytes]] = []
    try:
        started.append(_start_node(
            ray, temp_root, "head", "--head", f"--port={port}", "--include-dashboard=false",
            f"--dashboard-port={_free_port()}", "--disable-usage-stats"))
        started.append(_start_node(ray, temp_root, "worker", f"--address={address}"))
        yield address
    finally:
        for process in reversed(started):
            _stop_node(process)
        shutil.rmtree(temp_root, ignore_errors=True)


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
