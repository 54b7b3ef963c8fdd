"""Decoder-side ViSTRA restoration (Afonso, Zhang, Bull, TCSVT 2019) of decoded frames::

    restorer = LearnedRestorer()
    restorer.full_size_bytes(frame, target)   # drop-in for restore.full_size_bytes
    restorer.restore_frames(frames, target)   # drop-in for restore.restore_frames
    restorer.interpolate(prev, next, w, h)    # middle picture of two packed yuv420p frames

The up-sampler upscales luma with a CNN; chroma is upscaled bicubically (swscale, what
``restore.full_size_bytes`` does). Scales without registered weights fall back to bicubic.
``restore_frames`` fills a single missing slot between two decoded frames (a half-rate
GOP) with the learned interpolator instead of repeating the previous frame; longer gaps
and the slots after the last frame are still filled by repetition. Chroma of an
interpolated frame is warped with the luma motion (halved) and blended with the same mask.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from fractions import Fraction
from typing import Any

import numpy as np

from gopflow.precoders import restore as plain
from gopflow.precoders.inference import (
    LAYOUT,
    MODEL_CACHE,
    default_threads,
    plane_array,
    split_420,
    to_tensor,
    to_uint8,
    torch_settings,
)
from gopflow.precoders.resample import SCALES, scaled_size
from gopflow.precoders.restore import RestoreTarget, restore_frames
from gopflow.zoo.registry import INTERPOLATOR_NAME, has_model, upsampler_name


def scale_between(width: int, height: int, target_w: int, target_h: int) -> Fraction | None:
    """The scale in :data:`SCALES` whose ``scaled_size`` of the target is ``width x height``."""
    for scale in SCALES:
        if scale != 1 and scaled_size(target_w, target_h, scale) == (width, height):
            return scale
    return None


class LearnedRestorer:
    """Decoder-side ViSTRA restoration with the learned up-sampler and interpolator."""

    def __init__(
        self,
        threads: int | None = None,
        spatial: bool = True,
        temporal: bool = True,
        registry_dir: str | None = None,
    ) -> None:
        self.threads = threads or default_threads()
        self.spatial, self.temporal = spatial, temporal
        self.registry_dir = registry_dir

    # -- models ------------------------------------------------------------------------
    def upsampler(self, scale: Fraction) -> Any | None:
        """The registered up-sampler for ``scale``, or ``None`` (bicubic fallback)."""
        name = upsampler_name(scale)
        if not self.spatial or not has_model(name, self.registry_dir):
            return None
        return MODEL_CACHE.get(name, self.registry_dir)

    def interpolator(self) -> Any | None:
        if not self.temporal or not has_model(INTERPOLATOR_NAME, self.registry_dir):
            return None
        return MODEL_CACHE.get(INTERPOLATOR_NAME, self.registry_dir)

    # -- spatial -----------------------------------------------------------------------
    def full_size_bytes(self, frame: Any, target: RestoreTarget) -> bytes:
        """Like :func:`gopflow.precoders.restore.full_size_bytes`, with learned luma for a
        down-scaled frame whose scale has an up-sampler."""
        scale = scale_between(frame.width, frame.height, target.width, target.height)
        if (
            scale is None
            or target.pix_fmt != "yuv420p"
            or LAYOUT.get(frame.format.name, frame.format.name) != "yuv420p"
        ):
            return plain.full_size_bytes(frame, target)
        model = self.upsampler(scale)
        if model is None:
            return plain.full_size_bytes(frame, target)
        with torch_settings(self.threads):
            luma = to_uint8(model(to_tensor(plane_array(frame, 0)),
                                   (target.height, target.width)))
        big = frame.reformat(width=target.width, height=target.height, interpolation="BICUBIC")
        return b"".join([luma.tobytes(), *(plane_array(big, i).tobytes() for i in (1, 2))])

    # -- temporal ----------------------------------------------------------------------
    def interpolate(self, prev: bytes, next_: bytes, width: int, height: int) -> bytes:
        """The picture half-way between two packed yuv420p frames of the same size."""
        import torch

        from gopflow.precoders.vistra.net import warp

        ya, ua, va = split_420(prev, width, height)
        yb, ub, vb = split_420(next_, width, height)
        model = self.interpolator()
        if model is None:  # no weights: the plain average
            pairs = ((ya, yb), (ua, ub), (va, vb))
            return b"".join(
                ((pa.astype(np.uint16) + pb + 1) // 2).astype(np.uint8).tobytes()
                for pa, pb in pairs
            )
        with torch_settings(self.threads):
            a, b = to_tensor(ya), to_tensor(yb)
            flow, mask, residual = model.motion(a, b)
            luma = mask * warp(a, -flow) + (1 - mask) * warp(b, flow) + residual
            size = ua.shape
            # Chroma: the same motion at half resolution (4:2:0), the same blend mask.
            flow_c = torch.nn.functional.interpolate(
                flow, size=size, mode="bilinear", align_corners=False
            ) * torch.tensor([size[1] / width, size[0] / height]).view(1, 2, 1, 1)
            mask_c = torch.nn.functional.interpolate(
                mask, size=size, mode="bilinear", align_corners=False
            )
            planes = [to_uint8(luma)]
            for pa, pb in ((ua, ub), (va, vb)):
                ta, tb = to_tensor(pa), to_tensor(pb)
                mixed = mask_c * warp(ta, -flow_c) + (1 - mask_c) * warp(tb, flow_c)
                planes.append(to_uint8(mixed))
        return b"".join(p.tobytes() for p in planes)

    def restore_frames(self, frames: Iterable[Any], target: RestoreTarget) -> Iterator[bytes]:
        """Exactly ``target.frame_count`` full-size frames from decoded ``frames`` (the
        contract of :func:`gopflow.precoders.restore.restore_frames`); a single missing
        slot between two decoded frames is interpolated, not repeated."""
        learned_time = self.temporal and target.pix_fmt == "yuv420p"
        return restore_frames(
            frames,
            target,
            full_size=self.full_size_bytes,
            interpolate=(
                (lambda prev, nxt: self.interpolate(prev, nxt, target.width, target.height))
                if learned_time
                else None
            ),
        )
