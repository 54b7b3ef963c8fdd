"""Find the ffmpeg binary and check once that it has what gopflow needs.

Order: ``$GOPFLOW_FFMPEG``, then imageio-ffmpeg's static build (libx264, libx265, libvmaf),
then ``ffmpeg`` on ``PATH``. Capabilities are parsed from ``-encoders``/``-filters`` once per
binary and cached.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from gopflow.errors import ToolMissingError

ENV_VAR = "GOPFLOW_FFMPEG"


@dataclass(frozen=True)
class FfmpegTool:
    """A located ffmpeg binary and what it can do."""

    path: str
    version: str
    encoders: frozenset[str]
    filters: frozenset[str]

    def require(self, encoders: Iterable[str] = (), filters: Iterable[str] = ()) -> None:
        """Raise :class:`ToolMissingError` naming every missing encoder and filter."""
        missing = [f"encoder {e}" for e in encoders if e not in self.encoders]
        missing += [f"filter {f}" for f in filters if f not in self.filters]
        if missing:
            raise ToolMissingError(
                f"ffmpeg at {self.path} lacks {', '.join(missing)}; "
                f"point {ENV_VAR} at a build that has them (imageio-ffmpeg's does)"
            )


def _candidate_path() -> str:
    env = os.environ.get(ENV_VAR)
    if env:
        if not (os.path.isfile(env) and os.access(env, os.X_OK)):
            raise ToolMissingError(f"{ENV_VAR}={env} is not an executable file")
        return env
    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError):
        pass
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    raise ToolMissingError(
        f"no ffmpeg found: set {ENV_VAR}, install imageio-ffmpeg, or put ffmpeg on PATH"
    )


def _names(listing: str) -> frozenset[str]:
    """Second column of ``ffmpeg -encoders``/``-filters`` rows after the ``---`` divider."""
    names: set[str] = set()
    body = listing.split("------", 1)[-1]
    for line in body.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            names.add(parts[1])
    return frozenset(names)


@functools.lru_cache(maxsize=4)
def _inspect(path: str) -> FfmpegTool:
    def run(flag: str) -> str:
        try:
            done = subprocess.run(
                [path, "-hide_banner", flag], capture_output=True, text=True, timeout=60
            )
        except OSError as exc:
            raise ToolMissingError(f"cannot run ffmpeg at {path}: {exc}") from exc
        return done.stdout

    version_line = run("-version").splitlines()
    version = version_line[0] if version_line else "unknown"
    return FfmpegTool(path, version, _names(run("-encoders")), _names(run("-filters")))


def find_ffmpeg() -> FfmpegTool:
    """The ffmpeg gopflow uses, with its encoders and filters."""
    return _inspect(_candidate_path())


def feed_process(
    command: list[str], chunks: Iterable[bytes], log_path: str, cwd: str | None = None
) -> tuple[int, str]:
    """Run ``command`` with ``chunks`` written to its stdin; return (exit code, last log line).

    stderr goes to ``log_path`` (a file, so a chatty process never blocks on a full pipe).
    A process that exits early just stops the feeding (its exit code tells why); any other
    error kills it before re-raising.
    """
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=log, cwd=cwd)
        assert process.stdin is not None
        try:
            for chunk in chunks:
                process.stdin.write(chunk)
            process.stdin.close()
        except BrokenPipeError:
            pass
        except BaseException:
            process.kill()
            process.wait()
            raise
        code = process.wait()
    with open(log_path, "rb") as log:
        lines = log.read().decode("utf-8", "replace").strip().splitlines()
    return code, (lines[-1] if lines else f"exit code {code}")
