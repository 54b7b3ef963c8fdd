"""Run stage functions over GOPs on Ray, with a bounded window and retries.

The runner is the only module that knows Ray. It starts a local cluster (dashboard off) or
connects to an existing one (``address`` / ``RAY_ADDRESS``) and runs a stage over items with
bounded work in flight (backpressure: the driver never holds more than that many results),
retries, and results yielded as they arrive (any order; assembly restores order by index).

``map_lanes`` runs stateful stages (``factory() -> stage``, ``stage(item)``) in one Ray actor
per slot. Items are split into contiguous lanes, one per actor, so an actor sees consecutive
GOPs and can keep its decoder running; an actor whose lane runs dry takes work from the far
end of the longest remaining lane (work stealing), so no core idles while work is left.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from gopflow.errors import ClusterError, EncoderError, GopFailedError, GopflowError

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
        _quiet_error_listener()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started_here:
            import ray

            ray.shutdown()

    @staticmethod
    def cluster_cpus() -> int:
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def map_lanes(
        self,
        factory: Callable[[], Callable[[Item], Result]],
        items: Sequence[Item],
        describe: Callable[[Item], str],
        cost: Callable[[Item], float],
        cpus_per_item: float = 1,
        actors: int = 2,
        depth: int = 2,
        max_retries: int = 2,
    ) -> Iterator[tuple[Item, Result, str]]:
        """Yield ``(item, stage(item), node_id)``; each actor works through a contiguous lane.

        At most ``actors * depth`` items are in flight. ``items`` must be in stream order.
        """
        import ray

        if not items:
            return
        lanes = [deque(run) for run in split_lanes([cost(i) for i in items], actors)]
        actor_class = ray.remote(_StageActor).options(
            num_cpus=cpus_per_item, max_restarts=max_retries, max_task_retries=max_retries
        )
        pool = [actor_class.remote(factory) for _ in lanes]
        pending: dict[Any, tuple[int, int]] = {}  # ref -> (actor, item position)

        def submit(actor: int) -> bool:
            lane = lanes[actor]
            if lane:
                position = lane.popleft()
            else:
                # Steal from the far end of the lane with the most work left.
                donor = max(range(len(lanes)), key=lambda i: sum(cost(items[p]) for p in lanes[i]))
                if not lanes[donor]:
                    return False
                position = lanes[donor].pop()
            ref = pool[actor].run.options(retry_exceptions=list(RETRYABLE)).remote(items[position])
            pending[ref] = (actor, position)
            return True

        try:
            for actor in range(len(pool)):
                for _ in range(depth):
                    submit(actor)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    actor, position = pending.pop(ref)
                    item = items[position]
                    try:
                        placed: Placed = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        raise _failure(describe(item), exc, max_retries) from None
                    submit(actor)
                    yield item, placed.value, placed.node_id
        finally:
            _release(pending, pool)

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
                    ref = pool[actor].run.options(retry_exceptions=list(RETRYABLE)).remote(
                        items[submitted]
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
