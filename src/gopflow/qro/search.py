"""QRO: per-GOP Quantisation-Resolution Optimisation (the decision logic, no video I/O).

After the QRO module of ViSTRA (Afonso, Zhang, Bull, "Video Compression Based on
Spatio-Temporal Resolution Adaptation", TCSVT 2019), which decides per GOP whether to code it
at a reduced spatial resolution and/or half the frame rate, extended with the target-quality
CRF search of Av1an (``target_quality.rs``) and ab-av1: probe encodes, an interpolated search
over CRF rather than a grid, the cheapest candidate that meets the target.

Data flow: the caller owns a ``probe`` callable that really encodes one GOP as a
:class:`Candidate` (scale, half rate, CRF; usually at a fast preset, results cached in the
work dir under :attr:`Candidate.key`), decodes and restores it to the source's size and frame
rate, and measures it -> :class:`ProbeResult` (bits written, pooled quality, minimum quality).
This module only decides which candidates to probe and what to choose:

- :func:`search_crf`: the highest CRF (lowest rate) of one mode whose quality >= a target;
- :func:`search_budget`: the lowest CRF (best quality) of one mode whose bits <= a budget;
- :func:`decide`: both over every (scale, frame rate) mode, with pruning -> :class:`Decision`;
- :func:`stricter`: the next candidate when the final encode fails its post-encode check.

Assumptions (documented because the pruning relies on them): at a fixed mode quality falls
and bits fall as CRF rises (up to measurement noise); at a fixed CRF a coarser mode (smaller
scale, or half rate at the same scale) has no more quality and no more bits than a finer one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction

from gopflow.errors import UsageError
from gopflow.precoders.resample import SCALES
from gopflow.qro.target import (
    Candidate,
    Decision,
    ProbeResult,
    QroTarget,
    as_boolean,
    as_crf,
    as_integer,
    as_number,
    parse_scale,
)
from gopflow.quality.names import METRIC_RANGES

BITS_SLOPE = math.log(2.0) / 6.0
"""Default d(log bits)/d(CRF): +6 CRF roughly halves the rate of x264/x265."""

_MAX_JUMP = 12.0  # largest CRF move of one extrapolated probe
# Quality falls faster at high CRF (a concave curve), so extrapolating down from failing
# probes undershoots: aim this much further, to land on the passing side and bracket sooner.
_DOWN_OVERSHOOT = 1.3
_SLACK = 1.25  # how far pruning rules 4 and 5 let a measured slope be off, either way
_EPS = 1e-9


# ---------------------------------------------------------------------------------------------
# The interpolated search.


def _snap(x: float, step: float) -> float:
    return round(round(x / step) * step, 6) + 0.0


def _grid_above(x: float, step: float) -> float:
    return round((math.floor(x / step + _EPS) + 1) * step, 6) + 0.0


def _grid_below(x: float, step: float) -> float:
    return round((math.ceil(x / step - _EPS) - 1) * step, 6) + 0.0


def _clamp(x: float, low: float, high: float) -> float:
    return min(max(x, low), high)


def _secant_slope(points: Mapping[float, float], x: float, default: float) -> float:
    """-dg/dx between ``x`` and its nearest probed neighbour, kept within [default/4, 4x]."""
    others = [o for o in points if o != x]
    if not others:
        return default
    near = min(others, key=lambda o: (abs(o - x), o))
    slope = (points[near] - points[x]) / (x - near)
    if not math.isfinite(slope) or slope <= 0:
        return default
    return _clamp(slope, default / 4.0, default * 4.0)


def _boundary_search(
    measure: Callable[[float], tuple[float, ProbeResult]],
    target: float,
    low: float,
    high: float,
    start: float,
    max_probes: int,
    step: float,
    slope: float,
) -> tuple[float | None, list[ProbeResult]]:
    """Highest grid ``x`` in [low, high] with ``g(x) >= target``, g roughly decreasing in x.

    Pass: ``g >= target``. The bracket is (``a``, ``b``): ``a`` the highest passing probe,
    ``b`` the lowest failing probe above ``a`` (failing probes below ``a`` are noise and are
    ignored, so a non-monotone g cannot loop the search). Inside a bracket the next x is the
    secant (regula falsi) root, or the midpoint after two probes on the same side (Illinois-
    style safeguard against one-sided convergence); without a bracket it extrapolates from the
    nearest probes' slope (``slope`` until there are two), except that the last probe allowed
    goes to ``low`` when nothing has passed yet (the one x most likely to pass). x values lie
    on multiples of ``step`` (or on ``low``/``high``) and are never probed twice.
    """
    values: dict[float, float] = {}
    results: list[ProbeResult] = []
    sides: list[bool] = []  # pass/fail of probes taken inside a bracket
    x: float | None = _clamp(_snap(start, step), low, high)
    bracketed = False
    while x is not None and len(values) < max_probes:
        g, result = measure(x)
        values[x] = g
        results.append(result)
        if bracketed:
            sides.append(g >= target)
        last = len(values) == max_probes - 1
        x, bracketed = _next_x(values, target, low, high, step, slope, sides, last)
    passing = [v for v, g in values.items() if g >= target]
    return (max(passing) if passing else None), results


def _next_x(
    values: Mapping[float, float],
    target: float,
    low: float,
    high: float,
    step: float,
    slope: float,
    sides: Sequence[bool],
    last: bool,
) -> tuple[float | None, bool]:
    passing = [v for v, g in values.items() if g >= target]
    a = max(passing) if passing else None
    failing = [v for v, g in values.items() if g < target and (a is None or v > a)]
    b = min(failing) if failing else None
    if a is not None and b is not None:
        inner_low = max(_grid_above(a, step), low)
        inner_high = min(_grid_below(b, step), high)
        if inner_low > inner_high + _EPS:
            return None, True  # bracket one step wide: a is the answer
        ga, gb = values[a], values[b]
        if len(sides) >= 2 and sides[-1] == sides[-2]:
            guess = (a + b) / 2.0
        else:
            guess = a + (ga - target) * (b - a) / (ga - gb)
        return _clamp(_snap(guess, step), inner_low, inner_high), True
    if a is not None:  # everything probed passes: move up
        if a >= high - _EPS:
            return None, False
        s = _secant_slope(values, a, slope)
        jump = _clamp((values[a] - target) / s, step, _MAX_JUMP)
        guess = max(_snap(a + jump, step), _grid_above(a, step))
        return min(guess, high), False
    assert b is not None  # everything probed fails: move down
    if b <= low + _EPS:
        return None, False
    if last:
        return low, False  # nothing passed yet: spend the last probe on the safe end
    s = _secant_slope(values, b, slope)
    jump = _clamp((target - values[b]) / s * _DOWN_OVERSHOOT, step, _MAX_JUMP)
    guess = min(_snap(b - jump, step), _grid_below(b, step))
    return max(guess, low), False


def _check_search_args(
    crf_min: float, crf_max: float, start: float, max_probes: int, step: float
) -> None:
    as_crf(crf_min, "crf_min")
    as_crf(crf_max, "crf_max")
    as_number(start, "start CRF")
    if crf_min > crf_max:
        raise UsageError(f"CRF range is empty: {crf_min:g} > {crf_max:g}")
    if as_integer(max_probes, "max_probes") < 1:
        raise UsageError("max_probes must be at least 1")
    if not as_number(step, "CRF step") > 0:
        raise UsageError(f"CRF step must be positive, got {step:g}")


def search_crf(
    probe: Callable[[float], ProbeResult],
    target: float,
    crf_min: float,
    crf_max: float,
    start: float,
    max_probes: int = 6,
    step: float = 0.5,
    default_slope: float = METRIC_RANGES["vmaf"].slope,
) -> tuple[float | None, list[ProbeResult]]:
    """The highest CRF in [crf_min, crf_max] whose measured quality >= ``target``.

    Interpolated search of quality vs CRF (see :func:`_boundary_search`): the first probe at
    ``start``, the second extrapolated with ``default_slope`` (quality lost per CRF unit),
    then secant steps inside the bracket; CRFs are rounded to ``step``; it stops when the
    bracket is one step wide or after ``max_probes``. The CRF returned was always probed and
    measured >= target; None when nothing probed met it (crf_min misses the target, or the
    probes ran out first). Returns it with the probes in the order they were taken.
    """
    _check_search_args(crf_min, crf_max, start, max_probes, step)

    def measure(crf: float) -> tuple[float, ProbeResult]:
        result = probe(crf)
        return result.quality, result

    return _boundary_search(
        measure, target, crf_min, crf_max, start, max_probes, step, default_slope
    )


def search_budget(
    probe: Callable[[float], ProbeResult],
    max_bits: int,
    crf_min: float,
    crf_max: float,
    start: float,
    max_probes: int = 6,
    step: float = 0.5,
    default_slope: float = BITS_SLOPE,
) -> tuple[float | None, list[ProbeResult]]:
    """The lowest CRF in [crf_min, crf_max] whose bits <= ``max_bits`` (the best quality that
    fits), interpolating log(bits) vs CRF (``default_slope``: d log(bits) / d CRF before two
    probes exist). Same search as :func:`search_crf` on the mirrored axis ``-crf``; None when
    nothing probed fits (even crf_max is too expensive, or the probes ran out first)."""
    _check_search_args(crf_min, crf_max, start, max_probes, step)
    if as_integer(max_bits, "max_bits") < 1:
        raise UsageError("the bit budget must be at least 1 bit")

    def measure(x: float) -> tuple[float, ProbeResult]:
        result = probe(-x + 0.0)
        return -math.log(max(result.bits, 1)), result

    best, results = _boundary_search(
        measure,
        -math.log(max_bits),
        -crf_max,
        -crf_min,
        -start,
        max_probes,
        step,
        default_slope,
    )
    return (None if best is None else -best + 0.0), results


# ---------------------------------------------------------------------------------------------
# Per-GOP decision over modes.


class _Pruned(Exception):
    """Raised inside a mode's search when the mode can no longer win."""


