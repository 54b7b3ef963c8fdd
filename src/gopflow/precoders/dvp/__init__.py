"""Deep Video Precoding (Bourtsoulatze, Chadha, ..., Andreopoulos, arXiv 1908.00812).

Data flow: decoded frame -> :class:`DvpPrecoder` (learned luma downscaler
:class:`~gopflow.precoders.dvp.net.DvpDownscaler`, Lanczos chroma) -> x264/x265 at the
chosen scale -> any player's bicubic upscale. Per-GOP mode selection (the scale) is QRO's
job (:mod:`gopflow.qro.stage`, probe or predict).
"""

from gopflow.precoders.dvp.net import DvpDownscaler
from gopflow.precoders.dvp.precoder import DvpPrecoder

__all__ = ["DvpDownscaler", "DvpPrecoder"]
