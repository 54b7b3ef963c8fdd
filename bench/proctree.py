"""CPU time of a whole process tree, for the benchmarks that run gopflow beside ffmpeg.

A benchmark calls :func:`become_subreaper` once: every descendant that is orphaned (Ray's
daemons and workers outlive the driver that started them by a moment) is re-parented to it,
so once :func:`reap_all` has reaped every descendant, ``RUSAGE_CHILDREN`` holds the CPU time
of the whole tree. (Sampling ``cpu_times`` instead would miss the processes that exit
between two samples, such as every per-GOP ffmpeg.)
"""

from __future__ import annotations

import ctypes
import os
import resource
import time

import psutil

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Orphaned descendants are re-parented to this process (Linux prctl)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def children_cpu_seconds() -> float:
    """User plus system seconds of every reaped descendant so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def reap_all(grace: float) -> list[str]:
    """Wait for every descendant to exit, reaping each; end any still alive after ``grace``
    seconds (by pid) and return their ``pid:name``."""
    deadline = time.monotonic() + grace
    ended: list[str] = []
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return ended
        if pid:
            continue
        if time.monotonic() > deadline:
            for child in psutil.Process().children(recursive=True):
                try:
                    ended.append(f"{child.pid}:{child.name()}")
                    child.terminate()
                except psutil.Error:
                    pass
            deadline = time.monotonic() + 10
        time.sleep(0.1)
