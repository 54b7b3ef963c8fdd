"""DVC inter codec after Lu et al., CVPR 2019 ("DVC: An End-to-end Deep Video Compression
Framework").

Steps per P frame: a small SpyNet-like pyramid network corrects OpenCV's DIS optical flow
from the current frame to the decoded reference; the flow is coded by a motion auto-encoder
with the gained scale hyperprior; the reference is warped backwards with the decoded flow
(``grid_sample``); a small U-Net motion-compensation network refines the warped frame from
(warped, reference, flow); the residual is coded by a second hyperprior auto-encoder. Loss
``R + lmbda * 255^2 * D``. Sized for the CPU: the pyramid works from half resolution, all
channel counts are small. An encoder may code a frame's motion as one global (affine) motion
model instead of the motion latent, alone or with a coarse grid of corrections
(:meth:`DvcCodec.compress_global`; after AV1's global motion and control grid interpolation,
:mod:`gopflow.codecs.dvc.global_motion`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from compressai.models import CompressionModel
from compressai.models.utils import conv, deconv
from torch import Tensor, nn

from gopflow.codecs.dvc.global_motion import (
    GRID_BLOCKS,
    GlobalMotion,
    GridMotion,
    fit_global_motion,
    fit_motion_grid,
    read_global_motion,
    refine_global_motion,
)
from gopflow.codecs.learned.api import InterCandidate, candidate_count
from gopflow.codecs.learned.bitstream import BitstreamError
from gopflow.codecs.learned.hyperprior import ROUNDING, GainedHyperprior, Refinement
from gopflow.codecs.learned.intra import (
    LATENT_STRIDE,
    MULTIPLE,
    analysis,
    fast_copy,
    latent_shape,
    rd_loss,
    residual_candidates,
    synthesis,
    unpack_payload,
)


@dataclass(frozen=True)
class DvcReference:
    """DVC's decoder state between frames: the last decoded frame (``1 x 3 x H x W``) and the
    motion latent it was decoded with (``None`` where it was an intra frame)."""

    frame: Tensor
    motion: Tensor | None


def backward_warp(image: Tensor, flow: Tensor) -> Tensor:
    """Sample ``image`` at ``(x + u, y + v)`` (flow in pixels, bilinear, border padding)."""
    n, _, h, w = image.shape
    ys = torch.linspace(-1.0, 1.0, h, dtype=image.dtype)
    xs = torch.linspace(-1.0, 1.0, w, dtype=image.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    scale_x = 2.0 / max(w - 1, 1)
    scale_y = 2.0 / max(h - 1, 1)
    grid = torch.stack(
        (grid_x[None] + flow[:, 0] * scale_x, grid_y[None] + flow[:, 1] * scale_y), dim=-1)
    return F.grid_sample(image, grid.expand(n, h, w, 2), mode="bilinear",
                         padding_mode="border", align_corners=True)


def dis_flow(current: Tensor, reference: Tensor) -> Tensor:
    """OpenCV's DIS optical flow (Kroeger et al. 2016) on the 8-bit luma of each sample, in
    :func:`backward_warp`'s convention (``reference`` sampled at ``p + flow(p)`` matches
    ``current``). DVC starts its flow network from a SpyNet pre-trained on flow datasets;
    there is none here, and trained from scratch on a CPU the small pyramid network learns
    no motion at all, so DIS gives the starting flow that the pyramid network corrects (and
    the warm-up's teacher). Encoder side only: the decoder reads the coded flow, so this
    changes nothing a decoder must reproduce (one OpenCV thread keeps encodes repeatable)."""
    import cv2

    cv2.setNumThreads(1)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    luma_weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)

    def luma(frames: Tensor) -> np.ndarray:
        y = (frames.detach().float() * luma_weights).sum(dim=1) * 255.0
        return y.round().clamp(0, 255).to(torch.uint8).numpy()

    flows = [dis.calc(cur, ref, None)
             for cur, ref in zip(luma(current), luma(reference), strict=True)]
    return torch.from_numpy(np.stack(flows)).permute(0, 3, 1, 2).to(current.dtype)


class PyramidFlow(nn.Module):
    """Coarse-to-fine flow (after SpyNet, Ranjan and Black 2017): at each pyramid level a
    small CNN refines the up-sampled flow from (current, warped reference, flow); with an
    initial flow (:func:`dis_flow`) it learns a correction to that flow instead."""

    def __init__(self, channels: int = 24, levels: int = 4) -> None:
        super().__init__()
        self.levels = levels
        self.nets = nn.ModuleList(
            nn.Sequential(
                conv(8, channels, 3, 1), nn.ReLU(inplace=True),
                conv(channels, channels, 3, 1), nn.ReLU(inplace=True),
                conv(channels, channels // 2, 3, 1), nn.ReLU(inplace=True),
                conv(channels // 2, 2, 3, 1),
            )
            for _ in range(levels)
        )

    def forward(
        self, current: Tensor, reference: Tensor, initial: Tensor | None = None
    ) -> Tensor:
        """Flow (pixels, full resolution) such that ``warp(reference, flow) ~ current``:
        ``initial`` (zero if None) plus the up-sampled correction the levels add to it."""
        cur = [F.avg_pool2d(current, 2)]
        ref = [F.avg_pool2d(reference, 2)]
        for _ in range(self.levels - 1):
            cur.append(F.avg_pool2d(cur[-1], 2))
            ref.append(F.avg_pool2d(ref[-1], 2))
        if initial is None:
            initial = torch.zeros_like(current[:, :2])
        starts = [F.avg_pool2d(initial, 2) / 2.0]  # in each level's pixels
        for _ in range(self.levels - 1):
            starts.append(F.avg_pool2d(starts[-1], 2) / 2.0)
        correction = torch.zeros_like(starts[-1])
        for level in reversed(range(self.levels)):
            if level != self.levels - 1:
                correction = 2.0 * F.interpolate(correction, scale_factor=2, mode="bilinear",
                                                 align_corners=False)
            flow = starts[level] + correction
            warped = backward_warp(ref[level], flow)
            correction = correction + self.nets[level](
                torch.cat((cur[level], warped, flow), dim=1))
        return initial + 2.0 * F.interpolate(correction, scale_factor=2, mode="bilinear",
                                             align_corners=False)


class MotionCompensation(nn.Module):
    """DVC's motion-compensation network: a small U-Net refining the warped frame."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        c = channels
        self.down1 = nn.Sequential(conv(8, c, 3, 2), nn.ReLU(inplace=True))
        self.down2 = nn.Sequential(conv(c, 2 * c, 3, 2), nn.ReLU(inplace=True),
                                   conv(2 * c, 2 * c, 3, 1), nn.ReLU(inplace=True))
        self.up2 = nn.Sequential(deconv(2 * c, c, 3, 2), nn.ReLU(inplace=True))
        self.up1 = deconv(c, 3, 3, 2)

    def forward(self, warped: Tensor, reference: Tensor, flow: Tensor) -> Tensor:
        e1 = self.down1(torch.cat((warped, reference, flow / 16.0), dim=1))
        d2 = self.up2(self.down2(e1)) + e1
        return warped + self.up1(d2)


class DvcCodec(CompressionModel):
    """DVC: flow estimation, motion auto-encoder, warping plus MC net, residual auto-encoder."""

    stages: tuple[str, ...] = ("motion", "rd")
    fine_tune_stages: tuple[str, ...] = ("residual",)
    frames_per_sample = 2
    multiple = MULTIPLE

    def __init__(
        self, flow_channels: int = 24, flow_levels: int = 4, motion_channels: int = 48,
        motion_latent: int = 64, residual_channels: int = 64, residual_latent: int = 96,
        hyper_channels: int = 48, mc_channels: int = 32, levels: int = 4,
        flow_init: str = "dis",
    ) -> None:
        super().__init__()
        if flow_init not in ("dis", "none"):
            raise ValueError(f"flow_init must be 'dis' or 'none', got {flow_init!r}")
        self.flow_init = flow_init
        self._arch = {"flow_init": flow_init,
            "flow_channels": flow_channels, "flow_levels": flow_levels,
            "motion_channels": motion_channels, "motion_latent": motion_latent,
            "residual_channels": residual_channels, "residual_latent": residual_latent,
            "hyper_channels": hyper_channels, "mc_channels": mc_channels, "levels": levels,
        }
        self.levels = levels
        self.flow = PyramidFlow(flow_channels, flow_levels)
        self.m_a = analysis(2, motion_channels, motion_latent)
        self.m_s = synthesis(motion_latent, motion_channels, 2)
        self.motion_prior = GainedHyperprior(motion_latent, hyper_channels, levels)
        self.mc = MotionCompensation(mc_channels)
        self.r_a = analysis(3, residual_channels, residual_latent)
        self.r_s = synthesis(residual_latent, residual_channels, 3)
        self.residual_prior = GainedHyperprior(residual_latent, hyper_channels, levels)

    def frozen_modules(self, stage: str) -> tuple[str, ...]:
        """The ``"residual"`` fine-tune freezes the motion estimation and coding path (its
        entropy tables too, so motion bits stay as they were) and trains the compensation
        network with the residual coder; other stages train everything."""
        return ("flow", "m_a", "m_s", "motion_prior") if stage == "residual" else ()

    def arch(self) -> dict[str, Any]:
        """JSON description the weights registry rebuilds this model from."""
        return {"class": type(self).__name__, **self._arch}

    def forward(self, x: Tensor, reference: Tensor, level: Tensor) -> tuple[Tensor, Tensor]:
        """Training pass for one frame: ``(x_hat, bits per sample)``."""
        m_hat, bits = self.motion_prior(self.m_a(self.estimate_flow(x, reference)), level)
        flow_hat = self.m_s(m_hat)
        warped = backward_warp(reference, flow_hat)
        prediction = self.mc(warped, reference, flow_hat)
        r_hat, r_bits = self.residual_prior(self.r_a(x - prediction), level)
        return prediction + self.r_s(r_hat), bits + r_bits

    def training_loss(
        self, reference: Tensor, frames: Tensor, level: Tensor, lmbda: Tensor, stage: str
    ) -> tuple[Tensor, dict[str, float]]:
        """Frames coded in order, each decoded frame the next reference; mean over frames.
        Stage ``"motion"``: see :meth:`motion_warm_up_loss`; ``"residual"``: see
        :meth:`residual_loss`."""
        if stage not in self.stages + self.fine_tune_stages:
            raise ValueError(f"DvcCodec has no training stage {stage!r}")
        losses, totals = [], {}
        for t in range(frames.shape[1]):
            x = frames[:, t]
            if stage == "motion":
                x_hat, loss, metrics = self.motion_warm_up_loss(x, reference, level, lmbda)
            elif stage == "residual":
                x_hat, loss, metrics = self.residual_loss(x, reference, level, lmbda)
            else:
                x_hat, bits = self(x, reference, level)
                loss, metrics = rd_loss(x, x_hat, bits, lmbda)
            losses.append(loss)
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value / frames.shape[1]
            reference = x if stage == "motion" else x_hat.clamp(0.0, 1.0)
        return torch.stack(losses).mean(), totals

    def residual_loss(
        self, x: Tensor, reference: Tensor, level: Tensor, lmbda: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, float]]:
        """The residual fine-tune for one frame: flow estimation and the motion coder run
        frozen, without gradients; the compensation network, the residual auto-encoder and
        its hyperprior learn, on ``R_residual + lambda * 255^2 * MSE`` (the motion bits do
        not depend on them; ``bpp`` counts the residual alone). The motion path already
        settled in the joint stage; the residual coder carries most of a P frame's bits
        at the higher qualities, and the compensation network, which the earlier stages
        train on the motion latent's flows alone, learns the grid's. Each sample's
        prediction is the closer (in MSE) of the motion latent's and the grid motion's
        (:meth:`grid_flow`), as the encoder with ``--rdo`` codes most P frames with the
        grid, so the network must refine both kinds of prediction. ``metrics["grid"]`` is
        the share of samples that took the grid. Returns ``(decoded frame, loss, metrics)``."""
        with torch.no_grad():
            m_hat, _ = self.motion_prior(self.m_a(self.estimate_flow(x, reference)), level)
            latent_flow = self.m_s(m_hat)
            grid_flow = self.grid_flow(x, reference)
        latent = self._compensate(reference, latent_flow)
        grid = self._compensate(reference, grid_flow)
        with torch.no_grad():
            closer = (torch.mean((grid - x) ** 2, dim=(1, 2, 3))
                      < torch.mean((latent - x) ** 2, dim=(1, 2, 3)))
        prediction = torch.where(closer[:, None, None, None], grid, latent)
        r_hat, bits = self.residual_prior(self.r_a(x - prediction), level)
        x_hat = prediction + self.r_s(r_hat)
        loss, metrics = rd_loss(x, x_hat, bits, lmbda)
        metrics["grid"] = float(closer.float().mean())
        return x_hat.detach(), loss, metrics

    def grid_prediction(self, x: Tensor, reference: Tensor) -> Tensor:
        """The compensated prediction of each sample from :meth:`grid_flow`."""
        return self._compensate(reference, self.grid_flow(x, reference))

    def grid_flow(self, x: Tensor, reference: Tensor) -> Tensor:
        """The flow of each sample's global motion model with its (last) correction grid,
        fitted as :meth:`compress_global` fits them (quantised; training side of the
        ``residual`` stage)."""
        return torch.cat([self.fit_global_motions(target, frame)[-1].flow(*target.shape[-2:])
                          for target, frame in zip(x.split(1), reference.split(1), strict=True)])

    @staticmethod
    def fit_global_motions(
        x: Tensor, reference: Tensor, rate_lambda: float | None = None
    ) -> list[GlobalMotion | GridMotion]:
        """Encoder side, one frame: the affine model fitted to :func:`dis_flow` and refined
        for the warp, then that model with a correction grid per :data:`.GRID_BLOCKS`
        (rate-aware for ``rate_lambda``: :func:`.fit_motion_grid`)."""
        dense = dis_flow(x, reference)
        affine = refine_global_motion(fit_global_motion(dense), reference, x, backward_warp)
        return [affine] + [fit_motion_grid(affine, dense, reference, x, backward_warp, block,
                                           rate_lambda=rate_lambda)
                           for block in GRID_BLOCKS]

    def motion_warm_up_loss(
        self, x: Tensor, reference: Tensor, level: Tensor, lmbda: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, float]]:
        """DVC's flow warm-up for one frame: motion rate plus the distortion of the reference
        warped with the decoded flow, plus that of the reference warped with the uncoded flow.
        The last term trains the flow network directly, and so does the mean end-point
        error (pixels) to :func:`dis_flow`: the motion path cannot settle on coding no
        motion at all before the joint stage. Returns ``(coded warp, loss, metrics)``."""
        teacher = dis_flow(x, reference)
        flow = self.flow(x, reference, teacher if self.flow_init == "dis" else None)
        m_hat, bits = self.motion_prior(self.m_a(flow), level)
        warped = backward_warp(reference, self.m_s(m_hat))
        loss, metrics = rd_loss(x, warped, bits, lmbda)
        uncoded = torch.mean((backward_warp(reference, flow) - x) ** 2, dim=(1, 2, 3))
        end_point = torch.linalg.vector_norm(flow - teacher, dim=1).mean()
        metrics["flow_epe"] = float(end_point.detach())
        return warped, loss + torch.mean(lmbda * 255.0**2 * uncoded) + end_point, metrics

    def estimate_flow(self, x: Tensor, reference: Tensor) -> Tensor:
        """Encoder-side motion estimation: the pyramid network, from :func:`dis_flow`
        unless the model was built with ``flow_init="none"``."""
        initial = dis_flow(x, reference) if self.flow_init == "dis" else None
        return self.flow(x, reference, initial)

    def _prediction(self, reference: Tensor, m_hat: Tensor) -> Tensor:
        return self._compensate(reference, self.m_s(m_hat))

    def _compensate(self, reference: Tensor, flow: Tensor) -> Tensor:
        return self.mc(backward_warp(reference, flow), reference, flow)

    def next_state(
        self, state: Any, recon: Tensor, lead_hat: Tensor | None = None
    ) -> DvcReference:
        """The decoder state: the last decoded frame and the motion latent it was decoded
        with (``None`` after an intra frame)."""
        return DvcReference(recon, lead_hat)

    def compress_inter(
        self, x: Tensor, state: DvcReference, motion_levels: Sequence[int],
        residual_levels: Sequence[int], deadzones: Sequence[float] = (ROUNDING,),
        refinement: Refinement | None = None, lead_latent: Tensor | None = None,
        skip_residual: bool = False, predict_lead: bool = False,
    ) -> Iterator[InterCandidate]:
        """Code padded frame ``x`` against the decoded reference ``state``: one candidate per
        motion level, residual level and residual dead zone (the flow estimated once; see
        :meth:`GainedHyperprior.compress`), with ``skip_residual`` also one per motion level
        without a residual, each with its reconstruction when there are several (yielded
        one by one: memory holds one candidate's frame). With ``predict_lead``, where the
        reference was itself a P frame, the motion latent is coded as its difference from
        that frame's decoded motion latent (slow drift and pans keep their motion from
        frame to frame; as H.264 codes motion vectors as differences from a prediction).
        With ``refinement`` the coded latent is refined per motion level for the reference
        warped by its decoded flow (:meth:`GainedHyperprior.refine`: the motion
        auto-encoder shrinks the flow it carries); ``lead_latent`` (a candidate's, passed
        without ``refinement``) is coded as given instead of estimating one."""
        shape = latent_shape(x.shape[-2], x.shape[-1])
        several = candidate_count(motion_levels, residual_levels, deadzones, skip_residual) > 1
        reference = state.frame
        base = state.motion if predict_lead else None
        if lead_latent is not None:
            coded = lead_latent
        else:
            coded = self.m_a(self.estimate_flow(x, reference))
            if base is not None:
                coded = coded - base

        def motion_of(coded_hat: Tensor) -> Tensor:
            return coded_hat if base is None else base + coded_hat

        residual_synthesis = fast_copy(self.r_s) if several else self.r_s
        for motion_level in motion_levels:
            latent = coded
            if refinement is not None:
                latent = self.motion_prior.refine(
                    coded, motion_level,
                    lambda c_hat: backward_warp(reference, self.m_s(motion_of(c_hat))),
                    x, refinement)
            m_code, coded_hat = self.motion_prior.compress(latent, motion_level)
            prediction = self._prediction(reference, motion_of(coded_hat))
            yield from residual_candidates(
                self.residual_prior, self.r_a(x - prediction) if residual_levels else None,
                residual_levels, deadzones, m_code, motion_level, latent, shape,
                (lambda r_hat, p=prediction: (p + residual_synthesis(r_hat)).clamp(0.0, 1.0))
                if several else None, skip_residual, base is not None)

    def compress_global(
        self, x: Tensor, state: DvcReference, lead_level: int, residual_levels: Sequence[int],
        deadzones: Sequence[float] = (ROUNDING,), skip_residual: bool = False,
        motion: GlobalMotion | GridMotion | None = None, rate_lambda: float | None = None,
    ) -> Iterator[InterCandidate]:
        """Code padded frame ``x`` with a global motion model in place of the motion latent:
        for the affine model alone and again for it with a correction grid
        (:class:`.GridMotion`), one candidate per residual level and dead zone, and with
        ``skip_residual`` one without a residual (the model alone: 12 bytes, or the grid's
        few hundred), each with its reconstruction when there are several. The models are
        fitted to :func:`dis_flow` and refined for the warp (encoder side;
        :mod:`.global_motion`) unless ``motion`` (a candidate's ``lead_latent``) is given:
        then that one alone; the grids are fitted rate-aware for ``rate_lambda``, the
        frame's lambda. ``lead_level`` is only recorded (the unit's level byte must name a
        valid level)."""
        reference = state.frame
        motions = (self.fit_global_motions(x, reference, rate_lambda) if motion is None
                   else [motion])
        several = candidate_count(
            (), residual_levels, deadzones, skip_residual, len(motions)) > 1
        residual_synthesis = fast_copy(self.r_s) if several else self.r_s
        for candidate in motions:
            prediction = self._compensate(reference, candidate.flow(*x.shape[-2:]))
            yield from residual_candidates(
                self.residual_prior, self.r_a(x - prediction) if residual_levels else None,
                residual_levels, deadzones, candidate.to_bytes(), lead_level, candidate,
                latent_shape(x.shape[-2], x.shape[-1]),
                (lambda r_hat, p=prediction: (p + residual_synthesis(r_hat)).clamp(0.0, 1.0))
                if several else None, skip_residual, lead_grid=isinstance(candidate, GridMotion))

    def decompress_inter(
        self, payload: bytes, state: DvcReference, motion_level: int,
        residual_level: int | None, lead_predicted: bool = False, lead_global: bool = False,
        lead_grid: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Decode a :meth:`compress_inter` payload against the same reference (a skip
        payload, motion only, where ``residual_level`` is ``None``; a motion difference
        from the reference's motion with ``lead_predicted``), or with ``lead_global`` a
        :meth:`compress_global` payload (its model with a correction grid where
        ``lead_grid``): ``(frame, motion latent)``, the latent ``None`` for a global motion
        frame (a later frame cannot predict its motion from it)."""
        h, w = state.frame.shape[-2:]
        size = (h // LATENT_STRIDE, w // LATENT_STRIDE)
        residuals = 0 if residual_level is None else 1
        m_hat: Tensor | None = None
        if lead_grid and not lead_global:
            raise BitstreamError("a P frame claims a motion grid without a global motion")
        if lead_global:
            if lead_predicted:
                raise BitstreamError("a P frame claims both a global and a predicted motion")
            motion, used = read_global_motion(payload, lead_grid, h, w)
            codes = unpack_payload(payload[used:], h, w, residuals)
            prediction = self._compensate(state.frame, motion.flow(h, w))
        else:
            codes = unpack_payload(payload, h, w, 1 + residuals)
            m_hat = self.motion_prior.decompress(codes.pop(0), size, motion_level)
            if lead_predicted:
                if state.motion is None:
                    raise BitstreamError("a P frame predicts its motion from a frame without "
                                         "any (an intra or a global motion frame)")
                m_hat = state.motion + m_hat
            prediction = self._prediction(state.frame, m_hat)
        r_hat = (self.residual_prior.zeros(size) if residual_level is None
                 else self.residual_prior.decompress(codes[0], size, residual_level))
        return (prediction + self.r_s(r_hat)).clamp(0.0, 1.0), m_hat
