"""QRO decision logic against synthetic probe models whose right answer is found by brute force.

The model: VMAF = 100 - alpha*exp(beta*crf) (concave in CRF, like x264 curves) - a spatial
penalty ``detail * (1/scale^2 - 1)`` - a temporal penalty ``motion`` at half rate (+ optional
deterministic noise); bits = B * scale^2 * (0.6 at half rate) * exp(-k*crf). Brute force
evaluates every CRF on the 0.5 grid of every mode.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import dataclass, replace
from fractions import Fraction

import pytest

from gopflow.errors import GopflowError, UsageError
from gopflow.precoders.resample import SCALES
from gopflow.qro.decisions import load_decisions, save_decisions
from gopflow.qro.search import decide, search_budget, search_crf, stricter
from gopflow.qro.target import Candidate, Decision, ProbeResult, QroTarget

STEP = 0.5
K = math.log(2.0) / 6.0
MODES = [(s, h) for s in SCALES for h in (False, True)]


@dataclass(frozen=True)
class Gop:
    detail: float = 3.0  # spatial penalty factor: high for fine texture
    motion: float = 2.0  # VMAF lost at half rate: high for fast motion
    alpha: float = 0.61
    beta: float = 0.0916
    linear: float = 0.0  # VMAF lost per CRF unit on top of the exponential term
    base_bits: float = 8e6
    noise: float = 0.0  # amplitude of deterministic measurement noise (VMAF points)

    def quality(self, c: Candidate) -> float:
        q = 100.0 - self.alpha * math.exp(self.beta * c.crf) - self.linear * c.crf
        q -= self.detail * (1.0 / float(c.scale) ** 2 - 1.0)
        q -= self.motion if c.half_rate else 0.0
        if self.noise:
            q += self.noise * (zlib.crc32(c.key.encode()) / 2**31 - 1.0)
        return q

    def bits(self, c: Candidate) -> int:
        rate = 0.6 if c.half_rate else 1.0
        return int(self.base_bits * float(c.scale) ** 2 * rate * math.exp(-K * c.crf))

    def probe(self, c: Candidate) -> ProbeResult:
        q = self.quality(c)
        return ProbeResult(c, self.bits(c), q, q - 3.0)


class Counter:
    """A probe that counts calls and fails the test on a repeated candidate."""

    def __init__(self, gop: Gop) -> None:
        self.gop = gop
        self.seen: list[str] = []

    def __call__(self, c: Candidate) -> ProbeResult:
        assert c.key not in self.seen, f"{c.key} probed twice"
        self.seen.append(c.key)
        return self.gop.probe(c)


def grid(low: float = 10.0, high: float = 51.0) -> list[float]:
    return [low + STEP * i for i in range(round((high - low) / STEP) + 1)]


def brute_crf(gop: Gop, mode: tuple[Fraction, bool], target: float) -> float | None:
    ok = [c for c in grid() if gop.quality(Candidate(*mode, c)) >= target]
    return max(ok) if ok else None


def brute_target(gop: Gop, target: float) -> tuple[int, Candidate] | None:
    best = None
    for mode in MODES:
        crf = brute_crf(gop, mode, target)
        if crf is not None:
            c = Candidate(*mode, crf)
            best = min(best or (gop.bits(c), c), (gop.bits(c), c), key=lambda t: t[0])
    return best


def brute_budget(gop: Gop, max_bits: int) -> tuple[float, Candidate] | None:
    best = None
    for mode in MODES:
        fits = [c for c in grid() if gop.bits(Candidate(*mode, c)) <= max_bits]
        if fits:
            c = Candidate(*mode, min(fits))
            if best is None or gop.quality(c) > best[0]:
                best = (gop.quality(c), c)
    return best


# Content profiles: each makes a different mode win.
PROFILES = {
    "flat_static": Gop(detail=1.0, motion=0.3),  # 1/2 scale, half rate
    "smooth_motion": Gop(detail=1.5, motion=6.0),  # 2/3, full rate
    "mid_texture": Gop(detail=2.5, motion=1.0),  # 3/4, half rate
    "fine_texture_motion": Gop(detail=3.0, motion=6.0),  # 3/4, full rate
    "detail_static": Gop(detail=4.0, motion=0.3),  # scale 1, half rate
    "grain_sport": Gop(detail=9.0, motion=8.0, alpha=0.4, beta=0.1),  # scale 1, full rate
    "linear_psnr_like": Gop(detail=2.5, motion=0.5, alpha=0.0, linear=0.35, base_bits=3e6),
}


def _linear(gop: Gop, slope: float):
    # A linear quality-vs-CRF curve (alpha = 0 in the model), for variety.
    def probe(crf: float) -> ProbeResult:
        c = Candidate(Fraction(1), False, crf)
        q = 99.0 - slope * (crf - 10.0)
        return ProbeResult(c, gop.bits(c), q, q)

    return probe


# ---------------------------------------------------------------------------------------------
# search_crf / search_budget


@pytest.mark.parametrize("target", [75.0, 85.0, 90.0, 93.0, 95.0, 97.0])
@pytest.mark.parametrize("start", [18.0, 23.0, 30.0])
@pytest.mark.parametrize("curve", ["x264_like", "steep", "flat", "linear"])
def test_search_crf_finds_brute_force_crf(target: float, start: float, curve: str) -> None:
    gop = {
        "x264_like": Gop(detail=0.0),
        "steep": Gop(detail=0.0, alpha=1.2, beta=0.09),
        "flat": Gop(detail=0.0, alpha=0.2, beta=0.1),
        "linear": Gop(detail=0.0),
    }[curve]
    mode = (Fraction(1), False)
    if curve == "linear":
        probe = _linear(gop, 1.3)

        def quality(crf: float) -> float:
            return probe(crf).quality
    else:

        def probe(crf: float) -> ProbeResult:
            return gop.probe(Candidate(*mode, crf))

        def quality(crf: float) -> float:
            return gop.quality(Candidate(*mode, crf))

    expected = max((c for c in grid() if quality(c) >= target), default=None)
    found, probes = search_crf(probe, target, 10.0, 51.0, start, max_probes=6, step=STEP)
    crfs = [p.candidate.crf for p in probes]
    assert len(probes) <= 6
    assert len(set(crfs)) == len(crfs)
    assert all(c / STEP == int(c / STEP) and 10 <= c <= 51 for c in crfs)
    assert crfs[0] == start
    assert expected is not None and found is not None
    assert abs(found - expected) <= STEP
    assert quality(found) >= target  # the answer was measured to meet the target
    assert found in crfs


def test_search_crf_probe_count_is_low_on_average() -> None:
    gop = Gop(detail=0.0)
    counts = []
    for target in [80.0 + 0.5 * i for i in range(36)]:
        found, probes = search_crf(
            lambda crf: gop.probe(Candidate(1, False, crf)), target, 10.0, 51.0, 23.0
        )
        expected = max(c for c in grid() if gop.quality(Candidate(1, False, c)) >= target)
        assert found == expected  # converged exactly within 6 probes
        counts.append(len(probes))
    assert sum(counts) / len(counts) <= 4.5, counts


def test_search_crf_none_when_crf_min_misses() -> None:
    gop = Gop(detail=0.0)
    found, probes = search_crf(
        lambda crf: gop.probe(Candidate(1, False, crf)), 99.5, 10.0, 51.0, 23.0
    )
    assert found is None
    assert probes[-1].candidate.crf == 10.0
    assert len(probes) <= 6


def test_search_crf_returns_crf_max_when_everything_passes() -> None:
    gop = Gop(detail=0.0)
    found, probes = search_crf(
        lambda crf: gop.probe(Candidate(1, False, crf)), 20.0, 10.0, 51.0, 23.0
    )
    assert found == 51.0
    assert len(probes) <= 4  # jumps of at most 12 CRF: 23, 35, 47, 51


def test_search_crf_respects_a_range_off_the_grid() -> None:
    gop = Gop(detail=0.0)
    found, probes = search_crf(
        lambda crf: gop.probe(Candidate(1, False, crf)), 50.0, 12.25, 40.75, 23.0
    )
    crfs = [p.candidate.crf for p in probes]
    assert found == 40.75
    assert all(12.25 <= c <= 40.75 for c in crfs)


@pytest.mark.parametrize("target", [88.0, 91.0, 93.0, 95.0])
@pytest.mark.parametrize("seed_shift", [0.0, 0.25, 0.5])
def test_search_crf_is_robust_to_noise(target: float, seed_shift: float) -> None:
    # Noise of +-0.3 VMAF (measurement jitter, non-monotone at fine steps).
    noisy = Gop(detail=0.0, noise=0.3, alpha=0.61 + seed_shift * 0.1)
    clean = replace(noisy, noise=0.0)
    found, probes = search_crf(
        lambda crf: noisy.probe(Candidate(1, False, crf)), target, 10.0, 51.0, 23.0
    )
    crfs = [p.candidate.crf for p in probes]
    assert len(set(crfs)) == len(crfs) and len(probes) <= 6
    expected = brute_crf(clean, (Fraction(1), False), target)
    assert found is not None and expected is not None
    assert noisy.quality(Candidate(1, False, found)) >= target
    assert abs(found - expected) <= 1.0


def test_search_crf_survives_a_non_monotone_curve() -> None:
    # A dip at CRF 20-24 (e.g. a probe with a bad scene-cut decision): the search ends, never
    # repeats a CRF, and returns a CRF that was measured to pass.
    def probe(crf: float) -> ProbeResult:
        q = 100.0 - 0.8 * (crf - 10.0) - (6.0 if 20.0 <= crf <= 24.0 else 0.0)
        return ProbeResult(Candidate(1, False, crf), 1000, q, q)

    for start in (15.0, 22.0, 23.0, 30.0):
        found, probes = search_crf(probe, 90.0, 10.0, 51.0, start, max_probes=6)
        crfs = [p.candidate.crf for p in probes]
        assert len(set(crfs)) == len(crfs) and len(probes) <= 6
        assert found is not None and probe(found).quality >= 90.0


@pytest.mark.parametrize("kbps", [150.0, 400.0, 1200.0, 3000.0])
@pytest.mark.parametrize("start", [15.0, 23.0, 35.0])
def test_search_budget_finds_lowest_fitting_crf(kbps: float, start: float) -> None:
    gop = Gop()
    max_bits = int(kbps * 1000 * 48 / 24)
    c = Candidate(Fraction(3, 4), False, 23)
    expected = min(x for x in grid() if gop.bits(replace(c, crf=x)) <= max_bits)
    found, probes = search_budget(
        lambda crf: gop.probe(replace(c, crf=crf)), max_bits, 10.0, 51.0, start
    )
    crfs = [p.candidate.crf for p in probes]
    assert len(set(crfs)) == len(crfs) and len(probes) <= 6
    assert found is not None and abs(found - expected) <= STEP
    assert gop.bits(replace(c, crf=found)) <= max_bits


def test_search_budget_none_and_crf_min() -> None:
    gop = Gop()
    c = Candidate(1, False, 23)
    found, probes = search_budget(lambda crf: gop.probe(replace(c, crf=crf)), 10, 10, 51, 23)
    assert found is None and probes[-1].candidate.crf == 51.0
    found, _ = search_budget(lambda crf: gop.probe(replace(c, crf=crf)), 10**12, 10, 51, 23)
    assert found == 10.0


def test_search_arguments_are_checked() -> None:
    with pytest.raises(UsageError, match="empty"):
        search_crf(lambda c: None, 90, 30, 20, 23)  # type: ignore[arg-type, return-value]
    with pytest.raises(UsageError, match="step"):
        search_crf(lambda c: None, 90, 10, 51, 23, step=0)  # type: ignore[arg-type, return-value]
    with pytest.raises(UsageError, match="max_probes"):
        search_crf(lambda c: None, 90, 10, 51, 23, max_probes=0)  # type: ignore[arg-type, return-value]


# ---------------------------------------------------------------------------------------------
# decide


@pytest.mark.parametrize("name", sorted(PROFILES))
@pytest.mark.parametrize("target", [90.0, 93.0])
def test_decide_picks_the_brute_force_mode(name: str, target: float) -> None:
    gop = PROFILES[name]
    probe = Counter(gop)
    decision = decide(7, probe, QroTarget("vmaf", target=target), frames=48, fps=24.0)
    bits, best = brute_target(gop, target)  # type: ignore[misc]
    assert decision.meets_target
    assert (decision.scale, decision.half_rate) == best.mode
    assert abs(decision.crf - best.crf) <= STEP
    assert decision.expected_quality >= target
    assert decision.expected_bits <= bits * math.exp(K * STEP) + 1
    assert decision.gop_index == 7
    assert [p.candidate.key for p in decision.probes] == probe.seen


def test_profiles_cover_every_kind_of_winner() -> None:
    winners = {brute_target(gop, 93.0)[1].mode for gop in PROFILES.values()}  # type: ignore[index]
    assert {s for s, _ in winners} == set(SCALES)
    assert {h for _, h in winners} == {False, True}


def test_pruning_reduces_probes_and_keeps_the_answer() -> None:
    pruned_total = exhaustive_total = 0
    for gop in PROFILES.values():
        for target in (88.0, 93.0, 96.0):
            pruned = decide(0, Counter(gop), QroTarget(target=target), 48, 24.0)
            full = decide(0, Counter(gop), QroTarget(target=target), 48, 24.0, prune=False)
            assert pruned.candidate == full.candidate
            assert len(pruned.probes) <= len(full.probes)
            pruned_total += len(pruned.probes)
            exhaustive_total += len(full.probes)
    grid_total = len(PROFILES) * 3 * len(MODES) * len(grid())
    assert pruned_total < 0.8 * exhaustive_total, (pruned_total, exhaustive_total)
    assert exhaustive_total < grid_total / 10
    # A professional tool's budget: about 3 probes per mode on average, at most 5.
    assert pruned_total / (len(PROFILES) * 3) <= 3 * len(MODES)


def test_decide_budget_mode_picks_the_best_quality_within_budget() -> None:
    for name, gop in sorted(PROFILES.items()):
        for kbps in (300.0, 1000.0, 3000.0):
            target = QroTarget("vmaf", max_bitrate_kbps=kbps)
            max_bits = target.budget_bits(48, 24.0)
            assert max_bits == int(kbps * 2000)
            probe = Counter(gop)
            pruned = decide(1, probe, target, 48, 24.0)
            full = decide(1, Counter(gop), target, 48, 24.0, prune=False)
            quality, best = brute_budget(gop, max_bits)  # type: ignore[misc]
            assert pruned.meets_target, name
            assert pruned.expected_bits <= max_bits
            assert pruned.candidate.mode == best.mode, (name, kbps)
            assert pruned.expected_quality >= quality - 0.5
            assert pruned.candidate == full.candidate
            assert len(pruned.probes) <= len(full.probes)


def test_budget_pruning_skips_modes_that_cannot_beat_a_fit_at_crf_min() -> None:
    # A generous budget: scale 1 at full rate fits at crf_min, the best quality any mode can
    # reach (rule 1), so no coarser mode is probed.
    gop = PROFILES["fine_texture_motion"]
    target = QroTarget(max_bitrate_kbps=5000.0)
    decision = decide(0, Counter(gop), target, 48, 24.0)
    assert decision.candidate == Candidate(1, False, 10.0) and decision.meets_target
    assert {p.candidate.mode for p in decision.probes} == {(Fraction(1), False)}
    assert len(decision.probes) <= 3
    assert len(decide(0, Counter(gop), target, 48, 24.0, prune=False).probes) >= len(MODES)


def test_no_mode_meets_the_target() -> None:
    gop = PROFILES["grain_sport"]
    probe = Counter(gop)
    decision = decide(3, probe, QroTarget("vmaf", target=99.9), 48, 24.0)
    assert not decision.meets_target
    best = max(decision.probes, key=lambda p: p.quality)
    assert decision.candidate == best.candidate
    assert decision.candidate == Candidate(1, False, 10.0)
    # Rule 1: scale 1 at full rate missed even at crf_min, so no coarser mode is probed.
    assert {p.candidate.mode for p in decision.probes} == {(Fraction(1), False)}
    full = decide(3, Counter(gop), QroTarget("vmaf", target=99.9), 48, 24.0, prune=False)
    assert full.candidate == decision.candidate and not full.meets_target
    assert len(full.probes) > 3 * len(decision.probes)


def test_budget_too_small_returns_the_cheapest_probe() -> None:
    decision = decide(0, Counter(Gop()), QroTarget(max_bitrate_kbps=0.01), 48, 24.0)
    assert not decision.meets_target
    assert decision.candidate == Candidate(Fraction(1, 2), True, 51.0)
    assert decision.expected_bits == min(p.bits for p in decision.probes)


def test_decide_is_deterministic_and_honours_restrictions() -> None:
    gop = PROFILES["mid_texture"]
    target = QroTarget(target=93.0)
    first = decide(2, gop.probe, target, 48, 24.0)
    second = decide(2, gop.probe, target, 48, 24.0)
    assert first == second and first.to_dict() == second.to_dict()
    allowed = [(Fraction(1), False), (Fraction(3, 4), False)]
    only_full = decide(
        2, Counter(gop), target, 48, 24.0, scales=(Fraction(1), "3/4"), rates=(False,)
    )
    assert {p.candidate.mode for p in only_full.probes} <= set(allowed)
    cost = {m: gop.bits(Candidate(*m, brute_crf(gop, m, 93.0))) for m in allowed}  # type: ignore[arg-type]
    assert only_full.candidate.mode == min(allowed, key=cost.__getitem__)
    assert only_full.candidate.mode != first.candidate.mode


def test_decide_with_noisy_probes_still_meets_the_target() -> None:
    for name, gop in sorted(PROFILES.items()):
        noisy = replace(gop, noise=0.3)
        decision = decide(0, Counter(noisy), QroTarget(target=93.0), 48, 24.0)
        assert decision.meets_target, name
        assert noisy.quality(decision.candidate) >= 93.0
        bits, _ = brute_target(replace(gop, noise=0.0), 93.0)  # type: ignore[misc]
        assert decision.expected_bits <= bits * 1.15, name


def test_decide_rejects_bad_arguments_and_bad_probes() -> None:
    gop = Gop()
    with pytest.raises(UsageError, match="frames"):
        decide(0, gop.probe, QroTarget(target=93.0), 0, 24.0)
    with pytest.raises(UsageError, match="fps"):
        decide(0, gop.probe, QroTarget(target=93.0), 48, 0.0)
    with pytest.raises(UsageError, match="scale"):
        decide(0, gop.probe, QroTarget(target=93.0), 48, 24.0, scales=(Fraction(1, 3),))
    with pytest.raises(UsageError, match="returned"):
        decide(0, lambda c: gop.probe(replace(c, crf=30.0)), QroTarget(target=93.0), 48, 24.0)


# ---------------------------------------------------------------------------------------------
# Data types, stricter()


def test_candidate_key_and_validation() -> None:
    assert Candidate(Fraction(3, 4), False, 27.5).key == "s3_4-r1-c27.5"
    assert Candidate(1, True, 23.0).key == "s1-r2-c23"
    assert Candidate("1/2", False, 10).key == "s1_2-r1-c10"
    assert Candidate(0.75, False, 20).scale == Fraction(3, 4)
    keys = {Candidate(s, h, c).key for s in SCALES for h in (False, True) for c in grid()}
    assert len(keys) == len(SCALES) * 2 * len(grid())
    assert all(os.sep not in k and " " not in k for k in keys)
    with pytest.raises(UsageError, match="scale"):
        Candidate(Fraction(1, 3), False, 23)
    with pytest.raises(UsageError, match="crf"):
        Candidate(1, False, 60)
    with pytest.raises(UsageError, match="half_rate"):
        Candidate(1, "no", 23)  # type: ignore[arg-type]


def test_probe_and_decision_dict_round_trip() -> None:
    decision = decide(4, Gop().probe, QroTarget(target=93.0), 48, 24.0)
    data = json.loads(json.dumps(decision.to_dict()))
    assert data["scale"] in {"1", "3/4", "2/3", "1/2"}
    assert Decision.from_dict(data) == decision
    probe = decision.probes[0]
    assert ProbeResult.from_dict(probe.to_dict()) == probe


def test_qro_target_validation() -> None:
    assert QroTarget(target=93).mode == "quality"
    assert QroTarget("PSNR", target=40.0).metric == "psnr_y"
    assert QroTarget(max_bitrate_kbps=2500).mode == "bitrate"
    for kwargs, message in [
        ({}, "exactly one"),
        ({"target": 93.0, "max_bitrate_kbps": 1000.0}, "exactly one"),
        ({"metric": "butteraugli", "target": 3.0}, "cannot target"),
        ({"target": 120.0}, "within"),
        ({"metric": "ssim", "target": 0.9}, "cannot target metric"),
        ({"max_bitrate_kbps": -5.0}, "positive"),
        ({"target": float("nan")}, "finite"),
    ]:
        with pytest.raises(UsageError, match=message):
            QroTarget(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(GopflowError):
        QroTarget(target=93.0).budget_bits(48, 24.0)


def test_qro_targets_only_metrics_a_worker_measures() -> None:
    from gopflow.quality.names import ALL_METRICS, GOP_METRICS

    assert set(GOP_METRICS) <= set(ALL_METRICS)
    assert QroTarget("PSNR", target=40.0).metric == "psnr_y"
    with pytest.raises(UsageError, match="cannot target metric 'ssim_y'"):
        QroTarget("ssim_y", target=0.9)


def _decision(crf: float, scale: Fraction = Fraction(3, 4), half: bool = False) -> Decision:
    c = Candidate(scale, half, crf)
    return Decision(0, scale, half, crf, (ProbeResult(c, 1000, 92.0, 90.0),), 1000, 92.0, True)


def test_stricter() -> None:
    assert stricter(_decision(27.5)) == Candidate(Fraction(3, 4), False, 25.5)
    assert stricter(_decision(11.0)) == Candidate(Fraction(3, 4), False, 10.0)
    assert stricter(_decision(27.5), step=1.0) == Candidate(Fraction(3, 4), False, 26.5)
    # At crf_min: back to full rate first, then up a scale, then nothing is left.
    assert stricter(_decision(10.0, half=True)) == Candidate(Fraction(3, 4), False, 10.0)
    assert stricter(_decision(10.0)) == Candidate(Fraction(1), False, 10.0)
    assert stricter(_decision(10.0, Fraction(1, 2))) == Candidate(Fraction(2, 3), False, 10.0)
    assert stricter(_decision(10.0, Fraction(1))) is None
    assert stricter(Candidate(Fraction(2, 3), True, 14.0), crf_min=14.0) == Candidate(
        Fraction(2, 3), False, 14.0
    )
    # Chained retries end after a bounded number of steps.
    current: Candidate | None = Candidate(Fraction(1, 2), True, 51.0)
    steps = 0
    while current is not None:
        current = stricter(current)
        steps += 1
    assert steps <= 21 + 1 + 3 + 1


# ---------------------------------------------------------------------------------------------
# The decisions file


def test_decisions_file_round_trip(tmp_path) -> None:
    decisions = [
        decide(i, gop.probe, QroTarget(target=93.0), 48, 24.0)
        for i, gop in enumerate(PROFILES.values())
    ]
    path = tmp_path / "decisions.json"
    path.write_text("old")
    save_decisions(path, reversed(decisions), metric="vmaf")
    assert os.listdir(tmp_path) == ["decisions.json"]  # no temp file left behind
    document = json.loads(path.read_text())
    assert document["version"] == 1 and document["metric"] == "vmaf"
    assert [g["index"] for g in document["gops"]] == list(range(len(decisions)))
    assert {g["scale"] for g in document["gops"]} <= {"1", "3/4", "2/3", "1/2"}
    loaded = load_decisions(path)
    assert loaded == {d.gop_index: d for d in decisions}
    save_decisions(str(path), loaded)
    assert load_decisions(str(path)) == loaded


def test_a_hand_edited_decisions_file_is_accepted(tmp_path) -> None:
    path = tmp_path / "edited.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "metric": "vmaf",
                "gops": [
                    {"index": 0, "scale": "2/3", "half_rate": True, "crf": 30},
                    {"index": 5, "scale": 0.75, "half_rate": False, "crf": 21.5},
                    {"index": 2, "scale": "1", "half_rate": False, "crf": 18, "probes": []},
                ],
            }
        )
    )
    loaded = load_decisions(path)
    assert sorted(loaded) == [0, 2, 5]
    assert loaded[0].candidate == Candidate(Fraction(2, 3), True, 30.0)
    assert loaded[5].scale == Fraction(3, 4) and loaded[5].crf == 21.5
    assert loaded[2].probes == () and not loaded[2].meets_target


GOOD = {"index": 0, "scale": "3/4", "half_rate": False, "crf": 27.5}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "JSON object"),
        (json.dumps({"version": 2, "gops": []}), "version"),
        (json.dumps({"version": 1, "gops": {}}), "'gops' must be a list"),
        (json.dumps({"version": 1, "gops": [[1, 2]]}), r"gops\[0\] must be a JSON object"),
        (json.dumps({"version": 1, "gops": [{"index": 0, "scale": "1"}]}), "lacks 'half_rate'"),
        (json.dumps({"version": 1, "gops": [{**GOOD, "scale": "5/4"}]}), "scale must be one of"),
        (json.dumps({"version": 1, "gops": [{**GOOD, "scale": "big"}]}), "scale must be one of"),
        (json.dumps({"version": 1, "gops": [{**GOOD, "crf": 70}]}), r"crf must be within 0\.\.51"),
        (json.dumps({"version": 1, "gops": [{**GOOD, "crf": "27"}]}), "crf must be a number"),
        (json.dumps({"version": 1, "gops": [{**GOOD, "half_rate": "no"}]}), "true or false"),
        (json.dumps({"version": 1, "gops": [{**GOOD, "index": -1}]}), "index must be >= 0"),
        (json.dumps({"version": 1, "gops": [GOOD, GOOD]}), "GOP 0 listed twice"),
        (json.dumps({"version": 1, "gops": [{**GOOD, "probes": [{"crf": 3}]}]}), r"probes\[0\]"),
    ],
)
def test_decisions_file_validation(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=message) as caught:
        load_decisions(path)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_decisions_file(tmp_path) -> None:
    with pytest.raises(UsageError, match="not found"):
        load_decisions(tmp_path / "nope.json")
    with pytest.raises(UsageError, match="two decisions for GOP 0"):
        save_decisions(tmp_path / "d.json", [_decision(20.0), _decision(21.0)])
