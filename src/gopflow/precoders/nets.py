"""Building blocks shared by the learned precoders' networks (torch, CPU-friendly).

The networks themselves live with their method: :mod:`gopflow.precoders.dvp.net` (the Deep
Video Precoding downscaler) and :mod:`gopflow.precoders.vistra.net` (ViSTRA's up-sampler and
frame interpolator). Each is a *plain* resampler plus a learned residual whose last layer
starts at zero, so an untrained network is exactly the plain resampler and training can only
add to it. All take ``N x 1 x H x W`` float luma in ``[0, 1]``.

In inference mode convolutions run on horizontal strips (with a halo as wide as the
receptive field, so the result equals the whole-frame one) in ``channels_last`` layout,
which keeps the activations in cache: measured 2x faster at 720p on a 2-core CPU.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gopflow.errors import UsageError

STRIP_ROWS = 64
"""Rows per strip when convolving a large frame in inference mode."""


def scale_tag(scale: Fraction) -> str:
    """``Fraction(3, 4)`` -> ``"3_4"`` (used in model names such as ``dvp-3_4``)."""
    return f"{scale.numerator}_{scale.denominator}"


def check_scale(scale: Fraction) -> Fraction:
    scale = Fraction(scale)
    if not 0 < scale < 1:
        raise UsageError(f"a learned resampler needs a scale in (0, 1), got {scale}")
    return scale


def integer_factor(scale: Fraction) -> int | None:
    """``r`` when ``scale == 1/r`` for an integer ``r`` (1/2 -> 2), else ``None``."""
    inverse = 1 / scale
    return int(inverse) if inverse.denominator == 1 else None


def conv_stack(
    cin: int, channels: int, layers: int, cout: int, dilations: tuple[int, ...] | None = None
) -> nn.Sequential:
    """``layers`` 3x3 convolutions with ReLU between; the last one zero-initialised."""
    if layers < 2:
        raise UsageError("a residual CNN needs at least 2 layers")
    dil = dilations or (1,) * layers
    modules: list[nn.Module] = []
    width = cin
    for index in range(layers - 1):
        modules += [
            nn.Conv2d(width, channels, 3, padding=dil[index], dilation=dil[index]),
            nn.ReLU(inplace=True),
        ]
        width = channels
    last = nn.Conv2d(width, cout, 3, padding=dil[layers - 1], dilation=dil[layers - 1])
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    modules.append(last)
    return nn.Sequential(*modules)


def _receptive_radius(stack: nn.Sequential) -> int:
    return sum(
        int(m.dilation[0]) * (int(m.kernel_size[0]) // 2)
        for m in stack
        if isinstance(m, nn.Conv2d)
    )


def run_stack(stack: nn.Sequential, x: torch.Tensor, strips: bool) -> torch.Tensor:
    """``stack(x)``; in strips with a halo (identical result, cache-friendly) if asked."""
    if not strips or x.shape[-2] <= 2 * STRIP_ROWS:
        return stack(x)
    x = x.contiguous(memory_format=torch.channels_last)
    halo = _receptive_radius(stack)
    height = x.shape[-2]
    parts = []
    for top in range(0, height, STRIP_ROWS):
        bottom = min(height, top + STRIP_ROWS)
        lo, hi = max(0, top - halo), min(height, bottom + halo)
        out = stack(x[:, :, lo:hi])
        parts.append(out[:, :, top - lo : bottom - lo])
    return torch.cat(parts, dim=2)


def _lanczos(x: np.ndarray, a: int = 3) -> np.ndarray:
    out = np.sinc(x) * np.sinc(x / a)
    out[np.abs(x) >= a] = 0.0
    return out


@functools.lru_cache(maxsize=64)
def resize_matrix(n_in: int, n_out: int, taps: int = 3) -> np.ndarray:
    """``n_out x n_in`` Lanczos-``taps`` resampling matrix (pixel-centre aligned, kernel
    widened when downscaling: antialiased, as swscale's ``lanczos`` does).

    Written out because the precoders need it *differentiable* and identical in training and
    inference; torch's ``interpolate`` has no Lanczos mode."""
    ratio = n_out / n_in
    stretch = min(ratio, 1.0)
    centres = (np.arange(n_out) + 0.5) / ratio - 0.5
    src = np.arange(n_in)
    weights = _lanczos((src[None, :] - centres[:, None]) * stretch, taps)
    # Border: fold weights outside the picture onto the edge pixel (replicate).
    radius = math.ceil(taps / stretch)
    for i, c in enumerate(centres):
        for k in range(math.floor(c) - radius, math.ceil(c) + radius + 1):
            if k < 0 or k >= n_in:
                w = float(_lanczos(np.array([(k - c) * stretch]), taps)[0])
                weights[i, min(max(k, 0), n_in - 1)] += w
    weights /= weights.sum(axis=1, keepdims=True)
    matrix = weights.astype(np.float32)
    matrix.flags.writeable = False
    return matrix


@functools.lru_cache(maxsize=8)
def _decimation_kernel(factor: int) -> tuple[np.ndarray, int]:
    """The Lanczos-3 taps of a ``1/factor`` downscale and their left reach: the same numbers
    as an interior row of :func:`resize_matrix` (every row is a shifted copy of it, and
    replicate padding folds the border weights onto the edge pixel as the matrix does)."""
    n_out = 16
    row = resize_matrix(n_out * factor, n_out)[n_out // 2]
    nonzero = np.flatnonzero(row)
    first, last = int(nonzero[0]), int(nonzero[-1])
    return np.ascontiguousarray(row[first : last + 1]), (n_out // 2) * factor - first


def lanczos_resize(y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Separable Lanczos-3 resize of ``N x C x H x W`` to ``size`` (differentiable):
    ``resize_matrix(H, h) @ y @ resize_matrix(W, w).T``.

    A downscale by the same integer factor in both directions (1/2 of an even size) runs
    as a strided convolution with replicate padding: the same numbers, touching only the
    kernel's taps. Other ratios use the dense matrices (fine for training crops; too slow for
    720p inference, see ``bench/precoder_speed.py``, which is why only ``dvp-1_2`` has a
    Lanczos base)."""
    height, width = y.shape[-2:]
    factor = height // size[0] if size[0] else 0
    if factor > 1 and height == size[0] * factor and width == size[1] * factor:
        taps, left = _decimation_kernel(factor)
        right = (size[0] - 1) * factor + len(taps) - height - left
        right_w = (size[1] - 1) * factor + len(taps) - width - left
        kernel = torch.tensor(taps).to(y)
        n, c = y.shape[:2]
        x = F.pad(y.reshape(n * c, 1, height, width), (left, right_w, left, right),
                  mode="replicate")
        x = F.conv2d(x, kernel.view(1, 1, 1, -1), stride=(1, factor))
        x = F.conv2d(x, kernel.view(1, 1, -1, 1), stride=(factor, 1))
        return x.reshape(n, c, size[0], size[1])
    mh = torch.from_numpy(resize_matrix(height, size[0]).copy()).to(y)
    mw = torch.from_numpy(resize_matrix(width, size[1]).copy()).to(y)
    return mh @ y @ mw.T


def fast_path(module: nn.Module) -> bool:
    return not module.training and not torch.is_grad_enabled()


def parameter_count(module: nn.Module) -> int:
    """Trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
