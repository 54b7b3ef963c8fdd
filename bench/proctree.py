"""CPU time of a whole process tree, for the benchmarks that run gopflow beside ffmpeg.

Each measured command runs in its own cgroup (v1 ``cpuacct``, or v2 ``cpu.stat``): every
process it starts (Ray's daemons and workers, every per-GOP ffmpeg) inherits the group, and
the group's counter holds their CPU time whoever reaps them and whenever they exit. Reaped
``RUSAGE_CHILDREN`` cannot do this: Ray's raylet reaps its workers without passing their
time up, so a Ray job's encoders would go uncounted. Where no cgroup can be made (not root,
no cgroup file system), the CPU time is reported as unknown (NaN), never guessed.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil

_V1 = Path("/sys/fs/cgroup/cpuacct")
_V2 = Path("/sys/fs/cgroup/unified")


class CpuGroup:
    """A fresh cgroup that a child joins before it runs (``preexec``); ``seconds()`` is the
    CPU time (user + system) of everything that ran in it."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._final: float | None = None
        name = f"gopflow-bench-{uuid.uuid4().hex[:12]}"
        for root, counter in ((_V1, "cpuacct.usage"), (_V2, "cpu.stat")):
            if (root / counter).exists() or (root / "cgroup.procs").exists():
                try:
                    (root / name).mkdir()
                except OSError:
                    continue
                if (root / name / counter).exists():
                    self.path, self._counter = root / name, counter
                    return
                (root / name).rmdir()

    def preexec(self) -> None:
        """Runs in the child between fork and exec: move it into the group."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def seconds(self) -> float:
        """CPU seconds so far (after :meth:`remove`: the final count)."""
        if self._final is not None:
            return self._final
        if self.path is None:
            return math.nan
        text = (self.path / self._counter).read_text()
        if self._counter == "cpuacct.usage":
            return int(text) / 1e9
        fields = dict(line.split() for line in text.splitlines())
        return int(fields["usage_usec"]) / 1e6

    def remove(self, grace: float = 30.0) -> list[str]:
        """End what is still running in the group after ``grace`` seconds (``pid:name``
        of each), keep the final CPU count, then remove the group."""
        if self.path is None:
            return []
        ended: list[str] = []
        deadline = time.monotonic() + grace
        while self._pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in self._pids():
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                ended.append(f"{pid}:{process.name()}")
                process.kill()
        deadline = time.monotonic() + 10
        while self._pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        self._final = self.seconds()
        with contextlib.suppress(OSError):
            self.path.rmdir()
        return ended

    def _pids(self) -> list[int]:
        assert self.path is not None
        text = (self.path / "cgroup.procs").read_text()
        return [int(line) for line in text.split() if line.strip()]


@contextlib.contextmanager
def cpu_group() -> Iterator[CpuGroup]:
    """A :class:`CpuGroup`, removed afterwards."""
    group = CpuGroup()
    try:
        yield group
    finally:
        group.remove(grace=0 if group.path is None else 30.0)
