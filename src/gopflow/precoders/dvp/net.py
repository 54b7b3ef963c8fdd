"""The Deep Video Precoding downscaler network (Bourtsoulatze, Chadha, ..., Andreopoulos,
arXiv 1908.00812): an encoder-side downscaler trained *through* a codec proxy and a linear
(bicubic) upscaler, i.e. what a standard player does, so the output is a standard picture at
the smaller size that any decoder shows by upscaling.

A plain downscale (``base``: antialiased bicubic, or Lanczos-3 as swscale's ``lanczos``, the
benchmark's reference) + a residual from a 3-layer CNN of 8 channels computed at the output
resolution. For 1/2 the CNN sees the base and all input pixels (``pixel_unshuffle``); for
3/4 and 2/3 it sees the base and a point-sampled (bilinear without antialiasing: aliased,
detail-carrying) downscale.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gopflow.errors import UsageError
from gopflow.precoders.nets import (
    check_scale,
    conv_stack,
    fast_path,
    integer_factor,
    lanczos_resize,
    run_stack,
)
from gopflow.precoders.resample import scaled_size
from gopflow.zoo.registry import register_architecture


@register_architecture
class DvpDownscaler(nn.Module):
    """Learned luma downscaler for one scale factor (Deep Video Precoding, arXiv 1908.00812).

    ``forward(y)`` maps ``N x 1 x H x W`` to ``N x 1 x h x w`` with
    ``(w, h) = scaled_size(W, H, scale)`` (even sizes, the same rounding as the Lanczos
    path). Output = plain downscale (``base``) + learned residual (zero at init, so an
    untrained model is exactly the plain downscale).
    """

    BASES = ("bicubic", "lanczos")

    def __init__(
        self, scale: Fraction, channels: int = 8, layers: int = 3, base: str = "bicubic"
    ) -> None:
        super().__init__()
        self.scale = check_scale(scale)
        if base not in self.BASES:
            raise UsageError(f"DVP base must be one of {self.BASES}, got {base!r}")
        self.channels, self.layers, self.base = channels, layers, base
        self.factor = integer_factor(self.scale)
        cin = 1 + (self.factor**2 if self.factor else 1)
        self.body = conv_stack(cin, channels, layers, 1)

    def arch(self) -> dict[str, Any]:
        """Constructor arguments (recorded in the weights registry)."""
        return {
            "class": "DvpDownscaler",
            "scale": str(self.scale),
            "channels": self.channels,
            "layers": self.layers,
            **({"base": self.base} if self.base != "bicubic" else {}),
        }

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` of the output for an ``height x width`` input."""
        out_w, out_h = scaled_size(width, height, self.scale)
        return out_h, out_w

    def features(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The plain downscale (``base``) and the CNN's input at output size."""
        size = self.output_size(y.shape[-2], y.shape[-1])
        if self.base == "lanczos":
            base = lanczos_resize(y, size)
        else:
            base = F.interpolate(y, size=size, mode="bicubic", antialias=True, align_corners=False)
        if self.factor:
            full = (size[0] * self.factor, size[1] * self.factor)
            grid = y if tuple(y.shape[-2:]) == full else F.interpolate(
                y, size=full, mode="bicubic", antialias=True, align_corners=False
            )
            detail = F.pixel_unshuffle(grid, self.factor)
        else:
            detail = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return base, torch.cat([base, detail], dim=1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        base, inputs = self.features(y)
        return base + run_stack(self.body, inputs, fast_path(self))