def _ls_slope(points: Sequence[tuple[float, float]], default: float) -> float:
    """-d(value)/d(crf) by least squares over one mode's probes, kept within [default/4, 4x]."""
    if len(points) < 2:
        return default
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx <= 0:
        return default
    slope = -sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    if not math.isfinite(slope) or slope <= 0:
        return default
    return _clamp(slope, default / 4.0, default * 4.0)


def _finer_or_equal(finer: tuple[Fraction, bool], mode: tuple[Fraction, bool]) -> bool:
    return finer != mode and finer[0] >= mode[0] and (not finer[1] or mode[1])


def _start_for(
    mode: tuple[Fraction, bool], found: Mapping[tuple[Fraction, bool], float], default: float
) -> float:
    """Where a mode's search starts: the CRF found for the nearest finer mode of the same
    frame rate; at half rate, the CRF found at full rate for this scale minus the full/half
    CRF offset measured at the nearest larger scale. ``default`` (the last CRF found) when
    nothing of the kind was found yet."""
    scale, half = mode
    larger = sorted({s for s, _ in found if s > scale})  # the nearest larger scale first
    if half and (scale, False) in found:
        offsets = [
            found[(s, False)] - found[(s, True)]
            for s in larger
            if (s, False) in found and (s, True) in found
        ]
        return found[(scale, False)] - (offsets[0] if offsets else 0.0)
    for s in larger:
        if (s, half) in found:
            return found[(s, half)]
    return default


