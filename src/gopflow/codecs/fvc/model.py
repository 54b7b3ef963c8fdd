"""FVC inter codec after Hu et al., CVPR 2021 ("FVC: A New Framework towards Deep Video
Compression in Feature Space").

Steps per P frame, all in a stride-4 feature space: feature extraction (stride-2 convs);
offset estimation from current and reference features; the offset features are coded by a
hyperprior auto-encoder (gained scale hyperprior); deformable compensation of the reference
features (``torchvision.ops.DeformConv2d``) gives the prediction; the feature residual is
coded by a second hyperprior auto-encoder; multi-frame fusion aligns the features of the
last decoded frames (the reference buffer) to the reconstructed features with decoder-side
deformable convolutions (no bits) and fuses them; transposed convolutions rebuild the frame.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from compressai.layers import GDN
from compressai.models import CompressionModel
from compressai.models.utils import conv, deconv
from torch import Tensor, nn
from torchvision.ops import DeformConv2d

from gopflow.codecs.learned.api import InterCandidate, candidate_count
from gopflow.codecs.learned.bitstream import BitstreamError
from gopflow.codecs.learned.hyperprior import ROUNDING, GainedHyperprior, Refinement
from gopflow.codecs.learned.intra import (
    LATENT_STRIDE,
    MULTIPLE,
    fast_copy,
    latent_shape,
    rd_loss,
    residual_candidates,
    unpack_payload,
)

KERNEL = 3


def _encoder(channels: int, hidden: int, latent: int) -> nn.Sequential:
    """Feature map (stride 4) -> latent (stride 16)."""
    return nn.Sequential(conv(channels, hidden), GDN(hidden), conv(hidden, latent))


def _decoder(latent: int, hidden: int, channels: int) -> nn.Sequential:
    return nn.Sequential(deconv(latent, hidden), GDN(hidden, inverse=True),
                         deconv(hidden, channels))


class DeformableAlign(nn.Module):
    """Deformable compensation: offsets from a feature map, then a deformable convolution."""

    def __init__(self, channels: int, offset_groups: int) -> None:
        super().__init__()
        self.to_offsets = conv(channels, 2 * offset_groups * KERNEL * KERNEL, 3, 1)
        self.deform = DeformConv2d(channels, channels, KERNEL, padding=KERNEL // 2)

    def forward(self, features: Tensor, offset_features: Tensor) -> Tensor:
        return self.deform(features, self.to_offsets(offset_features))


class FvcCodec(CompressionModel):
    """FVC: deformable feature compensation with coded offsets, feature residual coding,
    multi-frame feature fusion from a reference buffer."""

    stages: tuple[str, ...] = ("align", "rd")
    fine_tune_stages: tuple[str, ...] = ()
    frames_per_sample = 2
    multiple = MULTIPLE

    def __init__(
        self, channels: int = 48, offset_channels: int = 48, offset_latent: int = 64,
        residual_channels: int = 64, residual_latent: int = 96, hyper_channels: int = 48,
        offset_groups: int = 4, buffer: int = 3, levels: int = 4,
    ) -> None:
        super().__init__()
        self._arch = {
            "channels": channels, "offset_channels": offset_channels,
            "offset_latent": offset_latent, "residual_channels": residual_channels,
            "residual_latent": residual_latent, "hyper_channels": hyper_channels,
            "offset_groups": offset_groups, "buffer": buffer, "levels": levels,
        }
        c = channels
        self.levels = levels
        self.buffer = buffer
        self.extract = nn.Sequential(
            conv(3, c, 3, 2), nn.ReLU(inplace=True),
            conv(c, c, 3, 1), nn.ReLU(inplace=True),
            conv(c, c, 3, 2),
        )
        self.offset_estimate = nn.Sequential(
            conv(2 * c, c, 3, 1), nn.ReLU(inplace=True), conv(c, c, 3, 1))
        self.o_a = _encoder(c, offset_channels, offset_latent)
        self.o_s = _decoder(offset_latent, offset_channels, c)
        self.offset_prior = GainedHyperprior(offset_latent, hyper_channels, levels)
        self.compensate = DeformableAlign(c, offset_groups)
        self.r_a = _encoder(c, residual_channels, residual_latent)
        self.r_s = _decoder(residual_latent, residual_channels, c)
        self.residual_prior = GainedHyperprior(residual_latent, hyper_channels, levels)
        self.fusion_offsets = nn.Sequential(
            conv(2 * c, c, 3, 1), nn.ReLU(inplace=True), conv(c, c, 3, 1))
        self.fusion_align = DeformableAlign(c, offset_groups)
        self.fuse = nn.Sequential(
            conv((buffer + 1) * c, c, 3, 1), nn.ReLU(inplace=True), conv(c, c, 3, 1))
        self.reconstruct = nn.Sequential(
            deconv(c, c, 3, 2), nn.ReLU(inplace=True), deconv(c, 3, 3, 2))

    def frozen_modules(self, stage: str) -> tuple[str, ...]:
        """Every stage trains the whole model."""
        return ()

    def arch(self) -> dict[str, Any]:
        """JSON description the weights registry rebuilds this model from."""
        return {"class": type(self).__name__, **self._arch}

    def _predict(self, current: Tensor, buffer: tuple[Tensor, ...]) -> Tensor:
        return self.offset_estimate(torch.cat((current, buffer[0]), dim=1))

    def _fused_frame(self, features: Tensor, buffer: tuple[Tensor, ...]) -> Tensor:
        """Align every buffered reference to ``features``, fuse, rebuild the frame."""
        entries = [*buffer, *[buffer[-1]] * (self.buffer - len(buffer))]
        aligned = [
            self.fusion_align(ref, self.fusion_offsets(torch.cat((features, ref), dim=1)))
            for ref in entries
        ]
        fused = features + self.fuse(torch.cat((features, *aligned), dim=1))
        return self.reconstruct(fused)

    def forward(
        self, x: Tensor, buffer: tuple[Tensor, ...], level: Tensor, align_only: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Training pass for one frame: ``(x_hat, bits per sample)``; with ``align_only`` the
        frame rebuilt from the compensated features and the offset bits (alignment warm-up)."""
        current = self.extract(x)
        o_hat, bits = self.offset_prior(self.o_a(self._predict(current, buffer)), level)
        prediction = self.compensate(buffer[0], self.o_s(o_hat))
        if align_only:
            return self.reconstruct(prediction), bits
        r_hat, r_bits = self.residual_prior(self.r_a(current - prediction), level)
        return self._fused_frame(prediction + self.r_s(r_hat), buffer), bits + r_bits

    def training_loss(
        self, reference: Tensor, frames: Tensor, level: Tensor, lmbda: Tensor, stage: str
    ) -> tuple[Tensor, dict[str, float]]:
        """Frames coded in order, the buffer holding features of the decoded frames; mean over
        frames. Stage ``"align"``: offset rate plus distortion of the compensated frame."""
        if stage not in self.stages:
            raise ValueError(f"FvcCodec has no training stage {stage!r}")
        state = self.next_state(None, reference)
        losses, totals = [], {}
        for t in range(frames.shape[1]):
            x = frames[:, t]
            x_hat, bits = self(x, state, level, align_only=stage == "align")
            loss, metrics = rd_loss(x, x_hat, bits, lmbda)
            losses.append(loss)
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value / frames.shape[1]
            state = self.next_state(state, x_hat.clamp(0.0, 1.0) if stage == "rd" else x)
        return torch.stack(losses).mean(), totals

    def next_state(
        self, state: tuple[Tensor, ...] | None, recon: Tensor, lead_hat: Tensor | None = None
    ) -> tuple[Tensor, ...]:
        """The reference buffer: features of the last ``buffer`` decoded frames, newest first
        (the frames' offsets are not kept: FVC codes its offsets without prediction)."""
        return (self.extract(recon), *(state or ()))[: self.buffer]

    def compress_inter(
        self, x: Tensor, state: tuple[Tensor, ...], offset_levels: Sequence[int],
        residual_levels: Sequence[int], deadzones: Sequence[float] = (ROUNDING,),
        refinement: Refinement | None = None, lead_latent: Tensor | None = None,
        skip_residual: bool = False, predict_lead: bool = False,
    ) -> Iterator[InterCandidate]:
        """Code padded frame ``x`` against the reference buffer ``state``: one candidate per
        offsets level, feature-residual level and dead zone (features extracted once), with
        ``skip_residual`` also one per offsets level without a residual, each with its
        reconstruction when there are several (yielded one by one). With
        ``refinement`` the offsets latent is refined per level for the frame rebuilt from
        the compensated features, as the alignment warm-up trains it
        (:meth:`GainedHyperprior.refine`); ``lead_latent`` (a candidate's, passed without
        ``refinement``) is coded as given instead of estimating one. ``predict_lead`` changes
        nothing: the offsets are coded directly (the state keeps no previous offsets)."""
        shape = latent_shape(x.shape[-2], x.shape[-1])
        several = candidate_count(offset_levels, residual_levels, deadzones, skip_residual) > 1
        current = self.extract(x)
        offsets = (lead_latent if lead_latent is not None
                   else self.o_a(self._predict(current, state)))
        residual_synthesis = fast_copy(self.r_s) if several else self.r_s
        for offset_level in offset_levels:
            latent = offsets
            if refinement is not None:
                latent = self.offset_prior.refine(
                    offsets, offset_level,
                    lambda o_hat: self.reconstruct(self.compensate(state[0], self.o_s(o_hat))),
                    x, refinement)
            o_code, o_hat = self.offset_prior.compress(latent, offset_level)
            prediction = self.compensate(state[0], self.o_s(o_hat))
            yield from residual_candidates(
                self.residual_prior,
                self.r_a(current - prediction) if residual_levels else None, residual_levels,
                deadzones, o_code, offset_level, latent, shape,
                (lambda r_hat, p=prediction: self._fused_frame(p + residual_synthesis(r_hat), state)
                 .clamp(0.0, 1.0)) if several else None, skip_residual)

    def decompress_inter(
        self, payload: bytes, state: tuple[Tensor, ...], offset_level: int,
        residual_level: int | None, lead_predicted: bool = False, lead_global: bool = False,
        lead_grid: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Decode a :meth:`compress_inter` payload against the same reference buffer (a skip
        payload, offsets only, where ``residual_level`` is ``None``): ``(frame, offsets
        latent)``."""
        if lead_predicted:
            raise BitstreamError("an FVC P frame claims offsets predicted from the previous "
                                 "frame's (FVC codes its offsets directly)")
        if lead_global or lead_grid:
            raise BitstreamError("an FVC P frame claims a global motion model (FVC codes "
                                 "offsets)")
        h, w = (4 * size for size in state[0].shape[-2:])
        codes = unpack_payload(payload, h, w, 1 if residual_level is None else 2)
        size = (h // LATENT_STRIDE, w // LATENT_STRIDE)
        o_hat = self.offset_prior.decompress(codes[0], size, offset_level)
        prediction = self.compensate(state[0], self.o_s(o_hat))
        r_hat = (self.residual_prior.zeros(size) if residual_level is None
                 else self.residual_prior.decompress(codes[1], size, residual_level))
        return self._fused_frame(prediction + self.r_s(r_hat), state).clamp(0.0, 1.0), o_hat
