"""A differentiable stand-in for a block-transform video codec (training the precoders).

Deep Video Precoding (arXiv 1908.00812) trains its downscalers through a "virtual codec" so
they learn what survives coding. This proxy models an H.264-like intra coder on luma:

1. the picture is rounded to 8 bits (straight-through), padded to a multiple of 8;
2. 8x8 block DCT-II with the orthonormal matrix (so quantisation noise keeps its energy);
3. uniform scalar quantisation with H.264's step size for a QP,
   ``qstep = 0.625 * 2 ** ((qp - 4) / 6)`` on the 8-bit scale (QP 22 -> 5, 28 -> 10,
   34 -> 20, 40 -> 40). In training mode, QP is drawn per picture from ``qp_range`` and the
   rounding is replaced by additive uniform noise in ``[-q/2, q/2]`` (the usual relaxation,
   as in Balle et al.); in eval mode (and in training with ``train_noise=False``) the
   coefficients are really rounded, with a straight-through gradient, and ``rounding``
   < 0.5 gives an encoder-like dead zone (H.264's reference intra offset is 1/3);
4. inverse DCT, crop, and optionally (training) a mild Gaussian blur with probability
   ``blur_prob``, standing in for the deblocking filter and the encoder's smoothing.

It is a proxy, not a codec: there is no prediction, so at equal QP it is harsher on detail
than x264. :meth:`CodecProxy.rate` gives a differentiable bit estimate per pixel
(``log2(1 + |c| / q)`` summed over coefficients) for an optional rate term.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BLOCK = 8


def qstep(qp: float | torch.Tensor) -> float | torch.Tensor:
    """H.264 quantiser step on the 8-bit scale for ``qp`` (doubles every 6 QP)."""
    if isinstance(qp, torch.Tensor):
        return 0.625 * torch.pow(2.0, (qp - 4.0) / 6.0)
    return 0.625 * 2.0 ** ((qp - 4.0) / 6.0)


def dct_matrix(n: int = BLOCK) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``D`` (``D @ D.T == I``): ``coeffs = D @ block @ D.T``."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    matrix = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    matrix[0] /= math.sqrt(2.0)
    return matrix.float()


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity backward (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable 3-tap Gaussian blur with a per-picture ``sigma`` (``N``)."""
    taps = torch.exp(-1.0 / (2.0 * sigma.clamp_min(1e-3) ** 2))  # weight of the side taps
    kernel = torch.stack([taps, torch.ones_like(taps), taps], dim=1)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # N x 3
    n = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    rows = (
        padded[..., :-2] * kernel[:, 0].view(n, 1, 1, 1)
        + padded[..., 1:-1] * kernel[:, 1].view(n, 1, 1, 1)
        + padded[..., 2:] * kernel[:, 2].view(n, 1, 1, 1)
    )
    return (
        rows[..., :-2, :] * kernel[:, 0].view(n, 1, 1, 1)
        + rows[..., 1:-1, :] * kernel[:, 1].view(n, 1, 1, 1)
        + rows[..., 2:, :] * kernel[:, 2].view(n, 1, 1, 1)
    )


