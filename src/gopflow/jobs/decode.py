"""The decode job: ``gopflow decode FILE.gflv -o OUTPUT`` (the learned codecs' streams).

Data flow::

    FILE.gflv --scan (header, every checksum, GOP structure; nothing decoded yet)--> extents
          --RayRunner.map_ordered (bounded window)--> LearnedDecodeStage per GOP
          --> frames in order --> Y4M (exact RGB, 16-bit 4:4:4) or MP4/MKV (libx264rgb -qp 0,
          lossless RGB) under a temp name --> frame count checked --> rename
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import IO, Any

import numpy as np

from gopflow.codecs.learned.api import CODEC_NAMES, LearnedVideoCodec
from gopflow.codecs.learned.bitstream import (
    BitstreamError,
    StreamHeader,
    read_header,
    scan_gops,
)
from gopflow.errors import (
    FrameCountError,
    InputNotFoundError,
    OutputError,
    UsageError,
)
from gopflow.fileio import atomic_write
from gopflow.jobs.config import DecodeConfig
from gopflow.media.ffmpeg import feed_process, find_ffmpeg, rgb_writer_command
from gopflow.media.y4m import y4m_frame, y4m_header
from gopflow.pipeline.driver import check_output_writable
from gopflow.pipeline.runner import RayRunner
from gopflow.pipeline.stages import (
    DecodedGop,
    GopDecodeTask,
    LearnedCodecRef,
    LearnedDecodeStage,
    open_codec,
)


def _slots(runner: RayRunner, workers: int | None) -> int:
    """Actors to start: one CPU each (the codecs run one torch thread, see ``engine``)."""
    cpus = runner.cluster_cpus()
    return min(workers or cpus, cpus)


def _describe_gop(index: int, first: int, frames: int) -> str:
    return f"GOP {index} (frames {first}-{first + frames - 1})"


@dataclass(frozen=True)
class DecodeResult:
    """What ``decode`` wrote."""

    output: str
    frames: int
    width: int
    height: int
    fps: Fraction
    gops: int
    model_id: str
    wall_seconds: float


def read_stream_index(path: str) -> tuple[StreamHeader, list[Any]]:
    """Header and GOP extents of a .gflv file, every unit checked (one-line errors)."""
    if not os.path.isfile(path):
        raise InputNotFoundError(f"no such file: {path}")
    with open(path, "rb") as handle:
        header = read_header(handle, path)
        return header, scan_gops(handle, header, path)


def stream_codec_name(header: StreamHeader, name: str) -> str:
    """The learned codec a stream's model id names (``intra``, ``dvc``, ``fvc``)."""
    codec = header.model_id.split(":", 1)[0]
    if codec not in CODEC_NAMES:
        raise BitstreamError(f"{name} names an unknown model {header.model_id!r}")
    return codec


def check_stream_codec(header: StreamHeader, codec: LearnedVideoCodec, name: str) -> None:
    """Refuse a stream ``codec`` cannot decode: coded with other weights, or at a quality
    its model does not have."""
    if codec.model_id != header.model_id:
        raise UsageError(
            f"{name} was coded with model {header.model_id}; the weights here are "
            f"{codec.model_id} (give the registry it was made with: --registry DIR)"
        )
    if not 1 <= header.quality <= codec.levels:
        raise BitstreamError(f"{name} has quality {header.quality}; the model has "
                             f"{codec.levels}")


def decode(input: str, output: str, **options: Any) -> DecodeResult:
    """Decode ``input`` (.gflv) to ``output``; ``options`` as ``gopflow decode``'s flags
    (``registry``, ``workers``, ``ray_address``, ``progress``)."""
    return run_decode(DecodeConfig(input, output, **options))


def run_decode(config: DecodeConfig) -> DecodeResult:
    """Decode a .gflv file to Y4M/MP4/MKV, GOPs in parallel, written in order."""
    from tqdm import tqdm

    started = time.perf_counter()
    extension = os.path.splitext(config.output)[1].lower()
    header, extents = read_stream_index(config.input)
    name = stream_codec_name(header, config.input)
    registry = os.path.abspath(config.registry) if config.registry else None
    ref = LearnedCodecRef(name, registry)
    check_stream_codec(header, open_codec(ref), config.input)
    check_output_writable(config.output)
    tasks = [
        GopDecodeTask(os.path.abspath(config.input), extent, header.width, header.height,
                      header.quality, header.intra_offset)
        for extent in extents
    ]
    with RayRunner(config.ray_address, config.workers) as runner, tqdm(
        total=header.frame_count, unit="frame", desc="decode", dynamic_ncols=True,
        disable=(not config.progress) if config.progress is not None else None,
    ) as bar:
        actors = _slots(runner, config.workers)
        results = runner.map_ordered(
            functools.partial(LearnedDecodeStage, ref),
            tasks,
            describe=lambda task: _describe_gop(task.extent.index, task.extent.first_frame,
                                                task.extent.frames),
            actors=actors,
            window=2 * actors,
        )
        frames = _frames_in_order((decoded for _, decoded in results), header, bar.update)
        with contextlib.closing(results):
            if extension == ".y4m":
                _write_y4m(config.output, header, frames)
            else:
                _write_ffmpeg(config.output, header, frames, extension)
    return DecodeResult(
        os.path.abspath(config.output), header.frame_count, header.width, header.height,
        header.fps, len(extents), header.model_id, time.perf_counter() - started,
    )


def _frames_in_order(
    gops: Iterator[DecodedGop], header: StreamHeader, advance: Callable[[int], Any]
) -> Iterator[np.ndarray]:
    """Every decoded frame in order; checks sizes and the total count."""
    count = 0
    for decoded in gops:
        for frame in decoded.frames:
            if frame.shape != (header.height, header.width, 3):
                raise FrameCountError(
                    f"GOP {decoded.index} decoded a {frame.shape} frame, the stream is "
                    f"{header.width}x{header.height}"
                )
            yield frame
            count += 1
        advance(len(decoded.frames))
    if count != header.frame_count:
        raise FrameCountError(f"decoded {count} frames; the stream has {header.frame_count}")


def _write_y4m(output: str, header: StreamHeader, frames: Iterator[np.ndarray]) -> None:
    def write(handle: IO[bytes]) -> None:
        handle.write(y4m_header(header.width, header.height, header.fps))
        for frame in frames:
            handle.write(y4m_frame(frame))

    atomic_write(output, write)


def _write_ffmpeg(
    output: str, header: StreamHeader, frames: Iterator[np.ndarray], extension: str
) -> None:
    """Lossless RGB H.264 in the MP4/MKV container ``extension`` names."""
    tool = find_ffmpeg()
    tool.require(encoders=["libx264rgb"])
    directory = os.path.dirname(os.path.abspath(output))
    temp = os.path.join(directory, f".{os.path.basename(output)}.gopflow-partial")
    command = rgb_writer_command(
        temp, extension, width=header.width, height=header.height, fps=header.fps,
        exe=tool.path,
    )
    log_path = temp + ".log"
    try:
        code, reason = feed_process(command, (frame.tobytes() for frame in frames), log_path)
        if code != 0:
            raise OutputError(f"writing {output} failed: {reason}")
        os.replace(temp, output)
    finally:
        for leftover in (temp, log_path):
            if os.path.exists(leftover):
                os.unlink(leftover)
