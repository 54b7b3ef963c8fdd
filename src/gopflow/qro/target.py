"""QRO's value types, validated once: targets, candidates, probe results, decisions, settings.

A :class:`Candidate` is one way to code a GOP (spatial scale, half frame rate, CRF); a
:class:`ProbeResult` what a probe encode of it measured; a :class:`Decision` the candidate QRO
chose for a GOP; a :class:`QroTarget` what QRO optimises and :class:`QroSettings` how it
searches and checks. Every constructor (and the decisions file reader) goes through the same
validators, so a bad value is refused with one line wherever it comes from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from gopflow.errors import UsageError
from gopflow.precoders.resample import SCALES
from gopflow.quality.names import GOP_METRICS, METRIC_RANGES, canonical_metric

CRF_LIMITS: tuple[float, float] = (0.0, 51.0)
"""Valid CRF values of x264 / x265."""

# ---------------------------------------------------------------------------------------------
# Validation helpers (shared by constructors and the decisions file).


def as_number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise UsageError(f"{what} must be finite, got {value!r}")
    return number + 0.0  # no -0.0


def as_integer(value: Any, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise UsageError(f"{what} must be an integer, got {value!r}")
    if value < minimum:
        raise UsageError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def as_boolean(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{what} must be true or false, got {value!r}")
    return value


def scale_names() -> str:
    return ", ".join(str(s) for s in SCALES)


def parse_scale(value: Any, what: str = "scale") -> Fraction:
    """``"3/4"``, ``Fraction(3, 4)``, ``1`` or ``0.75`` -> the allowed :data:`SCALES` entry."""
    if isinstance(value, bool):
        raise UsageError(f"{what} must be one of {scale_names()}, got {value!r}")
    try:
        if isinstance(value, Fraction):
            fraction = value
        elif isinstance(value, (int, float, str)):
            fraction = Fraction(str(value).strip())
        else:
            raise TypeError
    except (TypeError, ValueError, ZeroDivisionError):
        raise UsageError(
            f'{what} must be one of {scale_names()} (as a string such as "3/4"), got {value!r}'
        ) from None
    for allowed in SCALES:
        if abs(fraction - allowed) < Fraction(1, 1000):
            return allowed
    raise UsageError(f"{what} must be one of {scale_names()}, got {value!r}")


def as_crf(value: Any, what: str = "crf") -> float:
    crf = as_number(value, what)
    low, high = CRF_LIMITS
    if not low <= crf <= high:
        raise UsageError(f"{what} must be within {low:g}..{high:g}, got {crf:g}")
    return crf


def as_fields(data: Any, what: str, required: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise UsageError(f"{what} must be a JSON object, got {type(data).__name__}")
    missing = [name for name in required if name not in data]
    if missing:
        raise UsageError(f"{what} lacks {', '.join(repr(m) for m in missing)}")
    return data


# ---------------------------------------------------------------------------------------------
# Data types.


@dataclass(frozen=True)
class Candidate:
    """One way to code a GOP: spatial scale, half frame rate (restored at the decoder), CRF."""

    scale: Fraction
    half_rate: bool
    crf: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", parse_scale(self.scale))
        object.__setattr__(self, "half_rate", as_boolean(self.half_rate, "half_rate"))
        object.__setattr__(self, "crf", as_crf(self.crf))

    @property
    def mode(self) -> tuple[Fraction, bool]:
        return (self.scale, self.half_rate)

    @property
    def key(self) -> str:
        """A short stable, file-name-safe cache key, e.g. ``"s3_4-r1-c27.5"`` (``r2``: half)."""
        scale = f"{self.scale.numerator}_{self.scale.denominator}" if self.scale != 1 else "1"
        return f"s{scale}-r{2 if self.half_rate else 1}-c{self.crf:g}"

    def to_dict(self) -> dict[str, Any]:
        return {"scale": str(self.scale), "half_rate": self.half_rate, "crf": self.crf}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], what: str = "candidate") -> Candidate:
        data = as_fields(data, what, ("scale", "half_rate", "crf"))
        return cls(
            parse_scale(data["scale"], f"{what}: scale"),
            as_boolean(data["half_rate"], f"{what}: half_rate"),
            as_crf(data["crf"], f"{what}: crf"),
        )


@dataclass(frozen=True)
class ProbeResult:
    """What a real encode of a candidate gave: bits written, pooled (mean) and min quality."""

    candidate: Candidate
    bits: int
    quality: float
    min_quality: float

    def __post_init__(self) -> None:
        if not isinstance(self.candidate, Candidate):
            raise UsageError(f"candidate must be a Candidate, got {self.candidate!r}")
        object.__setattr__(self, "bits", as_integer(self.bits, "bits"))
        object.__setattr__(self, "quality", as_number(self.quality, "quality"))
        object.__setattr__(self, "min_quality", as_number(self.min_quality, "min_quality"))

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.candidate.to_dict(),
            "bits": self.bits,
            "quality": self.quality,
            "min_quality": self.min_quality,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], what: str = "probe") -> ProbeResult:
        data = as_fields(data, what, ("scale", "half_rate", "crf", "bits", "quality"))
        quality = as_number(data["quality"], f"{what}: quality")
        return cls(
            Candidate.from_dict(data, what),
            as_integer(data["bits"], f"{what}: bits"),
            quality,
            as_number(data.get("min_quality", quality), f"{what}: min_quality"),
        )


@dataclass(frozen=True)
class QroTarget:
    """What QRO optimises: a quality ``target`` (cheapest candidate meeting it) or a
    ``max_bitrate_kbps`` budget (best quality within it); exactly one of the two."""

    metric: str = "vmaf"
    target: float | None = None
    max_bitrate_kbps: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str):
            raise UsageError(f"QRO metric must be a name, got {self.metric!r}")
        metric = canonical_metric(self.metric)
        if metric not in GOP_METRICS:
            raise UsageError(
                f"QRO cannot target metric {self.metric!r}; choose from {', '.join(GOP_METRICS)}"
            )
        object.__setattr__(self, "metric", metric)
        if (self.target is None) == (self.max_bitrate_kbps is None):
            raise UsageError(
                "QRO needs exactly one of a quality target (--target-vmaf / --target-psnr) "
                "or a bitrate budget (--max-bitrate)"
            )
        if self.target is not None:
            target = as_number(self.target, f"target {metric}")
            info = METRIC_RANGES[metric]
            if not info.low < target <= info.high:
                raise UsageError(
                    f"target {metric} must be within {info.low:g}..{info.high:g} "
                    f"(above {info.low:g}), got {target:g}"
                )
            object.__setattr__(self, "target", target)
        else:
            kbps = as_number(self.max_bitrate_kbps, "max bitrate (kbit/s)")
            if kbps <= 0:
                raise UsageError(f"max bitrate must be positive, got {kbps:g} kbit/s")
            object.__setattr__(self, "max_bitrate_kbps", kbps)

    @property
    def mode(self) -> Literal["quality", "bitrate"]:
        return "quality" if self.target is not None else "bitrate"

    def budget_bits(self, frames: int, fps: float) -> int:
        """The GOP's bit budget: ``kbps * 1000 * frames / fps``."""
        if self.max_bitrate_kbps is None:
            raise UsageError("this QRO target has no bitrate budget")
        return int(self.max_bitrate_kbps * 1000.0 * frames / fps)


