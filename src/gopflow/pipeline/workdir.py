"""The resumable work directory.

Layout (one directory per input x settings, named by a hash of both)::

    <root>/<input stem>-<key>/
        job.json            input identity, settings, plan (written once, atomically)
        segments/gop_00007.mp4
        done/gop_00007.json  GopRecord, written atomically *after* its segment

A GOP counts as finished only if its record exists and the segment's SHA-256 matches it,
so a crash at any point leaves either a finished GOP or nothing. Unlike Av1an's
``done.json`` the key includes every encoding parameter, and every write is
temp-file-then-rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from typing import Any

from gopflow.errors import OutputError, WorkDirError
from gopflow.fileio import atomic_write_bytes, atomic_write_json
from gopflow.types import GopRecord, GopSpec

FORMAT_VERSION = 1


def input_identity(path: str) -> dict[str, Any]:
    """What identifies an input for resuming: absolute path, size and modification time."""
    stat = os.stat(path)
    return {"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def job_key(identity: dict[str, Any], settings: dict[str, Any]) -> str:
    blob = json.dumps(
        {"format": FORMAT_VERSION, "input": identity, "settings": settings}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class WorkDir:
    """One job's work directory."""

    def __init__(self, root: str, input_path: str, settings: dict[str, Any]) -> None:
        self.identity = input_identity(input_path)
        self.settings = settings
        self.key = job_key(self.identity, settings)
        stem = os.path.splitext(os.path.basename(input_path))[0][:40] or "input"
        self.path = os.path.join(os.path.abspath(root), f"{stem}-{self.key}")
        self.segments = os.path.join(self.path, "segments")
        self.done = os.path.join(self.path, "done")

    # -- lifecycle ---------------------------------------------------------------------
    def prepare(self, resume: bool) -> bool:
        """Create the directory; return True if an earlier run's state is reused."""
        existing = os.path.exists(os.path.join(self.path, "job.json"))
        if existing and not resume:
            shutil.rmtree(self.path, ignore_errors=True)
        try:
            os.makedirs(self.segments, exist_ok=True)
            os.makedirs(self.done, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create work directory {self.path}: {exc.strerror}") from exc
        return existing and resume

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        parent = os.path.dirname(self.path)
        with contextlib.suppress(OSError):
            os.rmdir(parent)  # only if empty

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
