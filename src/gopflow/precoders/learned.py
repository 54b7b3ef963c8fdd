"""PyAV/numpy-facing wrappers of the learned precoders, as the pipeline uses them.

Encoder side, Deep Video Precoding (arXiv 1908.00812)::

    precoder = DvpPrecoder(Fraction(3, 4))
    packed = precoder.down(frame)        # yuv420p bytes at scaled_size(W, H, 3/4)

Luma goes through the learned downscaler; chroma is resampled with swscale's Lanczos (as
the plain path, :func:`gopflow.precoders.resample.down_filters`, does): the learned models
are trained on luma only, where the detail (and the bits) are.

Decoder side, ViSTRA (Afonso, Zhang, Bull, TCSVT 2019)::

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

Everything runs batch-free on the CPU with an explicit torch thread count (Ray workers run
with ``OMP_NUM_THREADS=1``; the default here is 1, see :func:`default_threads`) and deterministic
algorithms: the same input and thread count give the same bytes. Only 8-bit 4:2:0 output
is supported on the learned path (``yuv420p``; JPEG-range ``yuvj420p`` sources keep their
samples, as :func:`gopflow.media.reader.frame_bytes` does); other targets use the plain path.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator
from fractions import Fraction
from typing import Any

import numpy as np

from gopflow.errors import FrameCountError, UsageError
from gopflow.precoders import restore as plain
from gopflow.precoders.resample import SCALES, scaled_size
from gopflow.precoders.restore import RestoreTarget, restore_frames
from gopflow.precoders.weights import (
    INTERPOLATOR_NAME,
    dvp_name,
    has_model,
    load_model,
    upsampler_name,
)

# JPEG-range twins share the planes' layout (the range is signalled, not converted).
_LAYOUT = {"yuv420p": "yuv420p", "yuvj420p": "yuv420p"}
_LOCK = threading.Lock()


def default_threads() -> int:
    """Torch threads for one precoding call: ``$GOPFLOW_TORCH_THREADS``, else 1.

    One thread per worker is the right default under GOP parallelism (a worker per core):
    on this 2-core machine, with the other core busy, 2 torch threads made the 720p
    downscaler 5-20x *slower* (OpenMP threads waiting on a descheduled peer), while 1
    thread runs it at 35-70 fps. Pass ``threads`` when a worker owns more cores.
    """
    env = os.environ.get("GOPFLOW_TORCH_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise UsageError(f"GOPFLOW_TORCH_THREADS={env!r} is not an integer") from None
    return 1


@contextlib.contextmanager
def torch_settings(threads: int) -> Iterator[None]:
    """Inference with ``threads`` torch threads and deterministic algorithms, restored after."""
    import torch

    previous = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if previous != threads:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        if previous != threads:
            torch.set_num_threads(previous)


def plane_array(frame: Any, index: int) -> np.ndarray:
    """Plane ``index`` of an 8-bit frame as a ``height x width`` uint8 array (a view)."""
    plane = frame.planes[index]
    rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
    return rows[:, : plane.width]


def as_420(frame: Any) -> Any:
    """``frame`` itself when its planes are 8-bit 4:2:0 (incl. JPEG range), else converted."""
    if frame.format.name in _LAYOUT:
        return frame
    return frame.reformat(format="yuv420p")


def luma_array(frame: Any) -> np.ndarray:
    """The 8-bit luma plane of any decoded frame (converted to yuv420p when it is not)."""
    return plane_array(as_420(frame), 0)


def _to_tensor(plane: np.ndarray) -> Any:
    import torch

    # astype copies: frame planes are read-only buffers, torch wants writable memory.
    return torch.from_numpy(plane.astype(np.float32)).div_(255.0)[None, None]


def _to_uint8(tensor: Any) -> np.ndarray:
    import torch

    return tensor[0, 0].mul(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8).numpy()


def split_420(data: bytes, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Packed planar yuv420p bytes -> (Y, U, V) arrays."""
    cw, ch = (width + 1) // 2, (height + 1) // 2
    expected = width * height + 2 * cw * ch
    if len(data) != expected:
        raise FrameCountError(
            f"a {width}x{height} yuv420p frame has {expected} bytes, got {len(data)}"
        )
    buf = np.frombuffer(data, np.uint8)
    y = buf[: width * height].reshape(height, width)
    u = buf[width * height : width * height + cw * ch].reshape(ch, cw)
    v = buf[width * height + cw * ch :].reshape(ch, cw)
    return y, u, v


