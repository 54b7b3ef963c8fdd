"""What a packaged ladder holds: its tracks and their segments (shared by the packager and
the manifest writers)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any


@dataclass(frozen=True)
class Segment:
    """One media segment: presentation start and duration in track time units, its bytes
    and (video) frames."""

    uri: str
    start: int
    duration: int
    size: int
    samples: int


@dataclass(frozen=True)
class Track:
    """One packaged rendition (a video rung or the audio), URIs relative to the output."""

    name: str
    kind: str
    codecs: str
    timescale: int
    init_uri: str
    playlist_uri: str
    segments: tuple[Segment, ...]
    width: int = 0
    height: int = 0
    sample_rate: int = 0
    channels: int = 0

    @property
    def start(self) -> int:
        return self.segments[0].start

    @property
    def duration_seconds(self) -> float:
        return sum(s.duration for s in self.segments) / self.timescale

    def segment_kbps(self) -> tuple[float, ...]:
        """Each segment's bitrate: its file's bytes over its duration."""
        return tuple(s.size * 8 * self.timescale / s.duration / 1000 for s in self.segments)

    @property
    def peak_kbps(self) -> float:
        return max(self.segment_kbps())

    @property
    def average_kbps(self) -> float:
        return sum(s.size for s in self.segments) * 8 / self.duration_seconds / 1000

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(peak_kbps=round(self.peak_kbps, 3), average_kbps=round(self.average_kbps, 3),
                    duration_seconds=round(self.duration_seconds, 6))
        return data


@dataclass(frozen=True)
class PackagedLadder:
    """What :func:`package_ladder` wrote (paths relative to ``output_dir``)."""

    output_dir: str
    master: str
    mpd: str
    fps: Fraction
    segment_frames: tuple[int, ...]
    video: tuple[Track, ...]
    audio: Track | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "output_dir": self.output_dir, "master": self.master, "mpd": self.mpd,
            "fps": f"{self.fps.numerator}/{self.fps.denominator}",
            "segment_frames": list(self.segment_frames),
            "video": [t.to_dict() for t in self.video],
            "audio": self.audio.to_dict() if self.audio else None,
        }
