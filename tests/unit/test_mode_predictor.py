"""The fast mode predictor: features, k-NN votes, and its file."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from gopflow.errors import InputError
from gopflow.qro.mode_predictor import (
    GopFeatures,
    ModePredictor,
    ModeSample,
    gop_features,
)


def test_features_follow_detail_and_motion() -> None:
    flat = [np.full((72, 96), 128, np.uint8) for _ in range(6)]
    assert gop_features(flat) == GopFeatures(0.0, 0.0)
    rng = np.random.default_rng(0)
    still = rng.integers(0, 255, (72, 96), dtype=np.uint8)
    static = gop_features([still] * 6)
    moving = gop_features([np.roll(still, 3 * i, axis=1) for i in range(6)])
    assert static.si > 50 and static.ti == 0.0
    assert moving.ti > 50 and moving.si == pytest.approx(static.si, rel=0.2)


def _predictor() -> ModePredictor:
    samples = [
        ModeSample(10, 2, 90, "1/2"), ModeSample(12, 3, 90, "1/2"), ModeSample(11, 2, 93, "2/3"),
        ModeSample(80, 30, 93, "1"), ModeSample(90, 25, 95, "1"), ModeSample(85, 28, 90, "3/4"),
    ]
    return ModePredictor(samples, "vmaf", k=3)


def test_nearest_neighbours_vote() -> None:
    predictor = _predictor()
    assert predictor.predict(GopFeatures(11, 2.5), 90) == Fraction(1, 2)
    assert predictor.predict(GopFeatures(85, 27), 94) == Fraction(1)


def test_file_round_trip_and_integrity(tmp_path: Path) -> None:
    path = tmp_path / "mode.json"
    digest = _predictor().save(path)
    again = ModePredictor.load(path, sha256=digest)
    assert again.samples == _predictor().samples
    with pytest.raises(InputError, match="SHA-256"):
        ModePredictor.load(path, sha256="0" * 64)
    path.write_text('{"format": "something else"}')
    with pytest.raises(InputError, match="malformed"):
        ModePredictor.load(path)


def test_shipped_predictor_verifies() -> None:
    from gopflow.qro.mode_predictor import DEFAULT_PATH, shipped_sha256

    if not DEFAULT_PATH.exists():
        pytest.skip("no mode predictor shipped in this checkout")
    predictor = ModePredictor.load(sha256=shipped_sha256())
    assert predictor.samples and shipped_sha256() is not None
