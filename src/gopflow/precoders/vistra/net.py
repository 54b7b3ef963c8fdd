"""ViSTRA's decoder-side networks (Afonso, Zhang, Bull, TCSVT 2019).

- :class:`Upsampler`: CNN spatial up-sampling. Bicubic upscale + a residual whose heavy
  part runs at the coded (low) resolution; ``pixel_shuffle`` brings it to full size for 1/2,
  a light full-resolution tail (bilinear features + bicubic image, two 3x3 convolutions) for
  3/4 and 2/3.
- :class:`FrameInterpolator`: temporal up-sampling (frame-rate restoration), the middle
  frame from its two neighbours. A symmetric block-matching cost volume at quarter
  resolution gives a soft-argmin motion field, a dilated CNN refines it and predicts an
  occlusion mask and a residual; both neighbours are warped half-way (``grid_sample``) and
  blended. Untrained it is the plain average of the neighbours.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gopflow.precoders.nets import check_scale, conv_stack, fast_path, integer_factor, run_stack
from gopflow.zoo.registry import register_architecture


@register_architecture
class Upsampler(nn.Module):
    """Learned luma up-sampler for one scale factor (ViSTRA decoder-side CNN up-sampling).

    ``forward(small, size)`` returns ``N x 1 x size``: bicubic upscale + a residual computed
    at the small resolution (``pixel_shuffle`` for 1/r, a light full-resolution tail for
    other scales). The residual is zero at init.
    """

    TAIL_FEATURES = 4
    TAIL_CHANNELS = 8

    def __init__(self, scale: Fraction, channels: int | None = None, layers: int = 4) -> None:
        super().__init__()
        self.scale = check_scale(scale)
        self.factor = integer_factor(self.scale)
        # 1/r: the body runs on 1/r^2 of the output pixels and can afford more channels.
        channels = channels or (24 if self.factor else 16)
        self.channels, self.layers = channels, layers
        out = self.factor**2 if self.factor else self.TAIL_FEATURES
        self.body = conv_stack(1, channels, layers, out)
        self.tail: nn.Sequential | None = None
        if not self.factor:
            # The body's last layer must not be zero here, or the tail never sees features.
            nn.init.kaiming_uniform_(self.body[-1].weight, a=5**0.5)
            self.tail = conv_stack(1 + self.TAIL_FEATURES, self.TAIL_CHANNELS, 2, 1)

    def arch(self) -> dict[str, Any]:
        return {
            "class": "Upsampler",
            "scale": str(self.scale),
            "channels": self.channels,
            "layers": self.layers,
        }

    def forward(self, small: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        size = (int(size[0]), int(size[1]))
        base = F.interpolate(small, size=size, mode="bicubic", align_corners=False)
        fast = fast_path(self)
        if fast:
            small = small.contiguous(memory_format=torch.channels_last)
        feats = run_stack(self.body, small, fast)
        if self.factor:
            residual = F.pixel_shuffle(feats, self.factor)
            if tuple(residual.shape[-2:]) != size:
                residual = F.interpolate(residual, size=size, mode="bilinear", align_corners=False)
            return base + residual
        assert self.tail is not None
        up = F.interpolate(feats, size=size, mode="bilinear", align_corners=False)
        return base + run_stack(self.tail, torch.cat([base, up], dim=1), fast)


def _shift(x: torch.Tensor, dy: int, dx: int, pad: int) -> torch.Tensor:
    """``x`` (already padded by ``pad``) sampled at ``p + (dy, dx)`` for the inner area."""
    height, width = x.shape[-2] - 2 * pad, x.shape[-1] - 2 * pad
    return x[:, :, pad + dy : pad + dy + height, pad + dx : pad + dx + width]


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp: ``out(p) = image(p + flow(p))`` (bilinear, border replicated).

    ``flow`` is ``N x 2 x H x W`` in pixels (x then y) at ``image``'s resolution.
    """
    n, _, height, width = image.shape
    ys = torch.arange(height, dtype=image.dtype, device=image.device)
    xs = torch.arange(width, dtype=image.dtype, device=image.device)
    gx = (xs[None, None, :] + flow[:, 0]) * (2.0 / max(width - 1, 1)) - 1.0
    gy = (ys[None, :, None] + flow[:, 1]) * (2.0 / max(height - 1, 1)) - 1.0
    grid = torch.stack([gx.expand(n, height, width), gy.expand(n, height, width)], dim=-1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


@register_architecture
class FrameInterpolator(nn.Module):
    """The middle frame from two neighbours (ViSTRA frame-rate up-sampling), luma.

    At quarter resolution: a symmetric matching cost ``|a(p - d) - b(p + d)|`` for every
    displacement ``d`` in ``[-radius, radius]^2`` (box-filtered), whose soft-argmin is a
    candidate half-way motion field; a dilated CNN (input: cost volume + both frames'
    ``pixel_unshuffle``) predicts a per-pixel gate on that candidate, a motion correction,
    a blend mask and a residual (``pixel_shuffle`` to full size). ``a`` and ``b`` are warped
    half-way and blended. At init (zero last layer) it is the plain average of ``a``, ``b``.
    """

    POOL = 4

    def __init__(self, channels: int = 24, layers: int = 6, radius: int = 3) -> None:
        super().__init__()
        self.channels, self.layers, self.radius = channels, layers, radius
        disp = 2 * radius + 1
        cin = disp * disp + 2 * self.POOL**2
        dil = (1, 1, 2, 4, 8, 1, 1, 1)[:layers] if layers <= 8 else None
        # Outputs: flow correction (2), blend-mask logit (1), gate on the matched motion (1),
        # residual (POOL^2, pixel-shuffled). All zero at init: a plain average of a and b.
        self.body = conv_stack(cin, channels, layers, 4 + self.POOL**2, dil)
        # Sharpness of the soft-argmin over the cost volume (cost in 8-bit levels).
        self.log_temperature = nn.Parameter(torch.tensor(math.log(0.5)))
        span = range(-radius, radius + 1)
        offsets = [(dy, dx) for dy in span for dx in span]
        self.register_buffer(
            "offsets", torch.tensor(offsets, dtype=torch.float32).view(1, -1, 2, 1, 1),
            persistent=False,
        )

    def arch(self) -> dict[str, Any]:
        return {
            "class": "FrameInterpolator",
            "channels": self.channels,
            "layers": self.layers,
            "radius": self.radius,
        }

    def _cost_volume(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        r = self.radius
        pa = F.pad(a, (r, r, r, r), mode="replicate")
        pb = F.pad(b, (r, r, r, r), mode="replicate")
        costs = [
            (_shift(pa, -dy, -dx, r) - _shift(pb, dy, dx, r)).abs()
            for dy in range(-r, r + 1)
            for dx in range(-r, r + 1)
        ]
        cost = torch.cat(costs, dim=1) * 255.0
        return F.avg_pool2d(cost, 3, stride=1, padding=1, count_include_pad=False)

    def motion(
        self, a: torch.Tensor, b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(flow, mask, residual)`` at full size: sample ``a`` at ``p - flow`` and ``b``
        at ``p + flow``; blend ``mask * a' + (1 - mask) * b' + residual``."""
        height, width = a.shape[-2:]
        k = self.POOL
        pad_h, pad_w = (-height) % k, (-width) % k
        if pad_h or pad_w:
            a = F.pad(a, (0, pad_w, 0, pad_h), mode="replicate")
            b = F.pad(b, (0, pad_w, 0, pad_h), mode="replicate")
        qa, qb = F.avg_pool2d(a, k), F.avg_pool2d(b, k)
        cost = self._cost_volume(qa, qb)
        weights = torch.softmax(-cost / self.log_temperature.exp(), dim=1)
        # offsets are (dy, dx); flow channels are (x, y), in quarter-resolution pixels.
        soft = (weights.unsqueeze(2) * self.offsets).sum(dim=1).flip(1)
        inputs = torch.cat([cost / 32.0, F.pixel_unshuffle(a, k), F.pixel_unshuffle(b, k)], 1)
        fast = fast_path(self)
        if fast:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        out = run_stack(self.body, inputs, fast)
        flow_q = out[:, 3:4] * soft + out[:, :2]
        full = (a.shape[-2], a.shape[-1])
        flow = F.interpolate(flow_q * k, size=full, mode="bilinear", align_corners=False)
        mask = torch.sigmoid(F.interpolate(out[:, 2:3], size=full, mode="bilinear",
                                           align_corners=False))
        residual = F.pixel_shuffle(out[:, 4:], k)
        crop = (slice(None), slice(None), slice(0, height), slice(0, width))
        return flow[crop], mask[crop], residual[crop]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        flow, mask, residual = self.motion(a, b)
        return mask * warp(a, -flow) + (1 - mask) * warp(b, flow) + residual
