"""Workers' frame-accurate GOP reading against one sequential decode of the whole clip."""

from __future__ import annotations

import hashlib

import pytest

from conftest import media
from gopflow.media.probe import frame_timestamps, open_input, probe
from gopflow.media.reader import GopReader, frame_bytes, iter_gop_frames
from gopflow.pipeline.plan import plan_gops


def _digests(frames) -> list[str]:  # type: ignore[no-untyped-def]
    return [hashlib.sha1(frame_bytes(f, "yuv420p")).hexdigest() for f in frames]


@pytest.mark.parametrize(
    "name",
    ["his_girl_friday_640x480.mp4", "car_traffic_768x432.mp4", "white_flower_1280x720.264"],
)
def test_every_gop_reads_exactly_its_frames(name: str) -> None:
    path = media(name)
    info = probe(path)
    with open_input(path) as container:
        stream = container.streams[info.stream_index]
        reference = _digests(container.decode(stream))
    assert len(reference) == info.frame_count
    stamps = frame_timestamps(path, info.stream_index) if info.read_mode == "seek" else None
    # Odd GOP lengths so that GOPs start on non-keyframes of the source.
    gops = plan_gops(info.frame_count, max_frames=37, min_frames=9, timestamps=stamps)
    # One reader, GOPs in order (continuing the decode) with jumps back and forth.
    order = [g.index for g in gops]
    order = order[: len(order) // 2] + order[-2:] + order[len(order) // 2 : -2][::-1]
    with GopReader(path, info.stream_index, info.read_mode) as reader:
        for index in order:
            gop = gops[index]
            got = _digests(reader.read(gop, tail=5))
            # the GOP's frames, then up to 5 following frames as look-ahead context
            assert got == reference[gop.start_frame : gop.end_frame + 5], f"GOP {index} differs"
    # A fresh reader per GOP (what a retried task does).
    for gop in gops[-2:]:
        got = _digests(iter_gop_frames(path, info.stream_index, info.read_mode, gop))
        assert got == reference[gop.start_frame : gop.end_frame], f"GOP {gop.index} differs"
