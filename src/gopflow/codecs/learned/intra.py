"""The learned intra (key-frame) codec, and the transforms and loss the video codecs share.

Image codec after Balle et al. 2018 ("Variational image compression with a scale
hyperprior"): a four-stage stride-2 analysis transform with GDN, the variable-rate scale
hyperprior of :mod:`gopflow.codecs.learned.hyperprior` (gain units after Cui et al. 2021),
and the mirrored synthesis transform with inverse GDN.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from copy import deepcopy
from typing import Any

import torch
from compressai.layers import GDN
from compressai.models import CompressionModel
from compressai.models.utils import conv, deconv
from torch import Tensor, nn

from gopflow.codecs.learned.api import InterCandidate
from gopflow.codecs.learned.bitstream import BitstreamError, pack_strings, unpack_strings
from gopflow.codecs.learned.hyperprior import (
    HYPER_STRIDE,
    GainedHyperprior,
    LatentCode,
    pack_codes,
    unpack_codes,
)

LATENT_STRIDE = 16
"""Down-sampling of the four-stage analysis transforms."""
MULTIPLE = LATENT_STRIDE * HYPER_STRIDE
"""Frames are padded to a multiple of this (latent stride times hyperprior stride)."""


def analysis(in_channels: int, channels: int, latent_channels: int) -> nn.Sequential:
    """Four 5x5 stride-2 convolutions with GDN between them (``/16``)."""
    return nn.Sequential(
        conv(in_channels, channels), GDN(channels),
        conv(channels, channels), GDN(channels),
        conv(channels, channels), GDN(channels),
        conv(channels, latent_channels),
    )


def synthesis(latent_channels: int, channels: int, out_channels: int) -> nn.Sequential:
    """The mirror of :func:`analysis`: transposed convolutions with inverse GDN (``x16``)."""
    return nn.Sequential(
        deconv(latent_channels, channels), GDN(channels, inverse=True),
        deconv(channels, channels), GDN(channels, inverse=True),
        deconv(channels, channels), GDN(channels, inverse=True),
        deconv(channels, out_channels),
    )


def rd_loss(
    target: Tensor, recon: Tensor, bits: Tensor, lmbda: Tensor
) -> tuple[Tensor, dict[str, float]]:
    """``mean(bpp + lmbda * 255^2 * mse)`` per sample, with bpp, mse and PSNR as metrics."""
    pixels = target.shape[-2] * target.shape[-1]
    bpp = bits / pixels
    mse = torch.mean((recon - target) ** 2, dim=(1, 2, 3))
    loss = torch.mean(bpp + lmbda * 255.0**2 * mse)
    psnr = -10.0 * torch.log10(mse.detach().clamp_min(1e-10))
    return loss, {
        "loss": float(loss.detach()),
        "bpp": float(bpp.detach().mean()),
        "mse": float(mse.detach().mean()),
        "psnr": float(psnr.mean()),
    }


def latent_shape(padded_h: int, padded_w: int) -> list[int]:
    """Spatial size of the latents of a padded frame (stored in payloads as a check)."""
    if padded_h % MULTIPLE or padded_w % MULTIPLE:
        raise ValueError(f"frame {padded_w}x{padded_h} is not padded to a multiple of {MULTIPLE}")
    return [padded_h // LATENT_STRIDE, padded_w // LATENT_STRIDE]


def unpack_payload(
    payload: bytes, padded_h: int, padded_w: int, latents: int
) -> list[Any]:
    """The latent codes of a payload, checking its recorded latent size."""
    groups, shape = unpack_strings(payload)
    expected = latent_shape(padded_h, padded_w)
    if shape != expected:
        raise BitstreamError(
            f"a frame payload is for latents of {shape}, the stream's frame size needs {expected}")
    return unpack_codes(groups, latents)


def fast_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with its weights in channels-last layout, for the encoder's
    rate-distortion choices only (made per frame, so never stale): about a third faster on
    this CPU (DVC's residual synthesis at 720p, one thread). Its
    output may differ from the decoder's path in the last bits, which a choice between
    candidates tolerates: the frame the encoder keeps is rebuilt by the decoder's path."""
    return deepcopy(module).to(memory_format=torch.channels_last)


