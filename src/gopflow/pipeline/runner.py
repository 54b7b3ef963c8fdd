"""Run stage functions over GOPs on Ray, with a bounded window and retries.

The runner is the only module that knows Ray. It starts a local cluster (dashboard off) or
connects to an existing one (``address`` / ``RAY_ADDRESS``) and runs a stage over items with
bounded work in flight (backpressure: the driver never holds more than that many results),
retries, and results yielded as they arrive (any order; assembly restores order by index).

``map_groups`` runs stateful stages (``factory() -> stage``, ``stage(item)``) in one Ray
actor per slot over a stream of groups (one video's GOPs each: a batch's files, or the one
file of a transcode). Each actor works through a contiguous lane of one group, so it sees
consecutive GOPs and can keep its decoder running; an actor whose lane runs dry pulls the
next group, then steals from the far end of the longest remaining lane (work stealing), so
no core idles while work is left and the next video starts while the last one finishes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from gopflow.errors import ClusterError, EncoderError, GopFailedError, GopflowError
from gopflow.pipeline import reaper

_LOG = logging.getLogger("gopflow.ray")
Item = TypeVar("Item")
Result = TypeVar("Result")

# Exceptions worth another try: a crashed or failing encoder process. Bad input is not
# retried (it would fail again); Ray retries lost workers and nodes on its own.
RETRYABLE: tuple[type[BaseException], ...] = (EncoderError, BrokenPipeError)
# A local cluster's object store only carries results in flight (a few encoded GOPs): a
# small one keeps its shared memory small.
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024


def _quiet_ray_environment() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def _ray_message(data: dict[str, Any], ignore_prefix: bool = False) -> None:
    """Where the driver's Ray error listener sends what it receives: gopflow's log."""
    for line in data.get("lines", ()):
        _LOG.debug("ray %s: %s", data.get("pid"), line)


def _quiet_error_listener() -> None:
    """Keep Ray's task-failure notices ("Task ... failed. There are 2 retries remaining",
    with the worker's traceback) off the user's terminal.

    The driver's error listener thread prints them to stdout through
    ``ray._private.worker.print_to_stdstream`` even without ``log_to_driver``; the runner
    reports a GOP that fails for good as one line of its own, so the notices go to the
    ``gopflow.ray`` logger instead. (Ray offers no public switch for this listener.)
    """
    import ray._private.worker as ray_worker

    if hasattr(ray_worker, "print_to_stdstream"):
        ray_worker.print_to_stdstream = _ray_message


@dataclass(frozen=True)
class Outcome:
    """One item's end: the stage's result and the node it ran on, or the error that ended
    it after its retries. ``group`` is the ordinal of the group the item came in."""

    group: int
    item: Any
    value: Any = None
    node_id: str = ""
    error: GopflowError | None = None


@dataclass(frozen=True)
class Placed:
    """A stage result and the Ray node it ran on."""

    value: Any
    node_id: str


class _StageActor:
    """Hosts one stateful stage inside a Ray actor."""

    def __init__(self, factory: Callable[[], Callable[[Any], Any]]) -> None:
        self.stage = factory()

    def run(self, item: Any) -> Placed:
        import ray

        return Placed(self.stage(item), ray.get_runtime_context().get_node_id())

    def node(self) -> str:
        import ray

        return str(ray.get_runtime_context().get_node_id())


class _NodeWatch:
    """Finds the actors whose node died, so that their GOPs go to the actors left.

    Ray restarts the actor of a dead node (``max_restarts``), but the restart needs a CPU
    and the pool holds one actor per cluster CPU: with the node gone there is none, so the
    restart, and every task queued on it, would wait forever (the job hung). Every
    ``interval`` seconds the watch asks the GCS which nodes are alive; an actor on a dead
    node is stopped for good and its slot retired, and the caller hands its tasks to the
    others. A worker process that dies on a live node is still Ray's to restart.
    """

    interval = 2.0

    def __init__(self) -> None:
        self.where: dict[int, Any] = {}  # slot -> node id, or the ref that will tell it
        self.lost: set[int] = set()
        self._checked = time.monotonic()

    def placed(self, slot: int, handle: Any) -> None:
        self.where[slot] = handle.node.remote()

    def reclaim(
        self, pool: list[Any], pending: dict[Any, tuple[int, int]]
    ) -> list[tuple[int, int]]:
        """``(slot, position)`` of every task taken off an actor whose node died (removed
        from ``pending``); at most one look at the cluster per ``interval``."""
        import ray

        now = time.monotonic()
        if now - self._checked < self.interval:
            return []
        self._checked = now
        alive = {node["NodeID"] for node in ray.nodes() if node.get("Alive")}
        taken: list[tuple[int, int]] = []
        for slot, where in list(self.where.items()):
            if slot in self.lost:
                continue
            if not isinstance(where, str):
                ready, _ = ray.wait([where], timeout=0)
                if not ready:
                    continue
                try:
                    where = self.where[slot] = str(ray.get(ready[0]))
                except ray.exceptions.RayError:
                    continue
            if where in alive:
                continue
            self.lost.add(slot)
            with contextlib.suppress(Exception):
                ray.kill(pool[slot], no_restart=True)
            for ref, (owner, position) in list(pending.items()):
                if owner == slot:
                    del pending[ref]
                    taken.append((slot, position))
            _LOG.debug("node %s of actor %d died; %d tasks moved", where, slot, len(taken))
        return taken


def _release(pending: dict[Any, Any], pool: list[Any]) -> None:
    """Cancel the tasks still in flight and stop the actors (a generator closed early, by an
    error or an interrupt). Nothing to do once the cluster is down: calling Ray then would
    start a new local instance."""
    import ray

    if not ray.is_initialized():
        return
    for ref in pending:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=False)
    for handle in pool:
        with contextlib.suppress(Exception):
            ray.kill(handle)


def _hand_over(
    taken: list[tuple[int, int]],
    lanes: list[deque[int]],
    busy: list[int],
    submit: Callable[[int], bool],
    depth: int,
) -> None:
    """Put the tasks taken off lost actors back in their lanes, for the other actors to
    steal, and fill every actor that has room; a :class:`ClusterError` (resumable) when no
    actor is left to run them."""
    if not taken:
        return
    for slot, position in taken:
        busy[slot] -= 1
        lanes[slot].append(position)
    for slot in range(len(busy)):
        while busy[slot] < depth and submit(slot):
            pass
    if not any(busy) and any(lanes):  # no actor left to take them
        raise ClusterError("lost the Ray nodes running every worker; run again with --resume")


def _actor_lost(exc: BaseException, position: int, tries: dict[int, int], limit: int) -> bool:
    """Whether a task whose actor was lost or unreachable under it (its node died: Ray says
    the task "may or may not have been executed" and does not retry it) gets another go,
    at most ``limit`` times per item. The stage's own errors are not this."""
    import ray

    if not isinstance(exc, ray.exceptions.RayActorError):
        return False
    tries[position] = tries.get(position, 0) + 1
    return tries[position] <= limit


