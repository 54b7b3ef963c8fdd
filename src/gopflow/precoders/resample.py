"""Spatio-temporal resampling of a GOP, and its plain decoder-side restoration.

After ViSTRA (Afonso, Zhang, Bull, TCSVT 2019): per GOP, the encoder may code a smaller
picture (spatial scale 3/4, 2/3 or 1/2) and/or half the frame rate (every other frame);
the decoder restores full size and full rate. Here both directions are ffmpeg filter
chains (well-kept, fast): Lanczos down-scaling and frame dropping at the encoder; bicubic
up-scaling and frame repetition at the decoder (what a plain player does). Learned
restoration plugs in through the same :class:`ResampleMode`.

The restoration needs nothing but the coded stream and the source's size, rate and frame
count: each coded frame keeps its source timestamp, so frame repetition on the source's
frame grid puts every picture back where it came from (encoder-decoder matched side
information, EDMS: what the decoder can recompute is never sent).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from gopflow.errors import UsageError

SCALES: tuple[Fraction, ...] = (Fraction(1), Fraction(3, 4), Fraction(2, 3), Fraction(1, 2))


@dataclass(frozen=True)
class ResampleMode:
    """How one GOP is coded: spatial scale and whether at half the frame rate."""

    scale: Fraction = Fraction(1)
    half_rate: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.scale <= 1:
            raise UsageError(f"spatial scale must be in (0, 1], got {self.scale}")

    @property
    def is_identity(self) -> bool:
        return self.scale == 1 and not self.half_rate

    def coded_frames(self, frames: int) -> int:
        """Frames actually coded for a GOP of ``frames`` source frames."""
        return (frames + 1) // 2 if self.half_rate else frames


def scaled_size(width: int, height: int, scale: Fraction) -> tuple[int, int]:
    """The coded size at ``scale``: rounded to even numbers (4:2:0), at least 16x16."""
    if scale == 1:
        return width, height
    return (
        max(16, 2 * round(width * scale / 2)),
        max(16, 2 * round(height * scale / 2)),
    )


def down_filters(width: int, height: int, mode: ResampleMode) -> list[str]:
    """Encoder-side filters: drop every other frame (keeping timestamps), then downscale."""
    chain = []
    if mode.half_rate:
        chain.append("select='not(mod(n\\,2))'")
    if mode.scale != 1:
        coded_w, coded_h = scaled_size(width, height, mode.scale)
        chain.append(f"scale={coded_w}:{coded_h}:flags=lanczos")
    return chain


def restore_filters(width: int, height: int, fps: Fraction, frames: int) -> list[str]:
    """Decoder-side filters: bicubic upscale to the source size, then repeat frames onto
    the source's frame grid, exactly ``frames`` of them (starting at timestamp 0)."""
    rate = f"{fps.numerator}/{fps.denominator}"
    return [
        "setpts=PTS-STARTPTS",
        f"scale={width}:{height}:flags=bicubic",
        # Hold the last picture long enough to fill the grid, then cut to the frame count.
        "tpad=stop_mode=clone:stop=2",
        f"fps={rate}:round=near",
        f"trim=end_frame={frames}",
    ]
