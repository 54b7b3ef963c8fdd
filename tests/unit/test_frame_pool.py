"""The training frame pool: seed-determined slots, and samples with a temporal stride."""

from __future__ import annotations

import numpy as np

from gopflow.training.data import Clip, FramePool


def _reader(clip: Clip, index: int, count: int) -> list[np.ndarray]:
    """Frame ``i`` of a clip is a 4x4 picture filled with ``i`` (so spacing is visible)."""
    assert index >= 0 and index + count <= clip.frames
    return [np.full((4, 4, 3), i, np.uint8) for i in range(index, index + count)]


CLIPS = [Clip("a", "a", 1, 4, 4, 40, None), Clip("b", "b", 1, 4, 4, 9, None)]


def _spacings(pool: FramePool) -> set[tuple[int, ...]]:
    slots = pool.at(0).slots
    return {tuple(np.diff([int(f[0, 0, 0]) for f in frames])) for frames in slots}


def test_stride_spaces_the_frames_of_a_sample() -> None:
    plain = FramePool(CLIPS, seed=3, size=24, span=4, reader=_reader)
    assert _spacings(plain) == {(1, 1, 1)}
    strided = FramePool(CLIPS, seed=3, size=24, span=4, reader=_reader, stride=3)
    spacings = _spacings(strided)
    # Every sample is evenly spaced by 1, 2 or 3, and the pool draws more than one spacing;
    # the 9-frame clip never needs more than it has (at most 3 apart: frames 0, 3, 6, ...).
    assert all(len(set(gaps)) == 1 and gaps[0] in (1, 2, 3) for gaps in spacings)
    assert len(spacings) > 1
    assert all(len(frames) == 4 for frames in strided.slots)
    # Same seed, same pool: resume rebuilds it exactly.
    again = FramePool(CLIPS, seed=3, size=24, span=4, reader=_reader, stride=3).at(0)
    assert all(np.array_equal(np.stack(a), np.stack(b))
               for a, b in zip(again.slots, strided.slots, strict=True))
