"""Fast mode selection: a GOP's content features -> its spatial scale, without probe encodes.

After Deep Video Precoding's mode selection (arXiv 1908.00812), which picks the scale factor
per segment from content, encoder and target: here the content is ITU-T P.910's spatial and
temporal information (SI, TI) of the GOP's luma and the target is the QRO quality target.
The model is a k-nearest-neighbour table of (SI, TI, target) -> the scale that real QRO probe
searches chose on the training clips (``gopflow train mode-predictor``): small, exact to
reproduce, and easy to inspect. QRO then searches CRF in the predicted mode only.

Data flow: raw GOP frames -> Sobel magnitude / frame differences (scipy.ndimage, numpy) ->
GopFeatures -> ModePredictor.predict -> Fraction scale.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from gopflow.errors import InputError, UsageError
from gopflow.fileio import atomic_write_json

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "weights" / "mode_predictor.json"
FORMAT = "gopflow-mode-predictor-1"


@dataclass(frozen=True)
class GopFeatures:
    """P.910 spatial and temporal information of a GOP's luma (max over sampled frames)."""

    si: float
    ti: float


def luma_planes(raw: str, width: int, height: int, frame_bytes: int) -> Iterable[np.ndarray]:
    """The luma plane of every frame of a raw planar file (8-bit)."""
    with open(raw, "rb") as handle:
        while True:
            data = handle.read(frame_bytes)
            if len(data) < frame_bytes:
                return
            yield np.frombuffer(data[: width * height], np.uint8).reshape(height, width)


def gop_features(lumas: Iterable[np.ndarray], stride: int = 2) -> GopFeatures:
    """SI = max std of the Sobel magnitude; TI = max std of consecutive-frame differences."""
    from scipy import ndimage

    si, ti = 0.0, 0.0
    previous: np.ndarray | None = None
    for index, luma in enumerate(lumas):
        frame = luma.astype(np.float32)
        if index % stride == 0:
            magnitude = np.hypot(ndimage.sobel(frame, axis=0), ndimage.sobel(frame, axis=1))
            si = max(si, float(magnitude.std()))
        if previous is not None:
            ti = max(ti, float((frame - previous).std()))
        previous = frame
    return GopFeatures(si, ti)


@dataclass(frozen=True)
class ModeSample:
    """One training GOP: its features, the QRO target, and the scale QRO chose."""

    si: float
    ti: float
    target: float
    scale: str


def _vector(si: float, ti: float, target: float) -> np.ndarray:
    return np.array([math.log1p(si), math.log1p(ti), target / 10.0])


class ModePredictor:
    """k-nearest neighbours over (log SI, log TI, target), majority vote on the scale."""

    def __init__(self, samples: Sequence[ModeSample], metric: str, k: int = 3) -> None:
        if not samples:
            raise UsageError("a mode predictor needs at least one training sample")
        self.samples = tuple(samples)
        self.metric = metric
        self.k = k
        points = np.stack([_vector(s.si, s.ti, s.target) for s in self.samples])
        self._scale = points.std(axis=0) + 1e-6
        self._points = points / self._scale

    def predict(self, features: GopFeatures, target: float) -> Fraction:
        """The scale the training GOPs nearest to this one chose (ties: the larger scale)."""
        query = _vector(features.si, features.ti, target) / self._scale
        distances = np.linalg.norm(self._points - query, axis=1)
        nearest = np.argsort(distances, kind="stable")[: self.k]
        votes = Counter(Fraction(self.samples[i].scale) for i in nearest)
        best = max(votes.values())
        return max(scale for scale, count in votes.items() if count == best)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "metric": self.metric,
            "k": self.k,
            "samples": [asdict(s) for s in self.samples],
        }

    def save(self, path: str | Path) -> str:
        """Write the model atomically; return its SHA-256."""
        atomic_write_json(path, self.to_dict())
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PATH, sha256: str | None = None) -> ModePredictor:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"mode predictor {path} cannot be read: {exc.strerror}") from exc
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise InputError(f"mode predictor {path} does not match its recorded SHA-256")
        try:
            document = json.loads(data)
            if document.get("format") != FORMAT:
                raise ValueError(f"format {document.get('format')!r}")
            samples = [ModeSample(**item) for item in document["samples"]]
            return cls(samples, str(document["metric"]), int(document["k"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"mode predictor {path} is malformed: {exc}") from exc


def shipped_sha256() -> str | None:
    """The SHA-256 recorded for the shipped model (``weights/registry.json``)."""
    registry = DEFAULT_PATH.parent / "registry.json"
    try:
        entries = json.loads(registry.read_text()).get("mode_predictor")
    except (OSError, ValueError):
        return None
    return entries.get("sha256") if isinstance(entries, dict) else None