def _lowest_fail(results: Iterable[ProbeResult], target: float) -> float | None:
    """The lowest failing CRF above the highest passing one (noise below it is ignored)."""
    results = list(results)
    passing = [r.candidate.crf for r in results if r.quality >= target]
    top = max(passing) if passing else -math.inf
    failing = [r.candidate.crf for r in results if r.quality < target and r.candidate.crf > top]
    return min(failing) if failing else None


def decide(
    gop_index: int,
    probe: Callable[[Candidate], ProbeResult],
    target: QroTarget,
    frames: int,
    fps: float,
    scales: Sequence[Fraction] = SCALES,
    rates: Sequence[bool] = (False, True),
    crf_range: tuple[float, float] = (10.0, 51.0),
    start_crf: float = 23.0,
    max_probes_per_mode: int = 5,
    step: float = 0.5,
    prune: bool = True,
) -> Decision:
    """Choose scale, frame rate and CRF for one GOP by probing candidates.

    Modes (scale, half_rate) are visited finest first (scale 1 .. 1/2, full rate before half
    rate); each is searched over CRF (:func:`search_crf` for a quality target,
    :func:`search_budget` for a bitrate budget of ``kbps * 1000 * frames / fps`` bits),
    starting from the CRF found for the previous mode and with its measured slope. The choice
    is made over *every* probe taken (each is a real measurement): for a quality target the
    fewest bits among probes with quality >= target (ties: higher quality, then finer mode);
    for a budget the highest quality among probes with bits <= budget (ties: fewer bits,
    then finer mode). When nothing meets the target, the highest-quality probe (quality mode)
    or the cheapest probe (budget mode) is returned with ``meets_target=False``.

    Pruning (``prune=True``). Rules 1-3 are exact under the monotonicity assumptions of the
    module doc; rules 4-5 are optimistic extrapolations (slopes measured on the modes already
    searched, allowed to be ``_SLACK`` = 1.25x off in the favourable direction), so they drop
    a mode only when even a generous prediction says it loses:

    1. *Quality dominance.* A coarser mode never has more quality than a finer one at the
       same CRF. Quality target: once a finer-or-equal mode failed at CRF f (its lowest
       failing CRF above its highest passing one), the coarser mode's search is capped below
       f. Budget: once a finer-or-equal mode fits at CRF c, the coarser mode can only beat it
       below c, so its search is capped below c. A mode whose cap falls below crf_min is
       skipped without a probe (e.g. scale 1 at full rate missed the target even at crf_min).
    2. *Cost bound* (quality target). A probe that misses the target yet already costs at
       least the cheapest passing probe so far ends its mode: meeting the target would need
       a lower CRF, hence more bits.
    3. *Quality bound* (budget). A probe over the budget whose quality is already no better
       than the best fitting probe so far ends its mode: fitting would need a higher CRF,
       hence lower quality.
    4. *Predicted cost* (quality target). From a probe, the CRF where the mode would just meet
       the target is extrapolated (steep quality slope when it must rise, flat when it may
       fall, and the log-bits slope the other way); the mode ends when that CRF is below
       crf_min or its predicted bits are no fewer than the cheapest passing probe's.
    5. *Predicted quality* (budget). Likewise to the CRF where the mode would just fit the
       budget; the mode ends when that CRF is above its cap or the predicted quality is no
       better than the best fitting probe's.

    Probe economy besides pruning: each mode starts from the CRF found for the nearest finer
    mode of the same frame rate (at half rate: the full-rate CRF of the same scale minus the
    full/half offset measured at a larger scale), with the slope measured on the last mode.

    The result depends only on the probe results (no randomness, fixed visiting order); a
    candidate is never probed twice within one call.
    """
    gop_index = as_integer(gop_index, "gop index")
    if not isinstance(target, QroTarget):
        raise UsageError(f"target must be a QroTarget, got {target!r}")
    frames = as_integer(frames, "frames", minimum=1)
    if not as_number(fps, "fps") > 0:
        raise UsageError(f"fps must be positive, got {fps!r}")
    crf_min, crf_max = (as_crf(crf_range[0], "crf_min"), as_crf(crf_range[1], "crf_max"))
    _check_search_args(crf_min, crf_max, start_crf, max_probes_per_mode, step)
    modes = sorted(
        {(parse_scale(s), as_boolean(r, "half_rate")) for s in scales for r in rates},
        key=lambda m: (-m[0], m[1]),
    )
    if not modes:
        raise UsageError("QRO needs at least one scale and one frame rate to choose from")

    cache: dict[str, ProbeResult] = {}
    taken: list[ProbeResult] = []

    def run(candidate: Candidate) -> ProbeResult:
        if candidate.key in cache:
            return cache[candidate.key]
        result = probe(candidate)
        if not isinstance(result, ProbeResult) or result.candidate.key != candidate.key:
            raise UsageError(f"probe of {candidate.key} returned {result!r}")
        cache[candidate.key] = result
        taken.append(result)
        return result

    if target.mode == "quality":
        assert target.target is not None
        chosen, meets = _decide_quality(
            run,
            taken,
            modes,
            target.target,
            crf_min,
            crf_max,
            start_crf,
            max_probes_per_mode,
            step,
            METRIC_RANGES[target.metric].slope,
            prune,
        )
    else:
        chosen, meets = _decide_budget(
            run,
            taken,
            modes,
            target.budget_bits(frames, fps),
            crf_min,
            crf_max,
            start_crf,
            max_probes_per_mode,
            step,
            METRIC_RANGES[target.metric].slope,
            prune,
        )
    return Decision(
        gop_index,
        chosen.candidate.scale,
        chosen.candidate.half_rate,
        chosen.candidate.crf,
        tuple(taken),
        chosen.bits,
        chosen.quality,
        meets,
    )


