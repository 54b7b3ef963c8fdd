"""ViSTRA spatio-temporal resolution adaptation (Afonso, Zhang, Bull, TCSVT 2019).

Data flow: QRO decides per GOP the spatial scale and frame-rate halving (encoder side,
:mod:`gopflow.precoders.resample`) -> x264/x265 -> :class:`LearnedRestorer` at the decoder
(:class:`~gopflow.precoders.vistra.net.Upsampler` for the resolution,
:class:`~gopflow.precoders.vistra.net.FrameInterpolator` for the frame rate).
"""

from gopflow.precoders.vistra.net import FrameInterpolator, Upsampler, warp
from gopflow.precoders.vistra.restorer import LearnedRestorer, scale_between

__all__ = ["FrameInterpolator", "LearnedRestorer", "Upsampler", "scale_between", "warp"]