@dataclass(frozen=True)
class Decision:
    """The candidate QRO chose for one GOP, the probes it took, and what it expects."""

    gop_index: int
    scale: Fraction
    half_rate: bool
    crf: float
    probes: tuple[ProbeResult, ...]
    expected_bits: int
    expected_quality: float
    meets_target: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "gop_index", as_integer(self.gop_index, "gop index"))
        object.__setattr__(self, "scale", parse_scale(self.scale))
        object.__setattr__(self, "half_rate", as_boolean(self.half_rate, "half_rate"))
        object.__setattr__(self, "crf", as_crf(self.crf))
        object.__setattr__(self, "probes", tuple(self.probes))
        object.__setattr__(self, "expected_bits", as_integer(self.expected_bits, "expected_bits"))
        object.__setattr__(
            self, "expected_quality", as_number(self.expected_quality, "expected_quality")
        )
        object.__setattr__(self, "meets_target", as_boolean(self.meets_target, "meets_target"))

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.scale, self.half_rate, self.crf)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.gop_index,
            "scale": str(self.scale),
            "half_rate": self.half_rate,
            "crf": self.crf,
            "expected_bits": self.expected_bits,
            "expected_quality": self.expected_quality,
            "meets_target": self.meets_target,
            "probes": [p.to_dict() for p in self.probes],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], what: str = "decision") -> Decision:
        """Validate one entry; only ``index``, ``scale``, ``half_rate``, ``crf`` are required
        (a hand-written entry: ``expected_*`` default to 0, ``meets_target`` to false)."""
        data = as_fields(data, what, ("index", "scale", "half_rate", "crf"))
        index = as_integer(data["index"], f"{what}: index")
        what = f"{what} (GOP {index})"
        probes = data.get("probes", [])
        if not isinstance(probes, list):
            raise UsageError(f"{what}: probes must be a list")
        return cls(
            index,
            parse_scale(data["scale"], f"{what}: scale"),
            as_boolean(data["half_rate"], f"{what}: half_rate"),
            as_crf(data["crf"], f"{what}: crf"),
            tuple(ProbeResult.from_dict(p, f"{what}: probes[{i}]") for i, p in enumerate(probes)),
            as_integer(data.get("expected_bits", 0), f"{what}: expected_bits"),
            as_number(data.get("expected_quality", 0.0), f"{what}: expected_quality"),
            as_boolean(data.get("meets_target", False), f"{what}: meets_target"),
        )


@dataclass(frozen=True)
class QroSettings:
    """How QRO searches and checks (identical for every GOP; part of the work-dir key)."""

    target: QroTarget
    probe_preset: str = "veryfast"
    scales: tuple[Fraction, ...] = SCALES
    half_rate: bool = True
    tolerance: float = 0.5
    max_reencodes: int = 3
    crf_range: tuple[float, float] = (10.0, 51.0)
    start_crf: float = 23.0
    max_probes_per_mode: int = 4
    refinements: int = 2
    precoder: str = "none"
    mode_select: str = "probe"

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.target.metric,
            "target": self.target.target,
            "max_bitrate_kbps": self.target.max_bitrate_kbps,
            "probe_preset": self.probe_preset,
            "scales": [f"{s.numerator}/{s.denominator}" for s in self.scales],
            "half_rate": self.half_rate,
            "tolerance": self.tolerance,
            "max_reencodes": self.max_reencodes,
            "crf_range": list(self.crf_range),
            "start_crf": self.start_crf,
            "max_probes_per_mode": self.max_probes_per_mode,
            "refinements": self.refinements,
            "precoder": self.precoder,
            "mode_select": self.mode_select,
        }