def _mode_rank(modes: Sequence[tuple[Fraction, bool]]) -> Callable[[ProbeResult], int]:
    order = {mode: i for i, mode in enumerate(modes)}
    return lambda r: order.get(r.candidate.mode, len(order))


def _cheapest_passing(
    taken: Sequence[ProbeResult], target: float, rank: Callable[[ProbeResult], int]
) -> ProbeResult | None:
    passing = [r for r in taken if r.quality >= target]
    if not passing:
        return None
    return min(passing, key=lambda r: (r.bits, -r.quality, rank(r), r.candidate.crf))


def _best_fitting(
    taken: Sequence[ProbeResult], max_bits: int, rank: Callable[[ProbeResult], int]
) -> ProbeResult | None:
    fitting = [r for r in taken if r.bits <= max_bits]
    if not fitting:
        return None
    return min(fitting, key=lambda r: (-r.quality, r.bits, rank(r), r.candidate.crf))


def _mode_slopes(
    results: Sequence[ProbeResult], quality_slope: float, bits_slope: float
) -> tuple[float, float]:
    """Quality lost and log(bits) saved per CRF unit, fitted on one mode's probes."""
    return (
        _ls_slope([(r.candidate.crf, r.quality) for r in results], quality_slope),
        _ls_slope([(r.candidate.crf, math.log(max(r.bits, 1))) for r in results], bits_slope),
    )


