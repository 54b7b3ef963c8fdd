"""Run stage functions over GOPs on Ray, with a bounded window and retries.

The runner is the only module that knows Ray. It starts a local cluster (dashboard off) or
connects to an existing one (``address`` / ``RAY_ADDRESS``), submits at most ``window``
tasks at a time (backpressure: the driver never holds more than ``window`` results), retries
failed tasks, and hands each result to a callback as soon as it arrives (any order; the
assembly step restores order from GOP indices). Stage functions are plain module-level
functions: ``fn(item) -> result``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from gopflow.errors import ClusterError, EncoderError, GopFailedError, GopflowError

Item = TypeVar("Item")
Result = TypeVar("Result")

# Exceptions worth another try: a crashed or failing encoder process. Bad input is not
# retried (it would fail again); Ray retries lost workers and nodes on its own.
RETRYABLE: tuple[type[BaseException], ...] = (EncoderError, OSError)


def _quiet_ray_environment() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@dataclass(frozen=True)
class Placed:
    """A stage result and the Ray node it ran on."""

    value: Any
    node_id: str


def _run_placed(fn: Callable[[Any], Any], item: Any) -> Placed:
    import ray

    return Placed(fn(item), ray.get_runtime_context().get_node_id())


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
                ray.init(address="local", num_cpus=self.num_cpus or os.cpu_count(), **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.address or "a local cluster"
            raise ClusterError(f"cannot start or reach Ray at {where}: {exc}") from exc
        self._started_here = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started_here:
            import ray

            ray.shutdown()

    @staticmethod
    def cluster_cpus() -> int:
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def map_unordered(
        self,
        fn: Callable[[Item], Result],
        items: Iterable[Item],
        describe: Callable[[Item], str],
        cpus_per_item: float = 1,
        window: int = 4,
        max_retries: int = 2,
    ) -> Iterator[tuple[Item, Result, str]]:
        """Yield ``(item, fn(item), node_id)`` as tasks finish, at most ``window`` in flight."""
        import ray

        remote = ray.remote(_run_placed).options(
            num_cpus=cpus_per_item,
            max_retries=max_retries,
            retry_exceptions=list(RETRYABLE),
        )
        pending: dict[Any, Item] = {}
        source = iter(items)
        exhausted = False
        try:
            while pending or not exhausted:
                while not exhausted and len(pending) < max(1, window):
                    try:
                        item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    pending[remote.remote(fn, item)] = item
                if not pending:
                    break
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    item = pending.pop(ref)
                    try:
                        placed: Placed = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        cause = exc.cause if exc.cause is not None else exc
                        reason = str(cause).strip().splitlines()[0] if str(cause) else repr(cause)
                        if isinstance(cause, GopflowError) and not isinstance(cause, EncoderError):
                            raise type(cause)(f"{describe(item)}: {reason}") from None
                        raise GopFailedError(
                            f"{describe(item)} failed after {max_retries} retries: {reason}"
                        ) from None
                    except ray.exceptions.RayError as exc:
                        reason = str(exc).strip().splitlines()[0]
                        raise GopFailedError(f"{describe(item)} failed: {reason}") from None
                    yield item, placed.value, placed.node_id
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
