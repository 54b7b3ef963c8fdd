"""A node of a two-node Ray cluster is lost mid-job, stopped (SIGTERM: it leaves the cluster
at once) or crashed (all its Ray processes SIGKILLed, as when a machine fails): the GOPs it
was coding go to the node left, and the job finishes with the same bytes as an
uninterrupted run on the whole cluster.

Before the runner watched its actors' nodes, a stopped node hung the job (Ray's restart of
its actor waited forever for a CPU: the pool holds one actor per cluster CPU), and a crashed
one failed it ("GOP 9 (frames 225-249) failed: The actor ... is unavailable: ... rpc_code:
14. The task may or may not have been executed on the actor.").
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import make_clip, media
from gopflow.media.y4m import read_y4m_rgb
from gopflow.pipeline.stages import frames_digest
from integration.helpers import ray_cluster, stop_ray_node

CLIP = "car_traffic_768x432.mp4"  # 377 frames at 12.5 fps: 16 GOPs
TIMEOUT_S = 300


@pytest.fixture()
def two_nodes() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A head and a worker node on this machine (one CPU each); yields the address and the
    worker's ``ray start`` process."""
    with ray_cluster(nodes=2) as (address, started):
        yield address, started[1]


def _crash(node: subprocess.Popen[bytes]) -> None:
    """SIGKILL every process of one node (its group and the workers that left it)."""
    import psutil

    descendants = psutil.Process(node.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(node.pid, signal.SIGKILL)
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            child.kill()


def _command(source: str, output: Path, address: str, work: Path) -> list[str]:
    return [sys.executable, "-m", "gopflow", "transcode", source, "-o", str(output),
            "--crf", "26", "--preset", "faster", "--no-progress", "--ray-address", address,
            "--work-dir", str(work)]


@pytest.mark.parametrize("how", ["stopped", "crashed"])
def test_a_node_lost_mid_job_its_gops_rerun_on_the_other(
    how: str, tmp_path: Path, two_nodes: tuple[str, subprocess.Popen[bytes]]
) -> None:
    address, worker = two_nodes
    source = media(CLIP)
    reference = tmp_path / "reference.mp4"
    done = subprocess.run(_command(source, reference, address, tmp_path / "work-ref"),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr

    output, work = tmp_path / "out.mp4", tmp_path / "work"
    job = subprocess.Popen(_command(source, output, address, work),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT_S
    while job.poll() is None and time.monotonic() < deadline:
        if len(glob.glob(str(work / "*" / "done" / "gop_*.json"))) >= 3:
            break
        time.sleep(0.05)
    assert job.poll() is None, "the job finished before a node could be lost"
    finished = len(glob.glob(str(work / "*" / "done" / "gop_*.json")))
    (_crash if how == "crashed" else stop_ray_node)(worker)
    try:
        stdout, stderr = job.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        job.kill()
        job.communicate()
        pytest.fail(f"the job hung after losing a node ({finished} GOPs were done)")
    assert "Traceback" not in stderr and stdout == "", stdout + stderr
    assert job.returncode == 0, stderr
    assert stderr.strip().splitlines()[-1].startswith(f"wrote {output}"), stderr
    assert output.read_bytes() == reference.read_bytes()


def test_a_node_crashed_mid_decode_its_gops_decode_on_the_other(
    tmp_path: Path, two_nodes: tuple[str, subprocess.Popen[bytes]]
) -> None:
    """``gopflow decode`` (``map_ordered``) watches its actors' nodes too: the crashed node's
    GOPs decode on the node left, to exactly the encoder's frames."""
    address, worker = two_nodes
    clip = make_clip(tmp_path / "foreman.mkv", "-i", media("foreman_cif_352x288.264"),
                     "-frames:v", "80", "-c:v", "ffv1")
    coded, report = tmp_path / "foreman.gflv", tmp_path / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "gopflow", "transcode", clip, "-o", str(coded), "--codec", "dvc",
         "--quality", "2", "--no-rdo", "--no-adaptive-intra", "--gop-seconds", "0.4",
         "--min-gop-seconds", "0.2", "--no-progress", "--report", str(report)],
        capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert done.returncode == 0, done.stderr
    gops = json.loads(report.read_text())["gops"]
    assert len(gops) >= 6

    out_dir = tmp_path / "decoded"
    out_dir.mkdir()
    output = out_dir / "foreman.y4m"
    job = subprocess.Popen(
        [sys.executable, "-m", "gopflow", "decode", str(coded), "-o", str(output),
         "--no-progress", "--ray-address", address],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + TIMEOUT_S
    while job.poll() is None and time.monotonic() < deadline:
        # The first GOP is written (in order) to the temporary output.
        if any(path.stat().st_size > 1 << 20 for path in out_dir.glob(".*.tmp")):
            break
        time.sleep(0.05)
    assert job.poll() is None, "the decode finished before a node could be lost"
    _crash(worker)
    try:
        _, stderr = job.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        job.kill()
        job.communicate()
        pytest.fail("the decode hung after losing a node")
    assert job.returncode == 0 and "Traceback" not in stderr, stderr
    with open(output, "rb") as handle:
        decoded = list(read_y4m_rgb(handle)[3])
    assert len(decoded) == 80
    for gop in gops:
        part = slice(gop["start_frame"], gop["start_frame"] + gop["frames"])
        assert frames_digest(decoded[part]) == gop["details"]["recon_sha256"], gop["start_frame"]