def _decide_quality(
    run: Callable[[Candidate], ProbeResult],
    taken: list[ProbeResult],
    modes: Sequence[tuple[Fraction, bool]],
    target: float,
    crf_min: float,
    crf_max: float,
    start: float,
    max_probes: int,
    step: float,
    slope: float,
    prune: bool,
) -> tuple[ProbeResult, bool]:
    rank = _mode_rank(modes)
    lowest_fail: dict[tuple[Fraction, bool], float] = {}
    found_at: dict[tuple[Fraction, bool], float] = {}
    measured: tuple[float, float] | None = None  # (quality, log-bits) slopes of a done mode
    for mode in modes:
        high = crf_max
        if prune:  # rule 1: quality dominance caps the CRF range
            for finer, fail in lowest_fail.items():
                if _finer_or_equal(finer, mode):
                    high = min(high, _grid_below(fail, step))
            if high < crf_min - _EPS:
                continue

        def measure(
            crf: float,
            mode: tuple[Fraction, bool] = mode,
            high: float = high,
            measured: tuple[float, float] | None = measured,
        ) -> ProbeResult:
            result = run(Candidate(mode[0], mode[1], crf))
            best = _cheapest_passing(taken, target, rank)
            if not prune or best is None:
                return result
            if result.quality < target and result.bits >= best.bits:
                raise _Pruned  # rule 2: cost bound
            if measured is not None and _predicted_loser(
                result, target, best.bits, measured, crf_min, high
            ):
                raise _Pruned  # rule 4: optimistic prediction of the mode's cost
            return result

        found: float | None = None
        with contextlib.suppress(_Pruned):
            found, _ = search_crf(
                measure,
                target,
                crf_min,
                high,
                _clamp(_start_for(mode, found_at, start), crf_min, high),
                max_probes,
                step,
                slope,
            )
        mine = [r for r in taken if r.candidate.mode == mode]
        fail = _lowest_fail(mine, target)
        if fail is not None:
            lowest_fail[mode] = fail
        if found is not None:
            start = found_at[mode] = found
            measured = _mode_slopes(mine, slope, BITS_SLOPE)
            slope = measured[0]
    best = _cheapest_passing(taken, target, rank)
    if best is not None:
        return best, True
    return min(taken, key=lambda r: (-r.quality, r.bits, rank(r), r.candidate.crf)), False


def _predicted_loser(
    result: ProbeResult,
    target: float,
    best_bits: int,
    slopes: tuple[float, float],
    crf_min: float,
    crf_max: float,
) -> bool:
    """Rule 4 (quality mode): even an optimistic extrapolation from ``result`` to the mode's
    target CRF (quality slope taken ``_SLACK`` times steeper when it must rise and flatter
    when it may fall, log-bits slope the other way) cannot meet the target within the CRF
    range, or costs at least ``best_bits``."""
    quality_slope, bits_slope = slopes
    crf = result.candidate.crf
    log_bits = math.log(max(result.bits, 1))
    if result.quality < target:
        drop = (target - result.quality) / (quality_slope * _SLACK)
        if drop > crf - crf_min + _EPS:
            return True  # cannot reach the target above crf_min
        return log_bits + drop * bits_slope / _SLACK >= math.log(max(best_bits, 1))
    rise = min((result.quality - target) / (quality_slope / _SLACK), crf_max - crf)
    return log_bits - rise * bits_slope * _SLACK >= math.log(max(best_bits, 1))