def _local_cluster_pids() -> list[int]:
    """The processes of the local cluster this driver started (GCS, raylet, monitors)."""
    import ray._private.worker as ray_worker

    node = getattr(ray_worker, "_global_node", None)
    try:
        return (
            [getattr(proc, "process", proc).pid for _, proc in node.live_processes()]
            if node
            else []
        )
    except Exception:  # a private API: without it there is just no reaper
        return []


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


def _failure(item_text: str, exc: BaseException, max_retries: int) -> GopflowError:
    """A one-line job error for a task that failed for good."""
    import ray

    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause if exc.cause is not None else exc
        text = str(cause).strip()
        reason = text.splitlines()[0] if text else repr(cause)
        if isinstance(cause, GopflowError) and not isinstance(cause, EncoderError):
            return type(cause)(f"{item_text}: {reason}")
        return GopFailedError(f"{item_text} failed after {max_retries} retries: {reason}")
    text = str(exc).strip()
    return GopFailedError(f"{item_text} failed: {text.splitlines()[0] if text else repr(exc)}")


class RayRunner:
    """A Ray connection used as a context manager."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.num_cpus = num_cpus
        self._started_here = False
        self._reaper: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RayRunner:
        _quiet_ray_environment()
        import ray

        if ray.is_initialized():
            return self
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": "ERROR",
            "configure_logging": True,
        }
        try:
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                ray.init(
                    address="local",
                    num_cpus=self.num_cpus or os.cpu_count(),
                    object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                    # Actors start their own workers: idle pre-started ones only cost memory.
                    _system_config={
                        "enable_worker_prestart": False,
                        "prestart_worker_first_driver": False,
                    },
                    **kwargs,
                )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.address or "a local cluster"
            raise ClusterError(f"cannot start or reach Ray at {where}: {exc}") from exc
        self._started_here = True
        if not self.address:
            self._reaper = reaper.spawn(_local_cluster_pids())
        _quiet_error_listener()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started_here:
            import ray

            ray.shutdown()
            reaper.release(self._reaper)
            self._reaper = None

    @staticmethod
    def cluster_cpus() -> int:
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def map_groups(
        self,
        factory: Callable[[], Callable[[Item], Result]],
        groups: Iterable[Sequence[Item]],
        describe: Callable[[Item], str],
        cost: Callable[[Item], float],
        cpus_per_item: float = 1,
        actors: int = 2,
        depth: int = 2,
        max_retries: int = 2,
        dropped: Callable[[int], bool] = lambda group: False,
    ) -> Iterator[Outcome]:
        """Run ``stage(item)`` for every item of every group; yield an :class:`Outcome` per
        item as it finishes (a failed item is an outcome with ``error``, not an exception).

        A group is a run of one video's GOPs in stream order (a video comes as one group or
        as several, as its plan advances). The groups are pulled lazily, when an actor runs
        out of work, so a caller can plan while earlier GOPs encode. Idle actors share the
        group they pull in contiguous lanes of similar cost; an actor whose lane runs dry
        pulls the next group whole, and once the groups are exhausted it steals the far half
        of the longest remaining lane. An actor so sees consecutive GOPs and keeps its
        decoder running, and no core idles while work is left. Items of a
        group for which ``dropped(group)`` turns true (its video failed) are not started.
        At most ``actors * depth`` items are in flight.
        """
        import ray

        actor_class = ray.remote(_StageActor).options(
            num_cpus=cpus_per_item, max_restarts=max_retries, max_task_retries=max_retries
        )
        slots = max(1, actors)
        pool: list[Any] = [None] * slots  # actors start with their first item
        lanes: list[deque[int]] = [deque() for _ in range(slots)]
        busy = [0] * slots
        last_sent = [-2] * slots  # the position each actor was last sent
        items: dict[int, tuple[int, Item]] = {}  # position -> (group, item)
        pending: dict[Any, tuple[int, int]] = {}  # ref -> (actor, item position)
        source = iter(groups)
        pulled = 0
        next_position = 0
        watch = _NodeWatch()
        lost_tries: dict[int, int] = {}  # position -> times its actor was lost under it

        def lane_cost(lane: deque[int]) -> float:
            return sum(cost(items[p][1]) for p in lane)

        def tail(actor: int) -> int:
            """The last position given to ``actor``: its lane's end, else its last sent."""
            return lanes[actor][-1] if lanes[actor] else last_sent[actor]

        def pull(actor: int) -> bool:
            """Give the next group to the actor whose work it continues (a video planned in
            batches: its GOPs stay on one decoder; ``actor`` then steals the far half), else
            split it among ``actor`` and the other idle actors (``actor``'s lane first);
            False once the groups are spent."""
            nonlocal pulled, next_position
            for group in source:
                ordinal, pulled = pulled, pulled + 1
                if not group:
                    continue
                positions = list(range(next_position, next_position + len(group)))
                next_position += len(group)
                for position, item in zip(positions, group, strict=True):
                    items[position] = (ordinal, item)
                follows = [
                    a for a in range(slots)
                    if a != actor and a not in watch.lost and tail(a) == positions[0] - 1
                ]
                if follows and tail(actor) != positions[0] - 1:
                    lanes[follows[0]].extend(positions)
                    return True
                idle = [actor] + [
                    a
                    for a in range(slots)
                    if a != actor and not busy[a] and not lanes[a] and a not in watch.lost
                ]
                runs = split_lanes([cost(item) for item in group], len(idle))
                for owner, run in zip(idle, runs, strict=False):
                    lanes[owner].extend(positions[i] for i in run)
                return True
            return False

        def far_half(lane: deque[int]) -> list[int]:
            """Take the far end of ``lane`` that holds about half its cost (at least one)."""
            half, got, taken = lane_cost(lane) / 2, 0.0, []
            while lane and got < half:
                taken.append(lane.pop())
                got += cost(items[taken[-1]][1])
            return taken[::-1]

        def take(actor: int) -> int | None:
            while True:
                if not lanes[actor]:
                    pull(actor)
                if not lanes[actor]:
                    # Steal the far half of the lane with the most work left, in order: both
                    # actors go on reading consecutive GOPs, and the thief seeks once.
                    donor = max(range(slots), key=lambda i: lane_cost(lanes[i]))
                    if not lanes[donor]:
                        return None
                    lanes[actor].extend(far_half(lanes[donor]))
                position = lanes[actor].popleft()
                if not dropped(items[position][0]):
                    return position
                del items[position]

        def submit(actor: int) -> bool:
            position = None if actor in watch.lost else take(actor)
            if position is None:
                return False
            if pool[actor] is None:
                pool[actor] = actor_class.remote(factory)
                watch.placed(actor, pool[actor])
            item = items[position][1]
            ref = pool[actor].run.options(retry_exceptions=list(RETRYABLE)).remote(item)
            pending[ref] = (actor, position)
            last_sent[actor] = position
            busy[actor] += 1
            return True

        try:
            for _ in range(depth):
                for actor in range(slots):
                    submit(actor)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=watch.interval)
                _hand_over(watch.reclaim(pool, pending), lanes, busy, submit, depth)
                for ref in ready:
                    if ref not in pending:
                        continue  # taken off a lost actor just now
                    actor, position = pending.pop(ref)
                    busy[actor] -= 1
                    group, item = items.pop(position)
                    try:
                        placed: Placed = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        if _actor_lost(exc, position, lost_tries, max_retries):
                            items[position] = (group, item)
                            busy[actor] += 1  # counted off again by _hand_over
                            _hand_over([(actor, position)], lanes, busy, submit, depth)
                            continue
                        outcome = Outcome(
                            group, item, error=_failure(describe(item), exc, max_retries)
                        )
                    else:
                        outcome = Outcome(group, item, placed.value, placed.node_id)
                    submit(actor)
                    yield outcome
        finally:
            _release(pending, [handle for handle in pool if handle is not None])

    def map_ordered(
        self,
        factory: Callable[[], Callable[[Item], Result]],
        items: Sequence[Item],
        describe: Callable[[Item], str],
        cpus_per_item: float = 1,
        actors: int = 2,
        window: int = 4,
        max_retries: int = 2,
    ) -> Iterator[tuple[Item, Result]]:
        """Yield ``(item, stage(item))`` in the order of ``items``.

        For consumers that write a stream (decoding to a file): items go to whichever actor is
        free, at most ``window`` of them past the next one to yield, so the driver holds at
        most ``window`` results while it waits for a slow one.
        """
        import ray

        if not items:
            return
        window = max(1, window)
        actor_class = ray.remote(_StageActor).options(
            num_cpus=cpus_per_item, max_restarts=max_retries, max_task_retries=max_retries
        )
        pool = [actor_class.remote(factory) for _ in range(max(1, min(actors, len(items))))]
        idle = deque(range(len(pool)))
        pending: dict[Any, tuple[int, int]] = {}  # ref -> (actor, item position)
        done: dict[int, Any] = {}
        submitted = emitted = 0
        try:
            while emitted < len(items):
                while idle and submitted < len(items) and submitted - emitted < window:
                    actor = idle.popleft()
                    ref = (
                        pool[actor]
                        .run.options(retry_exceptions=list(RETRYABLE))
                        .remote(items[submitted])
                    )
                    pending[ref] = (actor, submitted)
                    submitted += 1
                if emitted not in done:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    for ref in ready:
                        actor, position = pending.pop(ref)
                        idle.append(actor)
                        try:
                            done[position] = ray.get(ref).value
                        except ray.exceptions.RayError as exc:
                            raise _failure(describe(items[position]), exc, max_retries) from None
                    continue
                yield items[emitted], done.pop(emitted)
                emitted += 1
        finally:
            _release(pending, pool)
