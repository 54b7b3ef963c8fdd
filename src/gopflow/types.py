"""Frozen dataclasses that cross module (and process) boundaries.

Data flow: ``probe`` -> :class:`VideoInfo`; ``plan`` -> [:class:`GopSpec`]; a worker turns a
:class:`GopSpec` plus its codec settings into an :class:`EncodedGop`; the driver records a
:class:`GopRecord` per finished GOP and returns a :class:`TranscodeReport`.
All of them are plain values: picklable, JSON-serialisable through ``to_dict``/``from_dict``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

ReadMode = Literal["seek", "scan"]
"""How a worker finds its GOP: ``seek`` by presentation timestamp (containers with an index),
``scan`` by decoding from the start (elementary streams without timestamps)."""


@dataclass(frozen=True)
class AudioStreamInfo:
    """One audio stream of the input."""

    index: int
    codec: str
    sample_rate: int
    channels: int
    start_seconds: float
    language: str | None = None


@dataclass(frozen=True)
class StreamSummary:
    """Any stream of the input, as listed by ``gopflow probe``."""

    index: int
    kind: str
    codec: str


@dataclass(frozen=True)
class VideoInfo:
    """What gopflow needs to know about an input's (first) video stream."""

    path: str
    container: str
    stream_index: int
    codec: str
    width: int
    height: int
    pix_fmt: str
    fps: Fraction
    vfr: bool
    frame_count: int
    duration_seconds: float
    time_base: Fraction
    start_seconds: float
    container_start_seconds: float
    color_range: str
    color_space: str
    color_primaries: str
    color_trc: str
    rotation: int
    read_mode: ReadMode
    audio: tuple[AudioStreamInfo, ...] = ()
    other_video_streams: int = 0
    streams: tuple[StreamSummary, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["fps"] = f"{self.fps.numerator}/{self.fps.denominator}"
        data["fps_float"] = round(float(self.fps), 6)
        data["time_base"] = f"{self.time_base.numerator}/{self.time_base.denominator}"
        return data


@dataclass(frozen=True)
class GopSpec:
    """One closed GOP: a contiguous range of frames in presentation order.

    ``start_pts`` is the first frame's timestamp in the stream's time base (``seek`` mode);
    workers use it to seek, then count ``frame_count`` frames.
    """

    index: int
    start_frame: int
    frame_count: int
    start_pts: int | None
    scene_cut: bool

    @property
    def end_frame(self) -> int:
        """One past the last frame."""
        return self.start_frame + self.frame_count

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GopSpec:
        return cls(
            index=int(data["index"]),
            start_frame=int(data["start_frame"]),
            frame_count=int(data["frame_count"]),
            start_pts=None if data["start_pts"] is None else int(data["start_pts"]),
            scene_cut=bool(data["scene_cut"]),
        )


@dataclass(frozen=True)
class SourceFormat:
    """How raw frames are laid out when handed from the reader to an encoder."""

    width: int
    height: int
    fps: Fraction
    pix_fmt: str
    color_range: str
    color_space: str
    color_primaries: str
    color_trc: str


@dataclass(frozen=True)
class EncodedGop:
    """A worker's result: the GOP's bitstream (an MP4 segment) and how it was made."""

    index: int
    data: bytes
    frames: int
    encode_seconds: float
    node_id: str = ""
    details: dict[str, Any] | None = None


@dataclass(frozen=True)
class GopRecord:
    """What the work dir remembers of one finished GOP (written atomically)."""

    index: int
    start_frame: int
    frames: int
    bytes: int
    sha256: str
    encode_seconds: float
    node_id: str
    resumed: bool = False
    decision: dict[str, Any] | None = None
    details: dict[str, Any] | None = None
    """Codec-specific facts (learned codecs: level, encoder-side PSNR, recon digest)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GopRecord:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


@dataclass(frozen=True)
class TranscodeReport:
    """The job's summary, written by ``--report``."""

    input: str
    output: str
    settings: dict[str, Any]
    frames: int
    bytes: int
    duration_seconds: float
    wall_seconds: float
    gops: tuple[GopRecord, ...] = field(default_factory=tuple)
    output_width: int = 0
    output_height: int = 0
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def bitrate_kbps(self) -> float:
        if self.duration_seconds <= 0:
            return 0.0
        return self.bytes * 8 / 1000 / self.duration_seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "output": self.output,
            "settings": self.settings,
            "output_width": self.output_width,
            "output_height": self.output_height,
            "totals": {
                "frames": self.frames,
                "gops": len(self.gops),
                "resumed_gops": sum(1 for g in self.gops if g.resumed),
                "bytes": self.bytes,
                "video_bytes": sum(g.bytes for g in self.gops),
                "duration_seconds": round(self.duration_seconds, 6),
                "bitrate_kbps": round(self.bitrate_kbps, 3),
                "wall_seconds": round(self.wall_seconds, 3),
                "fps": round(self.frames / self.wall_seconds, 3) if self.wall_seconds else 0.0,
                "encode_seconds": round(sum(g.encode_seconds for g in self.gops), 3),
                "nodes": sorted({g.node_id for g in self.gops if g.node_id}),
                "phase_seconds": self.phases,
            },
            "gops": [g.to_dict() for g in self.gops],
        }
