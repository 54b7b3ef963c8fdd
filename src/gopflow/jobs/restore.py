"""``gopflow restore``: what the viewer gets, from a gopflow output file alone.

Data flow: the output's tags (source width, height, fps, frame count; written at assembly)
-> PyAV decode of every coded frame (sizes and frame rates may change per GOP) ->
:func:`gopflow.precoders.restore.restore_frames` (crop padding or bicubic up-scale; frame
repetition onto the source's frame grid) -> ffmpeg: Y4M (raw), MKV (FFV1, lossless) or MP4
(x264 lossless), audio copied -> temp name -> checked frame count -> rename.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction

from gopflow.errors import FrameCountError, InputError, OutputError, UsageError
from gopflow.media.ffmpeg import (
    RESTORE_WRITERS,
    colour_options,
    feed_process,
    restore_writer_command,
)
from gopflow.media.probe import open_input, probe
from gopflow.media.reader import feed_format
from gopflow.pipeline.assemble import inspect_output
from gopflow.precoders.restore import RestoreTarget, restore_frames


def _restorer(path: str) -> Callable[..., Iterator[bytes]]:
    """Learned restoration (ViSTRA up-sampler + interpolator) when the output asks for it."""
    with open_input(path) as container:
        tags = {k.upper(): v for k, v in container.metadata.items()}
    if tags.get("GOPFLOW_RESTORE") == "learned":
        from gopflow.precoders.vistra import LearnedRestorer

        return LearnedRestorer().restore_frames
    return restore_frames


@dataclass(frozen=True)
class RestoreResult:
    """What ``restore`` wrote."""

    output: str
    frames: int
    width: int
    height: int
    fps: Fraction


def restore_target(path: str) -> RestoreTarget:
    """The source geometry recorded in a gopflow output (else the stream's own)."""
    info = probe(path)
    with open_input(path) as container:
        tags = {k.upper(): v for k, v in container.metadata.items()}
        tags.update({k.upper(): v for k, v in container.streams.video[0].metadata.items()})
    pix_fmt = feed_format(info.pix_fmt, "yuv420p")
    try:
        if "GOPFLOW_SOURCE_WIDTH" in tags:
            return RestoreTarget(
                width=int(tags["GOPFLOW_SOURCE_WIDTH"]),
                height=int(tags["GOPFLOW_SOURCE_HEIGHT"]),
                fps=Fraction(tags["GOPFLOW_SOURCE_FPS"]),
                frame_count=int(tags["GOPFLOW_SOURCE_FRAMES"]),
                pix_fmt=pix_fmt,
            )
    except (KeyError, ValueError, ZeroDivisionError) as exc:
        raise InputError(f"{path} has malformed gopflow source tags: {exc}") from exc
    return RestoreTarget(info.width, info.height, info.fps, info.frame_count, pix_fmt)


def run_restore(source: str, output: str) -> RestoreResult:
    """Write ``output`` with the full-size, full-rate frames a viewer of ``source`` gets."""
    extension = os.path.splitext(output)[1].lower()
    if extension not in RESTORE_WRITERS:
        raise UsageError(f"restore writes .y4m, .mkv or .mp4, not {extension or '(none)'!r}")
    target = restore_target(source)
    info = probe(source)
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise OutputError(f"output directory is not writable: {directory}")
    temp = os.path.join(directory, f".{os.path.basename(output)}.gopflow-partial")
    audio = extension != ".y4m" and bool(info.audio)
    command = restore_writer_command(
        temp, extension, width=target.width, height=target.height, fps=target.fps,
        pix_fmt=target.pix_fmt,
        input_range=info.color_range if info.color_range != "unknown" else None,
        colour=colour_options(
            info.color_range, info.color_space, info.color_primaries, info.color_trc
        ),
        audio_source=info.path if audio else None,
    )
    log_path = temp + ".log"
    try:
        with open_input(source) as container:
            decoded = container.decode(container.streams[info.stream_index])
            restore = _restorer(source)
            code, reason = feed_process(command, restore(decoded, target), log_path)
        if code != 0:
            raise OutputError(f"writing {output} failed: {reason}")
        got = inspect_output(temp).frames
        if got != target.frame_count:
            raise FrameCountError(f"restored {got} frames, the source had {target.frame_count}")
        os.replace(temp, output)
    finally:
        for leftover in (temp, log_path):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return RestoreResult(output, target.frame_count, target.width, target.height, target.fps)
