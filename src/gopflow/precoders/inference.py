"""Plumbing shared by the learned precoders' PyAV/numpy-facing wrappers.

The wrappers themselves: :class:`gopflow.precoders.dvp.DvpPrecoder` (encoder side) and
:class:`gopflow.precoders.vistra.LearnedRestorer` (decoder side). Here: the torch thread
count and deterministic-inference context, 8-bit plane access, tensor conversion and a
per-process cache of verified models.

Everything runs batch-free on the CPU with an explicit torch thread count (Ray workers run
with ``OMP_NUM_THREADS=1``; the default here is 1, see :func:`default_threads`) and
deterministic algorithms: the same input and thread count give the same bytes. Only 8-bit
4:2:0 output is supported on the learned path (``yuv420p``; JPEG-range ``yuvj420p`` sources
keep their samples, as :func:`gopflow.media.reader.frame_bytes` does); other targets use the
plain path.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import numpy as np

from gopflow.errors import FrameCountError, UsageError
from gopflow.zoo.registry import load_model

# JPEG-range twins share the planes' layout (the range is signalled, not converted).
LAYOUT = {"yuv420p": "yuv420p", "yuvj420p": "yuv420p"}
_LOCK = threading.Lock()


def default_threads() -> int:
    """Torch threads for one precoding call: ``$GOPFLOW_TORCH_THREADS``, else 1.

    One thread per worker is the right default under GOP parallelism (a worker per core):
    on a 2-core machine whose other core is busy, 2 torch threads run the 720p downscaler
    several times *slower* than 1 (OpenMP threads wait on a descheduled peer). Pass
    ``threads`` when a worker owns more cores.
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
    if frame.format.name in LAYOUT:
        return frame
    return frame.reformat(format="yuv420p")


def luma_array(frame: Any) -> np.ndarray:
    """The 8-bit luma plane of any decoded frame (converted to yuv420p when it is not)."""
    return plane_array(as_420(frame), 0)


def to_tensor(plane: np.ndarray) -> Any:
    import torch

    # astype copies: frame planes are read-only buffers, torch wants writable memory.
    return torch.from_numpy(plane.astype(np.float32)).div_(255.0)[None, None]


def to_uint8(tensor: Any) -> np.ndarray:
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


def parse_scale(scale: Fraction | str) -> Fraction:
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
                # The precoder networks register their architectures when imported.
                import gopflow.precoders.dvp.net
                import gopflow.precoders.vistra.net  # noqa: F401

                self._models[key] = load_model(name, directory)
            return self._models[key]


MODEL_CACHE = _ModelCache()
