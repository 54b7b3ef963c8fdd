"""The runner's scheduling on a real local Ray: a video planned in batches stays in long runs
of consecutive GOPs per actor (each jump is a seek and a re-decode for the worker)."""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable, Iterator

from gopflow.pipeline.runner import RayRunner


def _stage() -> Callable[[int], tuple[int, int]]:
    def run(item: int) -> tuple[int, int]:
        time.sleep(0.05)
        return os.getpid(), item

    return run


def _batches(total: int) -> Iterator[list[int]]:
    """``total`` items in batches of one to three, a little slower than the actors at first
    (as scene detection hands out GOPs), then the rest at once (detection done)."""
    sizes = itertools.cycle((1, 2, 3))
    item = 0
    while item < total // 2:
        size = min(next(sizes), total - item)
        time.sleep(0.03)
        yield list(range(item, item + size))
        item += size
    yield list(range(item, total))


def test_batched_groups_stay_in_consecutive_runs_per_actor() -> None:
    total = 60
    with RayRunner(num_cpus=2) as runner:
        from ray import cloudpickle

        # The workers cannot import this test module: ship its stage by value.
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        outcomes = list(runner.map_groups(
            _stage, _batches(total), describe=str, cost=lambda item: 1.0, actors=2,
        ))
    assert [str(o.error) for o in outcomes if o.error] == []
    by_actor: dict[int, list[int]] = {}
    for outcome in outcomes:
        pid, item = outcome.value
        by_actor.setdefault(pid, []).append(item)
    assert sorted(i for items in by_actor.values() for i in items) == list(range(total))
    assert len(by_actor) == 2, "both actors worked"
    for items in by_actor.values():
        ordered = sorted(items)
        jumps = sum(1 for a, b in itertools.pairwise(ordered) if b != a + 1)
        # A handful of seeks per actor (a steal, a batch that the other actor continues),
        # not one per batch.
        assert jumps <= 4, ordered
