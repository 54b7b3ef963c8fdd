"""Stops a local Ray cluster whose driver died without shutting it down (SIGKILL, OOM).

Ray's own processes notice a dead driver only after a timeout (its agents and idle workers
linger for seconds to a minute). When :class:`~gopflow.pipeline.runner.RayRunner` starts a
local cluster it starts this reaper in a session of its own, hands it the cluster's
process ids and keeps a pipe to it open:

- the driver shuts the cluster down, writes ``done`` and closes the pipe: the reaper exits;
- the driver dies: the pipe reaches end-of-file with no ``done``, and the reaper sends
  SIGTERM, then SIGKILL after two seconds, to those processes and every descendant it saw
  (it notes the tree each second: Ray's agents outlive the raylet that started them), each
  only if it is still the process it was (same start time), never to a reused pid.

Linux only (it reads ``/proc``); elsewhere the runner does not start it. Written by hand: no
library watches a parent through a pipe and reaps a process tree without psutil, which is
only a development dependency here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence

DONE = b"done"


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of ``/proc/PID/stat``), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after it follow its ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1:
            tree.setdefault(int(fields[1]), []).append(int(name))
    return tree


def _tree(roots: Iterable[int]) -> list[int]:
    children = _children()
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def reap(processes: Sequence[tuple[int, str]]) -> None:
    """SIGTERM, then SIGKILL, the still-living ``(pid, start time)`` processes and theirs."""
    roots = [pid for pid, started in processes if start_time(pid) == started]
    targets = [(pid, start_time(pid)) for pid in _tree(roots)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [
            (pid, started)
            for pid, started in targets
            if started is not None and start_time(pid) == started
        ]
        for pid, _ in alive:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 2.0
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [(pid, s) for pid, s in alive if start_time(pid) == s]
        if not alive:
            return


def spawn(pids: Sequence[int]) -> subprocess.Popen[bytes] | None:
    """Start a reaper for ``pids``; None where it cannot run (no ``/proc``)."""
    if not os.path.isdir("/proc"):
        return None
    processes = [f"{pid}:{start_time(pid)}" for pid in pids if start_time(pid) is not None]
    return subprocess.Popen(
        [sys.executable, "-m", "gopflow.pipeline.reaper", *processes],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def release(reaper: subprocess.Popen[bytes] | None) -> None:
    """The cluster was shut down: tell the reaper so, and let it go."""
    if reaper is None or reaper.stdin is None:
        return
    try:
        reaper.stdin.write(DONE)
        reaper.stdin.close()
    except OSError:
        pass
    try:
        reaper.wait(timeout=5)
    except subprocess.TimeoutExpired:
        reaper.kill()


def main(argv: Sequence[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C itself
    known: dict[int, str] = {}
    for text in argv:
        pid, _, started = text.partition(":")
        known[int(pid)] = started
    message: list[bytes] = []
    reader = threading.Thread(target=lambda: message.append(sys.stdin.buffer.read()), daemon=True)
    reader.start()  # the read returns when the driver closes the pipe or dies
    while reader.is_alive():
        # Ray's agents and workers are the raylet's children; once the raylet is gone they
        # are nobody's, so the tree is noted while it stands.
        for pid in _tree([p for p, s in known.items() if start_time(p) == s]):
            started = start_time(pid)
            if started is not None:
                known.setdefault(pid, started)
        reader.join(timeout=1.0)
    if message != [DONE]:
        reap(list(known.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