class CodecProxy(nn.Module):
    """Differentiable 8x8-DCT quantisation codec proxy for ``N x 1 x H x W`` luma in [0, 1].

    ``forward(y, qp=None)``: ``qp`` a number, a length-``N`` tensor, or ``None`` (training:
    drawn uniformly from ``qp_range`` per picture; eval: ``eval_qp``).
    """

    def __init__(
        self,
        qp_range: tuple[float, float] = (20.0, 40.0),
        eval_qp: float = 28.0,
        blur_prob: float = 0.25,
        blur_sigma: tuple[float, float] = (0.3, 0.7),
        rounding: float = 0.5,
        train_noise: bool = True,
    ) -> None:
        super().__init__()
        self.qp_range = qp_range
        self.eval_qp = eval_qp
        self.blur_prob = blur_prob
        self.blur_sigma = blur_sigma
        self.rounding = rounding
        self.train_noise = train_noise
        self.register_buffer("dct", dct_matrix(), persistent=False)

    # -- pieces ----------------------------------------------------------------------
    def _qp(self, qp: float | torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
        if qp is None:
            if self.training:
                lo, hi = self.qp_range
                return lo + (hi - lo) * torch.rand(n, dtype=like.dtype, device=like.device)
            qp = self.eval_qp
        if isinstance(qp, torch.Tensor):
            return qp.to(like).reshape(-1).expand(n)
        return torch.full((n,), float(qp), dtype=like.dtype, device=like.device)

    def blocks(self, y: torch.Tensor) -> torch.Tensor:
        """8x8 DCT coefficients on the 8-bit scale, ``N x 1 x H/8 x W/8 x 8 x 8``
        (``y`` must be padded to multiples of 8)."""
        n, c, height, width = y.shape
        tiles = y.reshape(n, c, height // BLOCK, BLOCK, width // BLOCK, BLOCK).transpose(3, 4)
        return self.dct @ (tiles * 255.0 - 128.0) @ self.dct.T

    def unblocks(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`blocks` (back to [0, 1] pixels)."""
        n, c, rows, cols = coeffs.shape[:4]
        tiles = (self.dct.T @ coeffs @ self.dct + 128.0) / 255.0
        return tiles.transpose(3, 4).reshape(n, c, rows * BLOCK, cols * BLOCK)

    @staticmethod
    def _pad(y: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = (-y.shape[-2]) % BLOCK, (-y.shape[-1]) % BLOCK
        return F.pad(y, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else y

    def quantise(self, coeffs: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """Noise (training) or rounding (eval, straight-through) of ``coeffs / step``."""
        q = step.view(-1, 1, 1, 1, 1, 1)
        scaled = coeffs / q
        if self.training and self.train_noise:
            return (scaled + (torch.rand_like(scaled) - 0.5)) * q
        offset = 0.5 - self.rounding
        level = torch.sign(scaled) * torch.clamp(torch.floor(scaled.abs() + 0.5 - offset), min=0)
        return (scaled + (level - scaled).detach()) * q

    # -- API -------------------------------------------------------------------------
    def forward(self, y: torch.Tensor, qp: float | torch.Tensor | None = None) -> torch.Tensor:
        height, width = y.shape[-2:]
        step = qstep(self._qp(qp, y.shape[0], y))
        assert isinstance(step, torch.Tensor)
        pixels = round_ste(y.clamp(0.0, 1.0) * 255.0) / 255.0
        coeffs = self.quantise(self.blocks(self._pad(pixels)), step)
        out = self.unblocks(coeffs)[..., :height, :width]
        if self.training and self.blur_prob > 0:
            lo, hi = self.blur_sigma
            n = y.shape[0]
            sigma = lo + (hi - lo) * torch.rand(n, dtype=y.dtype, device=y.device)
            apply = (torch.rand(n, device=y.device) < self.blur_prob).to(y.dtype)
            blurred = _gaussian_blur(out, sigma)
            out = out + apply.view(n, 1, 1, 1) * (blurred - out)
        return out

    def rate(
        self, y: torch.Tensor, qp: float | torch.Tensor | None = None, per_picture: bool = False
    ) -> torch.Tensor:
        """Differentiable bits-per-pixel estimate of coding ``y`` at ``qp``: the mean over
        the batch, or one value per picture (``per_picture``). A crude intra-only model,
        ``log2(1 + |c| / q)`` bits per coefficient; useful for relative comparisons."""
        step = qstep(self._qp(qp, y.shape[0], y))
        assert isinstance(step, torch.Tensor)
        coeffs = self.blocks(self._pad(y.clamp(0.0, 1.0)))
        bits = torch.log2(1.0 + coeffs.abs() / step.view(-1, 1, 1, 1, 1, 1))
        per = bits.flatten(1).sum(dim=1) / (y.shape[-2] * y.shape[-1])
        return per if per_picture else per.mean()
