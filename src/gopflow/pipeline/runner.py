"""Run stage functions over GOPs on Ray, with a bounded window and retries.

The runner is the only module that knows Ray. It starts a local cluster (dashboard off) or
connects to an existing one (``address`` / ``RAY_ADDRESS``) and runs a stage over items with
bounded work in flight (backpressure: the driver never holds more than that many results),
retries, and results yielded as they arrive (any order; assembly restores order by index).

``map_groups`` runs stateful stages (``factory() -> stage``, ``stage(item)``) in one Ray
actor per slot over a stream of groups (one video's GOPs each: a batch's files, or the one
file of a transcode). Each actor works through a lane of consecutive GOPs, so it can keep
its decoder running; an actor whose lane runs dry pulls the next group, then steals the far
half of the longest remaining lane (``lanes.LaneScheduler``), so no core idles while work is
left and the next video starts while the last one finishes.
"""

from __future__ import annotations

import contextlib
import heapq
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
from gopflow.pipeline.lanes import LaneScheduler

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

    The GCS takes several seconds to call a crashed node dead, and meanwhile every task sent
    to its actor fails at once. An actor that failed under a task is therefore benched for
    ``rest`` seconds, while another slot can work (the watch is a container of the slots that
    take no work: lost or benched); it rejoins after that, when its node is still alive.
    """

    interval = 2.0
    rest = 30.0

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.where: dict[int, Any] = {}  # slot -> node id, or the ref that will tell it
        self.lost: set[int] = set()
        self.benched: dict[int, float] = {}  # slot -> when it may work again
        self._checked = time.monotonic()

    def __contains__(self, slot: object) -> bool:
        return slot in self.lost or slot in self.benched

    def bench(self, slot: int) -> None:
        """``slot``'s actor failed under a task: no work for it for a while, if another
        slot can work; the nodes are looked at on the next ``reclaim``."""
        if any(s != slot and s not in self for s in range(self.slots)):
            self.benched[slot] = time.monotonic() + self.rest
        self._checked = -self.interval

    def rejoined(self) -> list[int]:
        """The benched slots whose rest is over (each returned once)."""
        now = time.monotonic()
        back = [slot for slot, until in self.benched.items() if until <= now]
        for slot in back:
            del self.benched[slot]
        return [slot for slot in back if slot not in self.lost]

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
            self.benched.pop(slot, None)
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
    lanes: LaneScheduler[Any],
    fill: Callable[[int], None],
    elsewhere: bool = False,
) -> None:
    """Put the tasks taken off lost actors back in their lanes (``elsewhere``: in other
    actors' lanes), for the other actors to steal, and fill every actor that has room; a
    :class:`ClusterError` (resumable) when no actor is left to run them."""
    if not taken:
        return
    for slot, position in taken:
        lanes.put_back(slot, position, elsewhere)
    for slot in range(lanes.slots):
        fill(slot)
    if not any(lanes.busy) and lanes.queued():  # no actor left to take them
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
        work in lanes of consecutive GOPs (:class:`~gopflow.pipeline.lanes.LaneScheduler`),
        so an actor keeps its decoder running, and no core idles while work is left. Items
        of a group for which ``dropped(group)`` turns true (its video failed) are not started.
        At most ``actors * depth`` items are in flight.
        """
        import ray

        actor_class = ray.remote(_StageActor).options(
            num_cpus=cpus_per_item, max_restarts=max_retries, max_task_retries=max_retries
        )
        slots = max(1, actors)
        pool: list[Any] = [None] * slots  # actors start with their first item
        pending: dict[Any, tuple[int, int]] = {}  # ref -> (actor, item position)
        watch = _NodeWatch(slots)
        lanes: LaneScheduler[Item] = LaneScheduler(groups, slots, cost, dropped, watch)
        lost_tries: dict[int, int] = {}  # position -> times its actor was lost under it

        def submit(actor: int) -> bool:
            position = lanes.take(actor)
            if position is None:
                return False
            if pool[actor] is None:
                pool[actor] = actor_class.remote(factory)
                watch.placed(actor, pool[actor])
            ref = pool[actor].run.options(retry_exceptions=list(RETRYABLE)).remote(
                lanes.item(position)
            )
            pending[ref] = (actor, position)
            lanes.sent(actor, position)
            return True

        def fill(actor: int) -> None:
            """Send ``actor`` work until it has ``depth`` items in flight or none is left
            for it."""
            while lanes.busy[actor] < depth and submit(actor):
                pass

        try:
            for _ in range(depth):
                for actor in range(slots):
                    submit(actor)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=watch.interval)
                _hand_over(watch.reclaim(pool, pending), lanes, fill)
                for slot in watch.rejoined():
                    fill(slot)
                for ref in ready:
                    if ref not in pending:
                        continue  # taken off a lost actor just now
                    actor, position = pending.pop(ref)
                    try:
                        placed: Placed = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        if _actor_lost(exc, position, lost_tries, max_retries):
                            # Its node may be dying: the task goes to another actor.
                            watch.bench(actor)
                            _hand_over([(actor, position)], lanes, fill, elsewhere=True)
                            continue
                        group, item = lanes.done(actor, position)
                        outcome = Outcome(
                            group, item, error=_failure(describe(item), exc, max_retries)
                        )
                    else:
                        group, item = lanes.done(actor, position)
                        outcome = Outcome(group, item, placed.value, placed.node_id)
                    fill(actor)
                    yield outcome
            if lanes.queued():
                raise ClusterError("no Ray worker left to run the rest; run again with --resume")
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
        most ``window`` results while it waits for a slow one. The node watch hands the items
        of an actor whose node died to the others, as in :meth:`map_groups`.
        """
        import ray

        if not items:
            return
        window = max(1, window)
        actor_class = ray.remote(_StageActor).options(
            num_cpus=cpus_per_item, max_restarts=max_retries, max_task_retries=max_retries
        )
        pool = [actor_class.remote(factory) for _ in range(max(1, min(actors, len(items))))]
        watch = _NodeWatch(len(pool))
        for slot, handle in enumerate(pool):
            watch.placed(slot, handle)
        idle = deque(range(len(pool)))
        redo: list[int] = []  # positions taken off lost actors, to run again (a heap)
        lost_tries: dict[int, int] = {}
        pending: dict[Any, tuple[int, int]] = {}  # ref -> (actor, item position)
        done: dict[int, Any] = {}
        submitted = emitted = 0

        def free(actor: int) -> None:
            if actor not in watch:  # a lost or benched slot takes no work
                idle.append(actor)

        try:
            while emitted < len(items):
                idle.extend(watch.rejoined())
                while idle and (redo or (submitted < len(items) and submitted - emitted < window)):
                    actor = idle.popleft()
                    if redo:
                        position = heapq.heappop(redo)
                    else:
                        position, submitted = submitted, submitted + 1
                    ref = (
                        pool[actor]
                        .run.options(retry_exceptions=list(RETRYABLE))
                        .remote(items[position])
                    )
                    pending[ref] = (actor, position)
                if emitted in done:
                    yield items[emitted], done.pop(emitted)
                    emitted += 1
                    continue
                if not pending:  # every slot lost (a benched one always leaves another)
                    raise ClusterError(
                        "lost the Ray nodes running every worker; run the job again"
                    )
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=watch.interval)
                for _, position in watch.reclaim(pool, pending):
                    heapq.heappush(redo, position)
                for ref in ready:
                    if ref not in pending:
                        continue  # taken off a lost actor just now
                    actor, position = pending.pop(ref)
                    try:
                        done[position] = ray.get(ref).value
                    except ray.exceptions.RayError as exc:
                        if not _actor_lost(exc, position, lost_tries, max_retries):
                            raise _failure(describe(items[position]), exc, max_retries) from None
                        watch.bench(actor)  # its node may be dying: another actor runs it
                        heapq.heappush(redo, position)
                    free(actor)
        finally:
            _release(pending, pool)
