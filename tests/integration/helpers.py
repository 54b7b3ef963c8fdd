"""Helpers for integration tests: plain ffmpeg reference encodes and output inspection."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import pytest

from conftest import ffmpeg_exe


@dataclass(frozen=True)
class Streams:
    """What a file holds, read back with PyAV."""

    frames: int
    width: int
    height: int
    fps: float
    audio: int
    audio_seconds: tuple[float, ...]
    video_seconds: float
    color_range: int


def inspect(path: str) -> Streams:
    with av.open(path) as container:
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video))
    with av.open(path) as container:
        video = container.streams.video[0]
        audio_seconds = tuple(
            float(a.duration * a.time_base) if a.duration else float(container.duration / 1e6)
            for a in container.streams.audio
        )
        video_seconds = float(video.duration * video.time_base) if video.duration else 0.0
        return Streams(
            frames=frames,
            width=video.codec_context.width,
            height=video.codec_context.height,
            fps=float(video.average_rate or 0),
            audio=len(container.streams.audio),
            audio_seconds=audio_seconds,
            video_seconds=video_seconds,
            color_range=int(video.codec_context.color_range or 0),
        )


def plain_ffmpeg(source: str, output: str, codec: str = "libx264", crf: int = 18) -> str:
    """One plain ffmpeg encode with the same codec/preset/CRF (the reference)."""
    subprocess.run(
        [
            ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-i", source,
            "-map", "0:v:0", "-c:v", codec, "-preset", "medium", "-crf", str(crf), output,
        ],
        check=True,
    )
    return output


# -- Ray nodes a test starts and stops itself (never `ray stop`: that stops them all) -----


def free_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return int(probe_socket.getsockname()[1])


def start_ray_node(ray: str, temp_root: str, name: str, *args: str) -> subprocess.Popen[bytes]:
    """``ray start --block`` for one node, in a session of its own, with its own temp dir and
    ports (never Ray's defaults, which a user's own cluster may be using); returns once the
    node is up."""
    log_path = os.path.join(temp_root, f"{name}.log")
    ports = [f"--{option}={free_port()}" for option in (
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
            stop_ray_node(process)
            pytest.fail(f"ray node {name} did not start:\n{Path(log_path).read_text()}")
        time.sleep(0.2)
    return process


def stop_ray_node(process: subprocess.Popen[bytes]) -> None:
    """Stop one node this fixture started, and nothing else: its process group (``ray start``,
    the GCS, the raylet, the agents), then any of its descendants that left the group (Ray's
    workers run in groups of their own). SIGTERM gets 5 s, then SIGKILL: ``ray start
    --block`` waits about 30 s for its GCS to shut down gracefully, which a test's throwaway
    node does not need."""
    import psutil

    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 30)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        for child in descendants:
            with contextlib.suppress(psutil.Error):
                child.send_signal(sig)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        _, alive = psutil.wait_procs(descendants, timeout=grace)
        if not alive:
            return
    process.wait()


def slow_ffmpeg(folder: Path, seconds: float = 1.0) -> Path:
    """An ffmpeg that waits ``seconds`` before every libx264 encode (``GOPFLOW_FFMPEG``), so
    a test can stop a job part-way."""
    wrapper = folder / "slow_ffmpeg"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case "$*" in *libx264*) sleep {seconds};; esac\n'
        f'exec "{ffmpeg_exe()}" "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper


@contextlib.contextmanager
def ray_cluster(
    nodes: int = 2, head_cpus: int = 1
) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A cluster of ``nodes`` ``ray start`` nodes on this machine (the head with
    ``head_cpus`` CPUs, workers with one each); yields its address and the nodes' processes,
    stopped by their PIDs afterwards: never ``ray stop``, which stops every Ray process of
    the machine (a user's own cluster too). Skips the test without the ``ray`` CLI."""
    import shutil
    import sys
    import tempfile

    ray = shutil.which("ray", path=os.path.dirname(sys.executable))
    if ray is None:
        pytest.skip("the ray CLI is not installed beside this Python")
    temp_root = tempfile.mkdtemp(prefix="gfray-")  # short: Ray's socket paths must fit
    port = free_port()
    address = f"127.0.0.1:{port}"
    started: list[subprocess.Popen[bytes]] = []
    try:
        started.append(start_ray_node(
            ray, temp_root, "head", "--head", f"--port={port}", f"--num-cpus={head_cpus}",
            "--include-dashboard=false", f"--dashboard-port={free_port()}",
            "--disable-usage-stats"))
        for number in range(1, nodes):
            started.append(start_ray_node(ray, temp_root, f"worker{number}",
                                          f"--address={address}"))
        yield address, started
    finally:
        for process in reversed(started):
            stop_ray_node(process)
        shutil.rmtree(temp_root, ignore_errors=True)
