"""The lane scheduler's policy, by a discrete-event simulation of actors and a planner.

The runner drives :class:`LaneScheduler` with Ray (``tests/integration/test_runner_lanes.py``
runs it there); here the clock is simulated, so the schedules are exact and repeatable.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator

import pytest

from gopflow.pipeline.lanes import LaneScheduler, split_lanes


class _Clock:
    now = 0.0


def _planner(clock: _Clock, total: int, plan_time: float) -> Iterator[list[int]]:
    """One video planned an item every ``plan_time``: each pull takes everything planned by
    now, waiting (the clock moves) for at least one item, as the driver's pulls do."""
    taken = 0
    while taken < total:
        ready = min(total, int(clock.now / plan_time)) if plan_time else total
        if ready <= taken:
            clock.now = (taken + 1) * plan_time
            ready = taken + 1
        yield list(range(taken, ready))
        taken = ready


def _simulate(
    groups_of: Callable[[_Clock], Iterable[list[int]]],
    total: int,
    item_time: float = 1.0,
    slots: int = 2,
    depth: int = 2,
) -> tuple[dict[int, list[int]], float]:
    """Run every item on ``slots`` actors, ``depth`` in flight each (one at a time per actor);
    the items each actor ran, and when the last finished."""
    clock = _Clock()
    lanes: LaneScheduler[int] = LaneScheduler(groups_of(clock), slots, cost=lambda i: 1.0)
    free_at = [0.0] * slots
    running: list[tuple[float, int, int]] = []
    ran: dict[int, list[int]] = {a: [] for a in range(slots)}

    def submit(actor: int) -> bool:
        position = lanes.take(actor)
        if position is None:
            return False
        free_at[actor] = max(free_at[actor], clock.now) + item_time
        heapq.heappush(running, (free_at[actor], actor, position))
        lanes.sent(actor, position)
        ran[actor].append(lanes.item(position))
        return True

    for _ in range(depth):
        for actor in range(slots):
            submit(actor)
    end = 0.0
    while running:
        finish, actor, position = heapq.heappop(running)
        clock.now = end = max(clock.now, finish)
        lanes.done(actor, position)
        while lanes.busy[actor] < depth and submit(actor):
            pass
    return ran, end


def _jumps(items: list[int]) -> int:
    """Seeks a worker makes over its items (in the order it ran them)."""
    return sum(1 for a, b in itertools.pairwise(items) if b != a + 1)


@pytest.mark.parametrize("plan_time", [0.0, 0.05, 0.2])
def test_a_video_planned_faster_than_it_encodes_splits_into_few_runs(plan_time: float) -> None:
    total = 200
    ran, end = _simulate(lambda clock: _planner(clock, total, plan_time), total)
    assert sorted(ran[0] + ran[1]) == list(range(total))
    for items in ran.values():
        assert _jumps(items) <= 3, items
    # No core idles while work is left: within a few items of the ideal split.
    assert end <= total / 2 + 3


def test_a_planner_slower_than_two_encoders_keeps_both_busy_and_loses_no_item() -> None:
    total = 100
    ran, end = _simulate(lambda clock: _planner(clock, total, 0.8), total)
    assert sorted(ran[0] + ran[1]) == list(range(total))
    assert end <= total * 0.8 + 2  # the planner is the bottleneck, not the scheduling


def test_batches_that_continue_a_lane_stay_with_its_actor() -> None:
    # Two videos: the first in small batches, then the second whole. Each of the first
    # video's batches continues the lane of the actor that holds its frontier.
    def groups(clock: _Clock) -> Iterator[list[int]]:
        yield [0, 1, 2, 3]
        yield [4, 5]
        yield [6, 7]
        yield list(range(8, 40))

    ran, _ = _simulate(groups, 40)
    assert sorted(ran[0] + ran[1]) == list(range(40))
    assert ran[0][:2] == [0, 1] and ran[1][:2] == [2, 3]
    # 4..7 continue actor 1's lane (2, 3), so no item of the first video makes a seek.
    assert 4 in ran[1] and ran[1][ran[1].index(3) + 1] == 4


def test_the_thief_takes_the_far_half_in_order() -> None:
    ran, _ = _simulate(lambda clock: iter([list(range(64))]), 64)
    for items in ran.values():
        assert _jumps(items) <= 2, items
        assert all(b > a for a, b in itertools.pairwise(items)), "each actor reads forward"


def test_dropped_groups_are_not_started() -> None:
    lanes: LaneScheduler[str] = LaneScheduler(
        iter([["a", "b"], ["c"], ["d", "e"]]), 1, cost=lambda i: 1.0,
        dropped=lambda group: group == 1,
    )
    taken = []
    while (position := lanes.take(0)) is not None:
        lanes.sent(0, position)
        taken.append(lanes.done(0, position)[1])
    assert taken == ["a", "b", "d", "e"]


def test_retired_slots_take_nothing_and_their_work_is_stolen() -> None:
    lost: set[int] = set()
    lanes: LaneScheduler[int] = LaneScheduler(
        iter([list(range(8))]), 2, lambda i: 1.0, unavailable=lost
    )
    first = lanes.take(0)
    assert first is not None
    lanes.sent(0, first)
    second = lanes.take(1)
    assert second is not None
    lanes.sent(1, second)
    lost.add(1)
    lanes.put_back(1, second)
    assert lanes.take(1) is None
    got = [first]
    lanes.done(0, first)
    while (position := lanes.take(0)) is not None:
        lanes.sent(0, position)
        lanes.done(0, position)
        got.append(position)
    assert sorted(got) == list(range(8))


def test_split_lanes_makes_contiguous_runs_of_similar_cost() -> None:
    assert split_lanes([1.0] * 6, 2) == [[0, 1, 2], [3, 4, 5]]
    assert split_lanes([5.0, 1.0, 1.0, 1.0, 1.0, 1.0], 2) == [[0], [1, 2, 3, 4, 5]]
    assert split_lanes([1.0], 4) == [[0]]


def test_a_task_whose_actor_failed_under_it_goes_to_another_actor() -> None:
    unavailable: set[int] = set()
    lanes: LaneScheduler[int] = LaneScheduler(
        iter([list(range(6))]), 2, lambda i: 1.0, unavailable=unavailable
    )
    mine = lanes.take(1)
    assert mine is not None
    lanes.sent(1, mine)
    unavailable.add(1)  # benched: its node may be dying
    lanes.put_back(1, mine, elsewhere=True)
    assert lanes.take(1) is None
    got = []
    while (position := lanes.take(0)) is not None:
        lanes.sent(0, position)
        lanes.done(0, position)
        got.append(position)
    assert sorted(got) == list(range(6)) and lanes.queued() == 0


def test_the_node_watch_benches_a_failed_slot_only_while_another_can_work() -> None:
    from gopflow.pipeline.runner import _NodeWatch

    watch = _NodeWatch(2)
    watch.bench(1)
    assert 1 in watch and 0 not in watch
    watch.bench(0)  # the last slot that can work is never benched
    assert 0 not in watch
    assert watch.rejoined() == []
    watch.benched[1] = 0.0  # its rest is over
    assert watch.rejoined() == [1] and 1 not in watch