def _parse_scale(scale: Fraction | str) -> Fraction:
    value = Fraction(scale)
    if not 0 < value < 1:
        raise UsageError(f"a learned precoder needs a scale in (0, 1), got {value}")
    return value


class _ModelCache:
    """Models loaded once per process (verified by sha256 on first use), shared by callers."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str | None], Any] = {}

    def get(self, name: str, directory: str | None) -> Any:
        key = (name, directory)
        with _LOCK:
            if key not in self._models:
                self._models[key] = load_model(name, directory)
            return self._models[key]


_CACHE = _ModelCache()


class DvpPrecoder:
    """Encoder-side learned downscaling of decoded frames at one scale (DVP)."""

    def __init__(
        self,
        scale: Fraction | str,
        threads: int | None = None,
        model: Any = None,
        registry_dir: str | None = None,
    ) -> None:
        self.scale = _parse_scale(scale)
        self.threads = threads or default_threads()
        self.model = model if model is not None else _CACHE.get(
            dvp_name(self.scale), registry_dir
        )

    def size(self, width: int, height: int) -> tuple[int, int]:
        """Output ``(width, height)`` for a ``width x height`` source."""
        return scaled_size(width, height, self.scale)

    def down_luma(self, luma: np.ndarray) -> np.ndarray:
        """``height x width`` uint8 luma -> the learned downscale (uint8)."""
        with torch_settings(self.threads):
            return _to_uint8(self.model(_to_tensor(luma)))

    def down(self, frame: Any) -> bytes:
        """Packed planar yuv420p bytes of ``frame`` at the scaled size: learned luma,
        Lanczos (swscale) chroma."""
        source = as_420(frame)
        width, height = self.size(frame.width, frame.height)
        luma = self.down_luma(plane_array(source, 0))
        small = source.reformat(width=width, height=height, interpolation="LANCZOS")
        return b"".join([luma.tobytes(), *(plane_array(small, i).tobytes() for i in (1, 2))])


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
        return _CACHE.get(name, self.registry_dir)

    def interpolator(self) -> Any | None:
        if not self.temporal or not has_model(INTERPOLATOR_NAME, self.registry_dir):
            return None
        return _CACHE.get(INTERPOLATOR_NAME, self.registry_dir)

    # -- spatial -----------------------------------------------------------------------
    def full_size_bytes(self, frame: Any, target: RestoreTarget) -> bytes:
        """Like :func:`gopflow.precoders.restore.full_size_bytes`, with learned luma for a
        down-scaled frame whose scale has an up-sampler."""
        scale = scale_between(frame.width, frame.height, target.width, target.height)
        if (
            scale is None
            or target.pix_fmt != "yuv420p"
            or _LAYOUT.get(frame.format.name, frame.format.name) != "yuv420p"
        ):
            return plain.full_size_bytes(frame, target)
        model = self.upsampler(scale)
        if model is None:
            return plain.full_size_bytes(frame, target)
        with torch_settings(self.threads):
            luma = _to_uint8(model(_to_tensor(plane_array(frame, 0)),
                                   (target.height, target.width)))
        big = frame.reformat(width=target.width, height=target.height, interpolation="BICUBIC")
        return b"".join([luma.tobytes(), *(plane_array(big, i).tobytes() for i in (1, 2))])

    # -- temporal ----------------------------------------------------------------------
    def interpolate(self, prev: bytes, next_: bytes, width: int, height: int) -> bytes:
        """The picture half-way between two packed yuv420p frames of the same size."""
        import torch

        from gopflow.precoders.nets import warp

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
            a, b = _to_tensor(ya), _to_tensor(yb)
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
            planes = [_to_uint8(luma)]
            for pa, pb in ((ua, ub), (va, vb)):
                ta, tb = _to_tensor(pa), _to_tensor(pb)
                mixed = mask_c * warp(ta, -flow_c) + (1 - mask_c) * warp(tb, flow_c)
                planes.append(_to_uint8(mixed))
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