def residual_candidates(
    prior: GainedHyperprior, residual: Tensor | None, levels: Sequence[int],
    deadzones: Sequence[float], lead: LatentCode | bytes, lead_level: int, lead_latent: Any,
    shape: list[int], rebuild: Callable[[Tensor], Tensor] | None, skip: bool = False,
    lead_predicted: bool = False, lead_grid: bool = False,
) -> Iterator[InterCandidate]:
    """A P frame's payloads, one per residual level and dead zone: the ``lead`` latent
    (motion or offsets: ``lead_latent`` coded once at ``lead_level``) then ``residual``
    coded at that level with that dead zone (``lead_predicted``: the lead latent is a
    difference from the previous frame's); with ``skip`` also the lead latent alone (the
    residual taken as all zeros: :meth:`GainedHyperprior.zeros`). A ``lead`` given as bytes
    (a global motion model, ``lead_latent``, with a correction grid where ``lead_grid``)
    opens the payload, and the strings hold the residual alone. Each carries
    ``rebuild(residual_hat)``, the decoder's frame, for the encoder's choice (``None`` where
    there is nothing to choose: ``rebuild`` is ``None``). Yielded one at a time, so the
    encoder keeps only the best frame in memory."""
    is_global = isinstance(lead, bytes)

    def payload(codes: list[LatentCode]) -> bytes:
        if isinstance(lead, bytes):
            return lead + pack_strings(pack_codes(codes), shape)
        return pack_strings(pack_codes([lead, *codes]), shape)

    for level in levels:
        for deadzone in deadzones:
            assert residual is not None
            code, residual_hat = prior.compress(residual, level, deadzone)
            yield InterCandidate(
                payload([code]), rebuild(residual_hat) if rebuild is not None else None,
                lead_level, level, deadzone, lead_latent, lead_predicted, is_global, lead_grid)
    if skip:
        zeros = prior.zeros((shape[0], shape[1]))
        yield InterCandidate(
            payload([]), rebuild(zeros) if rebuild is not None else None,
            lead_level, None, None, lead_latent, lead_predicted, is_global, lead_grid)


class IntraCodec(CompressionModel):
    """Variable-rate scale-hyperprior image codec (Balle 2018 with Cui 2021 gain units)."""

    stages: tuple[str, ...] = ("rd",)
    fine_tune_stages: tuple[str, ...] = ()
    frames_per_sample = 1
    multiple = MULTIPLE

    def __init__(
        self, channels: int = 64, latent_channels: int = 96, hyper_channels: int = 64,
        levels: int = 4,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.latent_channels = latent_channels
        self.hyper_channels = hyper_channels
        self.levels = levels
        self.g_a = analysis(3, channels, latent_channels)
        self.g_s = synthesis(latent_channels, channels, 3)
        self.prior = GainedHyperprior(latent_channels, hyper_channels, levels)

    def frozen_modules(self, stage: str) -> tuple[str, ...]:
        """Every stage trains the whole model."""
        return ()

    def arch(self) -> dict[str, Any]:
        """JSON description the weights registry rebuilds this model from."""
        return {
            "class": type(self).__name__, "channels": self.channels,
            "latent_channels": self.latent_channels, "hyper_channels": self.hyper_channels,
            "levels": self.levels,
        }

    def forward(self, x: Tensor, level: Tensor) -> tuple[Tensor, Tensor]:
        """Training pass: ``(x_hat, bits per sample)``."""
        y_hat, bits = self.prior(self.g_a(x), level)
        return self.g_s(y_hat), bits

    def training_loss(
        self, reference: Any, frames: Tensor, level: Tensor, lmbda: Tensor, stage: str
    ) -> tuple[Tensor, dict[str, float]]:
        """R + lmbda * 255^2 * D of the first frame of each sample (``reference`` unused)."""
        if stage not in self.stages:
            raise ValueError(f"IntraCodec has no training stage {stage!r}")
        x = frames[:, 0]
        x_hat, bits = self(x, level)
        return rd_loss(x, x_hat, bits, lmbda)

    def compress(self, x: Tensor, level: int) -> bytes:
        """Entropy-code one padded frame (``1 x 3 x H x W`` in [0, 1]) at 0-based ``level``."""
        code, _ = self.prior.compress(self.g_a(x), level)
        return pack_strings(pack_codes([code]), latent_shape(x.shape[-2], x.shape[-1]))

    def decompress(self, payload: bytes, padded_h: int, padded_w: int, level: int) -> Tensor:
        """Decode a :meth:`compress` payload to the frame (``1 x 3 x H x W``, clamped)."""
        (code,) = unpack_payload(payload, padded_h, padded_w, 1)
        y_hat = self.prior.decompress(code, (padded_h // LATENT_STRIDE, padded_w // LATENT_STRIDE),
                                      level)
        return self.g_s(y_hat).clamp(0.0, 1.0)