def _decide_budget(
    run: Callable[[Candidate], ProbeResult],
    taken: list[ProbeResult],
    modes: Sequence[tuple[Fraction, bool]],
    max_bits: int,
    crf_min: float,
    crf_max: float,
    start: float,
    max_probes: int,
    step: float,
    quality_slope: float,
    prune: bool,
) -> tuple[ProbeResult, bool]:
    rank = _mode_rank(modes)
    slope = BITS_SLOPE
    measured: tuple[float, float] | None = None
    found_at: dict[tuple[Fraction, bool], float] = {}
    for mode in modes:
        high = crf_max
        if prune:  # rule 1 (budget): quality dominance caps the CRF range
            for finer, fits_at in found_at.items():
                if _finer_or_equal(finer, mode):
                    high = min(high, _grid_below(fits_at, step))
            if high < crf_min - _EPS:
                continue

        def measure(
            crf: float,
            mode: tuple[Fraction, bool] = mode,
            measured: tuple[float, float] | None = measured,
            high: float = high,
        ) -> ProbeResult:
            result = run(Candidate(mode[0], mode[1], crf))
            best = _best_fitting(taken, max_bits, rank)
            if not prune or best is None:
                return result
            if result.bits > max_bits and result.quality <= best.quality:
                raise _Pruned  # rule 3: quality bound
            if measured is not None and _predicted_worse(
                result, max_bits, best.quality, measured, crf_min, high
            ):
                raise _Pruned  # rule 5: optimistic prediction of the mode's quality
            return result

        found: float | None = None
        with contextlib.suppress(_Pruned):
            found, _ = search_budget(
                measure,
                max(max_bits, 1),
                crf_min,
                high,
                _clamp(_start_for(mode, found_at, start), crf_min, high),
                max_probes,
                step,
                slope,
            )
        if found is not None:
            start = found_at[mode] = found
            mine = [r for r in taken if r.candidate.mode == mode]
            measured = _mode_slopes(mine, quality_slope, slope)
            quality_slope, slope = measured
    best = _best_fitting(taken, max_bits, rank)
    if best is not None:
        return best, True
    return min(taken, key=lambda r: (r.bits, -r.quality, rank(r), r.candidate.crf)), False


def _predicted_worse(
    result: ProbeResult,
    max_bits: int,
    best_quality: float,
    slopes: tuple[float, float],
    crf_min: float,
    crf_max: float,
) -> bool:
    """Rule 5 (budget mode): even an optimistic extrapolation from ``result`` to the CRF where
    the mode just fits the budget cannot fit within the CRF range, or gives no more quality
    than ``best_quality``."""
    quality_slope, bits_slope = slopes
    crf = result.candidate.crf
    excess = math.log(max(result.bits, 1)) - math.log(max_bits)
    if excess > 0:
        rise = excess / (bits_slope * _SLACK)
        if rise > crf_max - crf + _EPS:
            return True  # cannot fit the budget below crf_max
        return result.quality - rise * quality_slope / _SLACK <= best_quality
    drop = min(-excess / (bits_slope / _SLACK), crf - crf_min)
    return result.quality + drop * quality_slope * _SLACK <= best_quality


def stricter(
    decision: Decision | Candidate,
    step: float = 2.0,
    crf_min: float = 10.0,
    scales: Sequence[Fraction] = SCALES,
) -> Candidate | None:
    """The next candidate to re-encode with after a GOP failed its post-encode check.

    CRF lowered by ``step`` (not below ``crf_min``); at crf_min, back to full frame rate at
    the same scale, else up to the next larger allowed scale (full rate, same CRF). None when
    nothing stricter is left (scale 1, full rate, crf_min): the GOP is then flagged.
    """
    current = decision.candidate if isinstance(decision, Decision) else decision
    if not as_number(step, "step") > 0:
        raise UsageError(f"step must be positive, got {step!r}")
    if current.crf > crf_min + _EPS:
        return Candidate(current.scale, current.half_rate, max(crf_min, current.crf - step))
    if current.half_rate:
        return Candidate(current.scale, False, current.crf)
    larger = [s for s in (parse_scale(s) for s in scales) if s > current.scale]
    if larger:
        return Candidate(min(larger), False, current.crf)
    return None
