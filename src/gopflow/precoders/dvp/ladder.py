"""Streaming-ladder rungs made with the DVP downscalers (``gopflow ladder --precoder dvp``).

DVP has three learned scales (3/4, 2/3, 1/2). A rung below the source's height is made by
the learned downscaler at the smallest of those scales whose picture is at least the rung's
height ("the nearest DVP scale above"), then, if that picture is still taller, by Lanczos
to the rung's size. A DVP ladder's probe grid (:func:`dvp_heights`) holds only heights DVP
makes by itself (the source's x 3/4, 2/3 and 1/2) and the grid's heights below the 1/2
picture (DVP 1/2, then Lanczos), so every rung below the source goes through the learned
downscaler; heights between the 3/4 picture and the source (none of DVP's) are left out.

Sizes: the DVP picture is :func:`gopflow.precoders.resample.scaled_size` (even, as the
downscalers make it); a Lanczos step after it keeps the *source's* aspect (even width), as
a plain rung's scaling does. The probe and the rung encodes both take their sizes from
:func:`dvp_rung`, so the hull's sizes are the shipped ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from gopflow.errors import UsageError
from gopflow.precoders.resample import scaled_size

DVP_SCALES: tuple[Fraction, ...] = (Fraction(3, 4), Fraction(2, 3), Fraction(1, 2))
"""The scales DVP has shipped weights for, largest first."""


@dataclass(frozen=True)
class DvpRung:
    """A rung picture made with DVP: the learned downscale at ``scale`` to ``dvp_size``,
    then Lanczos to ``size`` when that is smaller (``then_lanczos``)."""

    scale: Fraction
    dvp_size: tuple[int, int]
    size: tuple[int, int]

    @property
    def then_lanczos(self) -> bool:
        return self.size != self.dvp_size

    def describe(self) -> str:
        """``dvp 1/2`` or ``dvp 1/2 + lanczos``: how the rung's pictures are made."""
        return f"dvp {self.scale}" + (" + lanczos" if self.then_lanczos else "")


def _even(value: int) -> int:
    return max(2, value - value % 2)


def dvp_rung(width: int, height: int, target_height: int) -> DvpRung | None:
    """How a ``target_height`` rung of a ``width`` x ``height`` source is made with DVP;
    None at the source's own height (less one row if odd) or above: the plain rung. A
    height between DVP's 3/4 picture and the source is no DVP rung: a one-line error."""
    target = _even(target_height)
    if target >= _even(height):
        return None
    fits = [s for s in DVP_SCALES if scaled_size(width, height, s)[1] >= target]
    if not fits:
        top = scaled_size(width, height, DVP_SCALES[0])[1]
        raise UsageError(f"no DVP scale makes a {target}-line picture of a {height}-line "
                         f"source: DVP's largest is {top} lines (3/4)")
    scale = fits[-1]  # the smallest scale that is still tall enough
    dvp_size = scaled_size(width, height, scale)
    if dvp_size[1] == target:
        return DvpRung(scale, dvp_size, dvp_size)
    out_width = max(2, round(width * target / height / 2) * 2)
    return DvpRung(scale, dvp_size, (out_width, target))


def dvp_heights(width: int, height: int, heights: Iterable[int]) -> tuple[int, ...]:
    """A DVP ladder's probe heights, tallest first: the source's own (less one row if odd),
    DVP's three pictures, and those of ``heights`` below DVP's 1/2 picture (made by DVP 1/2,
    then Lanczos)."""
    own = scaled_size(width, height, DVP_SCALES[-1])[1]
    learned = {scaled_size(width, height, s)[1] for s in DVP_SCALES}
    below = {_even(h) for h in heights if 2 <= h < own}
    kept = {_even(height), *(h for h in learned | below if h < height)}
    return tuple(sorted(kept, reverse=True))


def check_dvp_source(width: int, height: int) -> None:
    """Refuse a source too small for DVP's pictures to keep its aspect (16 lines at 1/2)."""
    if min(width, height) < 32:
        raise UsageError(f"a {width}x{height} video is too small for --precoder dvp (DVP's "
                         "1/2 picture needs at least 32 pixels a side)")
