"""Encoder options for streaming-ladder encodes: x264 (``avc1``), x265 (``hvc1``) and SVT-AV1
(``av01``), each with closed GOPs, fixed threads and CRF or capped-VBR rate control.

Only the options (ffmpeg's names, no dash); the command lines are built in
:mod:`gopflow.media.ffmpeg`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gopflow.errors import UsageError

StreamingCodec = Literal["x264", "x265", "svtav1"]
ENCODERS: dict[str, str] = {"x264": "libx264", "x265": "libx265", "svtav1": "libsvtav1"}
DEFAULT_PRESET: dict[str, str] = {"x264": "medium", "x265": "medium", "svtav1": "8"}
CRF_RANGE: dict[str, tuple[int, int]] = {"x264": (0, 51), "x265": (0, 51), "svtav1": (1, 63)}


@dataclass(frozen=True)
class StreamingEncode:
    """One encoder setting: ``crf`` (capped CRF with ``maxrate_kbps``, buffer
    ``bufsize_kbps``, default twice the cap), or a capped average (``kbps`` with
    ``maxrate_kbps`` and ``bufsize_kbps``; defaults 1.5x and 2x the average; SVT-AV1 caps
    only CRF encodes, so its average is plain VBR)."""

    codec: StreamingCodec = "x264"
    preset: str | None = None
    crf: float | None = None
    kbps: int | None = None
    maxrate_kbps: int | None = None
    bufsize_kbps: int | None = None
    threads: int = 1
    keyint: int = 600

    def __post_init__(self) -> None:
        if self.codec not in ENCODERS:
            raise UsageError(f"unknown codec {self.codec!r}; choose x264, x265 or svtav1")
        if (self.crf is None) == (self.kbps is None):
            raise UsageError("give a CRF or a bitrate, not both or neither")
        if self.crf is not None:
            low, high = CRF_RANGE[self.codec]
            if not low <= self.crf <= high:
                raise UsageError(f"{self.codec} CRF must be {low}-{high}, got {self.crf:g}")
        for name, value in (("bitrate", self.kbps), ("maxrate", self.maxrate_kbps),
                            ("bufsize", self.bufsize_kbps)):
            if value is not None and value <= 0:
                raise UsageError(f"the {name} must be positive, got {value}")
        if self.threads < 1 or self.keyint < 1:
            raise UsageError("threads and keyint must be at least 1")
        if self.codec == "svtav1" and self.preset is not None and not self.preset.isdigit():
            raise UsageError(f"SVT-AV1 presets are numbers 0-13, got {self.preset!r}")

    def options(self) -> dict[str, str]:
        """ffmpeg output options (codec, preset, rate control, GOP structure, threads)."""
        preset = self.preset or DEFAULT_PRESET[self.codec]
        opts: dict[str, str] = {"c:v": ENCODERS[self.codec], "preset": preset}
        if self.codec == "x264":
            # No scene-cut keyframes: every rung must have IDRs at the same frames only.
            opts.update({"threads": str(self.threads), "g": str(self.keyint),
                         "x264-params": "open-gop=0:scenecut=0:sliced-threads=0"})
        elif self.codec == "x265":
            opts.update({"tag:v": "hvc1", "x265-params": ":".join([
                f"keyint={self.keyint}", "open-gop=0", "scenecut=0", f"pools={self.threads}",
                f"frame-threads={min(self.threads, 4)}", "log-level=error"])})
        else:
            opts.update({"g": str(self.keyint), "svtav1-params": ":".join([
                "scd=0", "irefresh-type=2", f"lp={self.threads}"])})
        if self.crf is not None:
            opts["crf"] = f"{self.crf:g}"
            if self.maxrate_kbps is not None:
                opts["maxrate"] = f"{self.maxrate_kbps}k"
                opts["bufsize"] = f"{self.bufsize_kbps or 2 * self.maxrate_kbps}k"
        elif self.codec == "svtav1":
            # SVT-AV1 caps only CRF encodes ("Max Bitrate only supported with CRF mode"):
            # a bitrate is plain VBR; peaks are measured from the files in any case.
            opts["b:v"] = f"{self.kbps}k"
        else:
            assert self.kbps is not None
            maxrate = self.maxrate_kbps or round(self.kbps * 1.5)
            opts.update({"b:v": f"{self.kbps}k", "maxrate": f"{maxrate}k",
                         "bufsize": f"{self.bufsize_kbps or 2 * maxrate}k"})
        return opts
