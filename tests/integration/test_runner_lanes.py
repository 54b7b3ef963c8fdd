"""The runner's scheduling on a real local Ray: a video planned while it encodes stays in
long runs of consecutive GOPs per actor (each jump is a seek and a re-decode for the worker)."""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator

from gopflow.pipeline.runner import RayRunner

ITEM_SECONDS = 0.1  # one GOP's encode
PLAN_SECONDS = 0.01  # one GOP's planning: detection runs well ahead of two encoders


def _stage() -> Callable[[int], tuple[int, int]]:
    def run(item: int) -> tuple[int, int]:
        time.sleep(ITEM_SECONDS)
        return os.getpid(), item

    return run


def _planned(total: int) -> Iterator[list[int]]:
    """``total`` items planned one at a time by a thread, handed out as the driver does: each
    pull takes everything planned so far, waiting for at least one item."""
    ready = threading.Condition()
    planned: list[int] = []

    def plan() -> None:
        for item in range(total):
            time.sleep(PLAN_SECONDS)
            with ready:
                planned.append(item)
                ready.notify_all()

    threading.Thread(target=plan, daemon=True).start()
    taken = 0
    while taken < total:
        with ready:
            ready.wait_for(lambda done=taken: len(planned) > done)
            batch = planned[taken:]
        taken += len(batch)
        yield batch


def _jumps(items: list[int]) -> int:
    ordered = sorted(items)
    return sum(1 for a, b in itertools.pairwise(ordered) if b != a + 1)


def test_groups_planned_while_encoding_stay_in_consecutive_runs_per_actor() -> None:
    total = 60
    with RayRunner(num_cpus=2) as runner:
        from ray import cloudpickle

        # The workers cannot import this test module: ship its stage by value.
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        outcomes = list(runner.map_groups(
            _stage, _planned(total), describe=str, cost=lambda item: 1.0, actors=2,
        ))
    assert [str(o.error) for o in outcomes if o.error] == []
    by_actor: dict[int, list[int]] = {}
    for outcome in outcomes:
        pid, item = outcome.value
        by_actor.setdefault(pid, []).append(item)
    assert sorted(i for items in by_actor.values() for i in items) == list(range(total))
    assert len(by_actor) == 2, "both actors worked"
    for items in by_actor.values():
        # A few seeks per actor while the first GOPs trickle in and at the final steal; a
        # scheduler that alternates batches or items between actors makes one per batch.
        assert _jumps(items) <= 4, sorted(items)
