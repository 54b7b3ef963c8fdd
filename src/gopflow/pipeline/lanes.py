"""Which actor runs which item next: contiguous lanes of consecutive items per actor.

A worker that reads a video's GOPs in order keeps its decoder running; every jump is a seek
and a re-decode from the source's previous key frame. The scheduler therefore gives each
actor a lane of consecutive positions and moves work between lanes in whole runs. It is
plain Python (the runner drives it with Ray), so its policy can be tested by simulation.

Positions number the items of all groups in the order they are pulled. A group is one
video's GOPs in stream order, and a video may come as several groups as its plan advances.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Container, Iterable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")


def split_lanes(costs: Sequence[float], lanes: int) -> list[list[int]]:
    """Split positions ``0..n-1`` into at most ``lanes`` contiguous runs of similar cost."""
    total = float(sum(costs))
    lanes = max(1, min(lanes, len(costs)))
    runs: list[list[int]] = [[] for _ in range(lanes)]
    done = 0.0
    for position, cost in enumerate(costs):
        lane = min(lanes - 1, int(done / total * lanes)) if total > 0 else position % lanes
        runs[lane].append(position)
        done += cost
    return [run for run in runs if run]


class LaneScheduler(Generic[Item]):
    """Lanes of consecutive positions, one per actor slot, over a lazily pulled stream of
    groups.

    An actor whose lane runs dry pulls the next group. A group that continues another
    actor's lane goes to that actor (a video planned in batches stays on one decoder);
    otherwise the group is split among the idle actors in contiguous runs of similar cost.
    An actor left without work steals the far half of the longest lane, in order, so both
    go on reading consecutive items and the thief seeks once.
    """

    def __init__(
        self,
        groups: Iterable[Sequence[Item]],
        slots: int,
        cost: Callable[[Item], float],
        dropped: Callable[[int], bool] = lambda group: False,
        unavailable: Container[int] = frozenset(),
    ) -> None:
        self.slots = max(1, slots)
        self.lanes: list[deque[int]] = [deque() for _ in range(self.slots)]
        self.busy = [0] * self.slots  # items sent to each actor and not yet done
        self._cost = cost
        self._dropped = dropped
        self._unavailable = unavailable  # slots that take no work (node lost, or benched)
        self._source = iter(groups)
        self._items: dict[int, tuple[int, Item]] = {}  # position -> (group, item)
        self._last_sent = [-2] * self.slots
        self._pulled = 0
        self._next_position = 0

    def item(self, position: int) -> Item:
        return self._items[position][1]

    def take(self, actor: int) -> int | None:
        """The next position for ``actor`` (pulling or stealing as needed); None when no
        work is left for it, when its slot is unavailable, or when it has work in flight
        and only another live lane's last item is left."""
        if actor in self._unavailable:
            return None
        while True:
            if not self.lanes[actor]:
                self._pull(actor)
            if not self.lanes[actor]:
                donor = max(range(self.slots), key=lambda i: self._lane_cost(self.lanes[i]))
                if not self.lanes[donor]:
                    return None
                # An actor with work in flight takes no live lane's last item: its owner
                # reads it next without a seek, and the thief would seek for one item.
                live = donor not in self._unavailable
                if self.busy[actor] and len(self.lanes[donor]) < 2 and live:
                    return None
                self.lanes[actor].extend(self._far_half(self.lanes[donor]))
            position = self.lanes[actor].popleft()
            if not self._dropped(self._items[position][0]):
                return position
            del self._items[position]

    def sent(self, actor: int, position: int) -> None:
        """``position`` went to ``actor``."""
        self._last_sent[actor] = position
        self.busy[actor] += 1

    def done(self, actor: int, position: int) -> tuple[int, Item]:
        """``actor`` finished ``position`` (either way): its ``(group, item)``."""
        self.busy[actor] -= 1
        return self._items.pop(position)

    def queued(self) -> int:
        """Items waiting in lanes (none once every actor has drained them)."""
        return sum(len(lane) for lane in self.lanes)

    def put_back(self, actor: int, position: int, elsewhere: bool = False) -> None:
        """``position`` was taken off ``actor`` unfinished (its node died): it waits at the
        end of that actor's lane, for another actor to steal; with ``elsewhere`` (the actor
        failed under it and may be gone) at the end of the shortest lane of another live
        actor, so it is not sent to the same actor again."""
        self.busy[actor] -= 1
        others = [a for a in range(self.slots) if a != actor and a not in self._unavailable]
        if elsewhere and others:
            actor = min(others, key=lambda a: (self._lane_cost(self.lanes[a]), a))
        self.lanes[actor].append(position)

    def _lane_cost(self, lane: deque[int]) -> float:
        return sum(self._cost(self._items[p][1]) for p in lane)

    def _tail(self, actor: int) -> int:
        """The last position given to ``actor``: its lane's end, else its last sent."""
        return self.lanes[actor][-1] if self.lanes[actor] else self._last_sent[actor]

    def _pull(self, actor: int) -> None:
        """Place the next non-empty group, if any is left."""
        for group in self._source:
            ordinal, self._pulled = self._pulled, self._pulled + 1
            if not group:
                continue
            first = self._next_position
            positions = list(range(first, first + len(group)))
            self._next_position += len(group)
            for position, item in zip(positions, group, strict=True):
                self._items[position] = (ordinal, item)
            follows = [
                a for a in range(self.slots)
                if a != actor and a not in self._unavailable and self._tail(a) == first - 1
            ]
            if follows and self._tail(actor) != first - 1:
                self.lanes[follows[0]].extend(positions)
                return
            idle = [actor] + [
                a
                for a in range(self.slots)
                if a != actor and not (self.busy[a] or self.lanes[a] or a in self._unavailable)
            ]
            runs = split_lanes([self._cost(item) for item in group], len(idle))
            for owner, run in zip(idle, runs, strict=False):
                self.lanes[owner].extend(positions[i] for i in run)
            return

    def _far_half(self, lane: deque[int]) -> list[int]:
        """Take the far end of ``lane`` that holds about half its cost (at least one)."""
        half, got, taken = self._lane_cost(lane) / 2, 0.0, []
        while lane and got < half:
            taken.append(lane.pop())
            got += self._cost(self._items[taken[-1]][1])
        return taken[::-1]
