"""The resumable work directory.

Layout (one directory per input x output x settings, named by a hash of all three)::

    <root>/<input stem>-<key>/
        lock                held (flock) by the run using the directory; holds its PID
        job.json            input identity, settings, plan (written once, atomically)
        segments/gop_00007.mp4
        done/gop_00007.json  GopRecord, written atomically *after* its segment

A GOP counts as finished only if its record exists and the segment's SHA-256 matches it,
so a crash at any point leaves either a finished GOP or nothing. Unlike Av1an's
``done.json`` the key includes every encoding parameter, and every write is
temp-file-then-rename.

One run at a time: :meth:`WorkDir.prepare` takes an exclusive ``flock`` on ``lock`` and
keeps it for the job's life (the kernel drops it when the process ends, however it ends),
so a second run of the same job fails at once, naming the first one's PID, and never
discards or deletes a directory another run holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import weakref
from collections.abc import Iterator
from typing import Any

from gopflow.errors import OutputError, WorkDirError, WorkDirLockedError
from gopflow.fileio import atomic_write_bytes, atomic_write_json
from gopflow.types import GopRecord, GopSpec

FORMAT_VERSION = 1


def input_identity(path: str) -> dict[str, Any]:
    """What identifies an input for resuming: absolute path, size and modification time."""
    stat = os.stat(path)
    return {"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def job_key(
    identity: dict[str, Any], settings: dict[str, Any], output: str | None = None
) -> str:
    job: dict[str, Any] = {"format": FORMAT_VERSION, "input": identity, "settings": settings}
    if output is not None:
        job["output"] = os.path.abspath(output)
    return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:16]


LOCK_NAME = "lock"

# The lists :func:`claimed` collects into: every work dir this process locks is added to each.
_claims: dict[int, list[WorkDir]] = {}


@contextlib.contextmanager
def claimed() -> Iterator[list[WorkDir]]:
    """The work dirs this process prepares (and so locks) inside the block, in order: a
    caller that does not hold the :class:`WorkDir` (the driver makes it) can still release
    or remove it when the job fails."""
    found: list[WorkDir] = []
    _claims[id(found)] = found
    try:
        yield found
    finally:
        del _claims[id(found)]


def _holder(fd: int) -> str:
    """The PID written in a lock file (``unknown`` if there is none yet)."""
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


def _release_lock(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)  # closing the last descriptor drops the flock


class WorkDir:
    """One job's work directory.

    ``output`` (the file the job writes) is part of the key: jobs that write different
    files never share a work dir, even with the same input and settings.
    """

    def __init__(
        self, root: str, input_path: str, settings: dict[str, Any], output: str | None = None
    ) -> None:
        self.identity = input_identity(input_path)
        self.settings = settings
        self.output = os.path.abspath(output) if output is not None else None
        self.key = job_key(self.identity, settings, output)
        stem = os.path.splitext(os.path.basename(input_path))[0][:40] or "input"
        self.path = os.path.join(os.path.abspath(root), f"{stem}-{self.key}")
        self.segments = os.path.join(self.path, "segments")
        self.done = os.path.join(self.path, "done")
        self._lock: weakref.finalize | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def prepare(self, resume: bool) -> bool:
        """Create and lock the directory; return True if an earlier run's state is reused.

        Raises :class:`WorkDirLockedError` (touching nothing) while another run holds it.
        Without ``resume`` an earlier run's state is discarded (once the lock is held).
        """
        self.acquire()
        existing = os.path.exists(os.path.join(self.path, "job.json"))
        if existing and not resume:
            self._clear()
        try:
            os.makedirs(self.segments, exist_ok=True)
            os.makedirs(self.done, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create work directory {self.path}: {exc.strerror}") from exc
        return existing and resume

    @property
    def locked(self) -> bool:
        """Whether this object holds the directory's lock."""
        return self._lock is not None and self._lock.alive

    def acquire(self) -> None:
        """Take the directory's lock (creating the directory), or raise
        :class:`WorkDirLockedError` naming the run that holds it."""
        if self.locked:
            return
        lock_path = os.path.join(self.path, LOCK_NAME)
        for _ in range(100):
            try:
                os.makedirs(self.path, exist_ok=True)
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise OutputError(
                    f"cannot create work directory {self.path}: {exc.strerror}"
                ) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pid = _holder(fd)
                os.close(fd)
                raise WorkDirLockedError(
                    f"another gopflow run (pid {pid}) is using {self.path}; wait for it to "
                    "finish or stop it"
                ) from None
            # A run that finished meanwhile may have removed the file this descriptor
            # opened: a lock on it guards nothing. Take the one at the path instead.
            try:
                on_disk = os.stat(lock_path)
                mine = os.fstat(fd)
                current = (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)
            except OSError:
                current = False
            if current:
                break
            os.close(fd)
        else:
            raise WorkDirError(f"cannot lock {lock_path}: it keeps being replaced")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock = weakref.finalize(self, _release_lock, fd)
        for found in _claims.values():
            found.append(self)

    def release(self) -> None:
        """Drop the lock (the directory stays); a no-op when it is not held."""
        if self._lock is not None:
            self._lock()
            self._lock = None

    def _clear(self) -> None:
        """Delete everything in the directory but its lock file (held by this object)."""
        for name in os.listdir(self.path):
            if name == LOCK_NAME:
                continue
            entry = os.path.join(self.path, name)
            if os.path.isdir(entry) and not os.path.islink(entry):
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry)

    def remove(self) -> None:
        """Delete the directory (and its parent, if that is left empty) and drop the lock.

        Takes the lock first if this object does not hold it: a directory another run holds
        is never deleted (:class:`WorkDirLockedError`).
        """
        if not os.path.isdir(self.path):
            self.release()
            return
        self.acquire()
        self._clear()
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.path, LOCK_NAME))
        self.release()
        with contextlib.suppress(OSError):
            os.rmdir(self.path)  # only if empty: a run that just started keeps its own
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(self.path))  # only if empty

    # -- plan --------------------------------------------------------------------------
    def save_plan(self, info: dict[str, Any], gops: list[GopSpec]) -> None:
        atomic_write_json(
            os.path.join(self.path, "job.json"),
            {
                "format": FORMAT_VERSION,
                "key": self.key,
                "input": self.identity,
                "settings": self.settings,
                "video": info,
                "gops": [g.to_dict() for g in gops],
            },
        )

    def load_plan(self) -> list[GopSpec] | None:
        path = os.path.join(self.path, "job.json")
        if not os.path.exists(path):
            return None
        try:
            with open(path, encoding="utf-8") as handle:
                job = json.load(handle)
        except (OSError, ValueError) as exc:
            raise WorkDirError(f"unreadable {path}: {exc}; delete the work dir") from exc
        if job.get("key") != self.key or job.get("format") != FORMAT_VERSION:
            raise WorkDirError(f"{path} belongs to another job; delete the work dir")
        return [GopSpec.from_dict(g) for g in job["gops"]]

    # -- segments ------------------------------------------------------------------------
    def segment_path(self, index: int) -> str:
        return os.path.join(self.segments, f"gop_{index:05d}.mp4")

    def _record_path(self, index: int) -> str:
        return os.path.join(self.done, f"gop_{index:05d}.json")

    def record(self, record: GopRecord, data: bytes) -> None:
        """Store a finished GOP: segment first, then its record (both atomic)."""
        atomic_write_bytes(self.segment_path(record.index), data)
        atomic_write_json(self._record_path(record.index), record.to_dict())

    def finished(self) -> dict[int, GopRecord]:
        """Records of GOPs whose segment is present and matches its checksum."""
        found: dict[int, GopRecord] = {}
        for name in sorted(os.listdir(self.done)):
            if not (name.startswith("gop_") and name.endswith(".json")):
                continue
            try:
                with open(os.path.join(self.done, name), encoding="utf-8") as handle:
                    record = GopRecord.from_dict(json.load(handle))
            except (OSError, ValueError, TypeError):
                continue
            segment = self.segment_path(record.index)
            if os.path.exists(segment) and file_sha256(segment) == record.sha256:
                found[record.index] = record
        return found


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
