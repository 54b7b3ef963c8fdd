"""Encoder-side Deep Video Precoding (arXiv 1908.00812) on decoded frames::

    precoder = DvpPrecoder(Fraction(3, 4))
    packed = precoder.down(frame)        # yuv420p bytes at scaled_size(W, H, 3/4)

Luma goes through the learned downscaler; chroma is resampled with swscale's Lanczos (as the
plain path, :func:`gopflow.precoders.resample.down_filters`, does): the learned models are
trained on luma only, where the detail (and the bits) are.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np

from gopflow.precoders.inference import (
    MODEL_CACHE,
    as_420,
    default_threads,
    parse_scale,
    plane_array,
    to_tensor,
    to_uint8,
    torch_settings,
)
from gopflow.precoders.resample import scaled_size
from gopflow.zoo.registry import dvp_name


class DvpPrecoder:
    """Encoder-side learned downscaling of decoded frames at one scale (DVP)."""

    def __init__(
        self,
        scale: Fraction | str,
        threads: int | None = None,
        model: Any = None,
        registry_dir: str | None = None,
    ) -> None:
        self.scale = parse_scale(scale)
        self.threads = threads or default_threads()
        self.model = model if model is not None else MODEL_CACHE.get(
            dvp_name(self.scale), registry_dir
        )

    def size(self, width: int, height: int) -> tuple[int, int]:
        """Output ``(width, height)`` for a ``width x height`` source."""
        return scaled_size(width, height, self.scale)

    def down_luma(self, luma: np.ndarray) -> np.ndarray:
        """``height x width`` uint8 luma -> the learned downscale (uint8)."""
        with torch_settings(self.threads):
            return to_uint8(self.model(to_tensor(luma)))

    def down(self, frame: Any) -> bytes:
        """Packed planar yuv420p bytes of ``frame`` at the scaled size: learned luma,
        Lanczos (swscale) chroma."""
        source = as_420(frame)
        width, height = self.size(frame.width, frame.height)
        luma = self.down_luma(plane_array(source, 0))
        small = source.reformat(width=width, height=height, interpolation="LANCZOS")
        return b"".join([luma.tobytes(), *(plane_array(small, i).tobytes() for i in (1, 2))])
