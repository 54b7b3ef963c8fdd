"""Global motion for DVC P frames: one affine motion model per frame, in 12 bytes.

Data flow: encoder-side dense flow (:func:`~gopflow.codecs.dvc.model.dis_flow`) ->
:func:`fit_global_motion` (robust least squares) -> :func:`refine_global_motion` (Adam on
the warp error) -> :class:`GlobalMotion` (quantised parameters,
:meth:`GlobalMotion.to_bytes`) -> in the stream, in place of the motion latent ->
:meth:`GlobalMotion.flow` on both sides -> DVC's warp and motion compensation.

After AV1's global motion (Chen et al. 2018, "An overview of core coding tools in the AV1
video codec"; and MPEG-4's global motion compensation): a camera pan or zoom moves the whole
frame in a way six numbers describe. DVC's motion auto-encoder carries a smooth pan at
1/16 resolution and still blurs it: on a pan the 12-byte affine model warps closer than a
coded flow of a kilobyte or more.
Written by hand: the model is six numbers and a least-squares fit (numpy), and no library
quantises and serialises it the way a bitstream must.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gopflow.codecs.dvc.grid_coding import decode_grid, encode_grid, rate_proxy
from gopflow.codecs.learned.bitstream import BitstreamError

TRANSLATION_UNITS = 64
"""Translation steps per pixel (1/64 px; int16 keeps +-512 px)."""
MATRIX_UNITS = 1 << 16
"""Steps per unit of the linear part (int16 keeps +-0.5: a zoom or rotation of up to half
the frame's size per frame)."""
FIT_STRIDE = 8
"""Every how many pixels (each way) the flow is sampled for the fit."""
FIT_ROUNDS = 10
"""Iteratively reweighted least-squares rounds."""
FIT_SCALE = 1.0
"""Cauchy weights ``1 / (1 + (miss / FIT_SCALE)^2)`` (miss in pixels): flow vectors that
miss the model by several pixels (moving objects, occlusions, flow errors) barely pull on the
camera's motion, as they would in a plain least-squares fit."""
REFINE_STEPS = 30
"""Adam steps of :func:`refine_global_motion` (about 1 s at 720p on one core)."""
REFINE_STEP = 0.02
"""Its step size, in pixels of the translation and of the linear part's motion at the
frame's edges."""
_PARAMS = struct.Struct(">6h")
SIZE = _PARAMS.size
"""Bytes of a coded :class:`GlobalMotion`."""


@dataclass(frozen=True)
class GlobalMotion:
    """Affine backward flow about the padded frame's centre ``(cx, cy)``, in quantised steps:
    ``u = tx + a (x - cx) + b (y - cy)``, ``v = ty + c (x - cx) + d (y - cy)`` (pixels),
    the translation in :data:`TRANSLATION_UNITS`, ``a..d`` in :data:`MATRIX_UNITS`."""

    tx: int
    ty: int
    a: int
    b: int
    c: int
    d: int

    def to_bytes(self) -> bytes:
        return _PARAMS.pack(self.tx, self.ty, self.a, self.b, self.c, self.d)

    @classmethod
    def from_bytes(cls, data: bytes) -> GlobalMotion:
        if len(data) != SIZE:
            raise BitstreamError(f"a global motion model needs {SIZE} bytes, got {len(data)}")
        return cls(*_PARAMS.unpack(data))

    def flow(self, height: int, width: int) -> Tensor:
        """The model's flow (``1 x 2 x height x width``, pixels, float32), computed in
        float64 so that encoder and decoder get the same field."""
        xs = torch.arange(width, dtype=torch.float64) - (width - 1) / 2.0
        ys = torch.arange(height, dtype=torch.float64) - (height - 1) / 2.0
        t, m = float(TRANSLATION_UNITS), float(MATRIX_UNITS)
        u = self.tx / t + (self.a / m) * xs[None, :] + (self.b / m) * ys[:, None]
        v = self.ty / t + (self.c / m) * xs[None, :] + (self.d / m) * ys[:, None]
        return torch.stack((u, v))[None].to(torch.float32)


def _quantise(value: float, units: int) -> int:
    return int(np.clip(np.round(value * units), -(1 << 15), (1 << 15) - 1))


def fit_global_motion(flow: Tensor) -> GlobalMotion:
    """The affine model closest to a dense flow (``1 x 2 x H x W``, pixels) by a robust
    (Cauchy) least-squares fit, quantised (encoder side only: the decoder reads the model)."""
    _, _, height, width = flow.shape
    sampled = flow[0, :, ::FIT_STRIDE, ::FIT_STRIDE].double().numpy()
    ys, xs = np.mgrid[0:height:FIT_STRIDE, 0:width:FIT_STRIDE].astype(np.float64)
    design = np.stack((np.ones(xs.size), xs.ravel() - (width - 1) / 2.0,
                       ys.ravel() - (height - 1) / 2.0), axis=1)
    u, v = sampled[0].ravel(), sampled[1].ravel()
    weights = np.ones(u.size)
    for _ in range(FIT_ROUNDS):
        root = np.sqrt(weights)[:, None]
        pu = np.linalg.lstsq(design * root, u * root[:, 0], rcond=None)[0]
        pv = np.linalg.lstsq(design * root, v * root[:, 0], rcond=None)[0]
        miss = np.hypot(design @ pu - u, design @ pv - v)
        weights = 1.0 / (1.0 + (miss / FIT_SCALE) ** 2)
    return GlobalMotion(
        _quantise(pu[0], TRANSLATION_UNITS), _quantise(pv[0], TRANSLATION_UNITS),
        _quantise(pu[1], MATRIX_UNITS), _quantise(pu[2], MATRIX_UNITS),
        _quantise(pv[1], MATRIX_UNITS), _quantise(pv[2], MATRIX_UNITS))


def refine_global_motion(
    motion: GlobalMotion, reference: Tensor, target: Tensor,
    warp: Callable[[Tensor, Tensor], Tensor], steps: int = REFINE_STEPS,
) -> GlobalMotion:
    """Encoder side: ``motion`` moved by Adam to lower ``MSE(warp(reference, flow), target)``
    (a fit to the dense flow weighs every flow vector alike, flat areas as much as edges;
    the warp error weighs them by what they cost), quantised again. The parameters are
    optimised as motion in pixels at the frame's edges, so one step size suits all six.
    Returns the start where no iterate (quantised) warps closer."""
    height, width = target.shape[-2:]
    half_w, half_h = (width - 1) / 2.0, (height - 1) / 2.0
    xs = (torch.arange(width, dtype=torch.float32) - half_w) / max(half_w, 1.0)
    ys = (torch.arange(height, dtype=torch.float32) - half_h) / max(half_h, 1.0)
    t, m = float(TRANSLATION_UNITS), float(MATRIX_UNITS)
    start = [motion.tx / t, motion.ty / t, motion.a / m * half_w, motion.b / m * half_h,
             motion.c / m * half_w, motion.d / m * half_h]
    params = torch.tensor(start, dtype=torch.float32, requires_grad=True)
    optimizer = torch.optim.Adam([params], lr=REFINE_STEP)

    def quantised(values: Tensor) -> GlobalMotion:
        p = values.detach().double().tolist()
        return GlobalMotion(
            _quantise(p[0], TRANSLATION_UNITS), _quantise(p[1], TRANSLATION_UNITS),
            _quantise(p[2] / max(half_w, 1.0), MATRIX_UNITS),
            _quantise(p[3] / max(half_h, 1.0), MATRIX_UNITS),
            _quantise(p[4] / max(half_w, 1.0), MATRIX_UNITS),
            _quantise(p[5] / max(half_h, 1.0), MATRIX_UNITS))

    def error(candidate: GlobalMotion) -> float:
        with torch.no_grad():
            flow = candidate.flow(height, width)
            return float(torch.mean((warp(reference, flow) - target) ** 2))

    best, best_error = motion, error(motion)
    with torch.enable_grad():
        for _ in range(steps):
            u = params[0] + params[2] * xs[None, :] + params[3] * ys[:, None]
            v = params[1] + params[4] * xs[None, :] + params[5] * ys[:, None]
            loss = torch.mean((warp(reference, torch.stack((u, v))[None]) - target) ** 2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    candidate = quantised(params)
    if candidate != best and error(candidate) < best_error:
        best = candidate
    return best


GRID_BLOCK = 64
"""Pixels (each way) per cell of a :class:`GridMotion`'s correction grid by default: the
coarsest grid tried, which already corrects much of what the affine model misses for a few
hundred bytes at 720p."""
GRID_BLOCKS = (GRID_BLOCK, 32)
"""The grids an encoder tries per P frame (DVC's ``compress_global``), each with every
residual candidate; rate-distortion cost picks. A 32-px grid follows parallax (a foreground
object passing in front of the background) that the 64-px grid blurs, for about three times
its bytes; with little parallax it changes the cost little. A 16-px grid is not tried: its
bytes (about 2 KB at 720p) do not pay for themselves even at the top quality."""
GRID_UNITS = 4
"""Steps per pixel of the grid's corrections (int8 keeps +-31.75 px)."""
GRID_REFINE_STEPS = 120
"""Adam steps of :func:`fit_motion_grid`: with :data:`GRID_REFINE_STEP`, enough for the fit
to settle on the tuning clips at about the same grid bytes (fewer, larger steps lose warp
quality on some grids; more steps gain a few tenths of a dB for their time)."""
GRID_REFINE_STEP = 0.1
"""Its step size, in pixels."""
GRID_RATE_WEIGHT = 1.0
"""Weight of the grid's bits against the warp's error in a rate-aware grid fit, relative to
the frame's lambda. At 1 the rate term saves a few percent of a GOP's bytes for a few
hundredths of a dB; larger weights save little more for several times the quality loss."""
_GRID_HEAD = struct.Struct(">BH")
RANS_GRID = 0x80
"""Flag (bit 7) of a grid's block size byte: the grid is rANS-coded (:mod:`.grid_coding`)."""


def _grid_shape(height: int, width: int, block: int) -> tuple[int, int]:
    return -(-height // block), -(-width // block)


def _upsample(grid: Tensor, height: int, width: int) -> Tensor:
    """A correction grid (``1 x 2 x rows x cols``, pixels) as a dense, smooth flow: each
    vector sits at its cell's centre and the flow between them is bilinear."""
    return F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class GridMotion:
    """Global motion plus a coarse grid of corrections (after control grid interpolation,
    Sullivan and Baker 1991, "Motion compensation for video compression using control grid
    interpolation"): one vector per ``block`` x ``block`` cell of the padded frame
    (``rows`` x ``cols`` cells), in :data:`GRID_UNITS`, added to the affine model's flow
    after bilinear up-sampling, so the field follows parallax and non-rigid motion that one
    affine model misses and stays smooth (no block edges in the prediction).
    ``corrections``: int8 ``2 x rows x cols`` (u then v, row-major). Coded as the 12-byte
    model, a u8 (bits 0-6: ``block / 16``; bit 7, :data:`RANS_GRID`: which coding), the
    coded grid's length u16, then the grid, coded the shorter way: each row as differences
    from its left neighbour (mod 256) deflated by zlib, or with bit 7 set by rANS under a
    Laplace model of its median-predicted values (:mod:`.grid_coding`). The grid's shape is
    not coded: the padded frame size gives it."""

    base: GlobalMotion
    block: int
    rows: int
    cols: int
    corrections: bytes

    def __post_init__(self) -> None:
        if self.block % 16 or not 16 <= self.block <= 127 * 16:
            raise ValueError(f"a grid's block size is coded in 16-px steps (16..2032), "
                             f"got {self.block}")
        if len(self.corrections) != 2 * self.rows * self.cols:
            raise ValueError(f"a {self.rows} x {self.cols} grid needs "
                             f"{2 * self.rows * self.cols} bytes, got {len(self.corrections)}")

    def to_bytes(self) -> bytes:
        rows = np.frombuffer(self.corrections, dtype=np.uint8).reshape(-1, self.cols)
        differences = rows.copy()
        differences[:, 1:] = rows[:, 1:] - rows[:, :-1]  # uint8 wraps: inverts exactly
        packed, flag = zlib.compress(differences.tobytes(), 9, wbits=-15), 0
        grid = np.frombuffer(self.corrections, dtype=np.int8).reshape(2, self.rows, self.cols)
        coded = encode_grid(grid)
        if len(coded) < len(packed):
            packed, flag = coded, RANS_GRID
        return (self.base.to_bytes() + _GRID_HEAD.pack(self.block // 16 | flag, len(packed))
                + packed)

    @classmethod
    def read(cls, data: bytes, height: int, width: int) -> tuple[GridMotion, int]:
        """The model at the start of ``data`` for a padded ``height`` x ``width`` frame, and
        the bytes it took; a truncated or inconsistent one raises :class:`BitstreamError`."""
        base = GlobalMotion.from_bytes(data[:SIZE])
        end = SIZE + _GRID_HEAD.size
        if len(data) < end:
            raise BitstreamError("a grid motion model is too short for its header")
        head, length = _GRID_HEAD.unpack(data[SIZE:end])
        block_units = head & ~RANS_GRID
        if block_units == 0:
            raise BitstreamError("a grid motion model has a zero block size")
        if len(data) < end + length:
            raise BitstreamError(f"a grid motion model needs {length} bytes, "
                                 f"{len(data) - end} left")
        rows, cols = _grid_shape(height, width, block_units * 16)
        if head & RANS_GRID:
            grid = decode_grid(data[end:end + length], rows, cols)
            return cls(base, block_units * 16, rows, cols, grid.tobytes()), end + length
        expected = 2 * rows * cols
        inflater = zlib.decompressobj(wbits=-15)
        try:
            raw = inflater.decompress(data[end:end + length], expected + 1)
        except zlib.error as error:
            raise BitstreamError(f"a grid motion model is corrupt ({error})") from None
        if len(raw) != expected or not inflater.eof or inflater.unused_data:
            raise BitstreamError(f"a grid motion model holds {len(raw)} bytes of grid where "
                                 f"the frame needs {expected}")
        differences = np.frombuffer(raw, dtype=np.uint8).reshape(-1, cols)
        grid = (np.cumsum(differences, axis=1, dtype=np.uint64) % 256).astype(np.uint8)
        return cls(base, block_units * 16, rows, cols, grid.tobytes()), end + length

    def flow(self, height: int, width: int) -> Tensor:
        """The field (``1 x 2 x height x width``, pixels, float32), computed in float64 so
        that encoder and decoder get the same one."""
        grid = np.frombuffer(self.corrections, dtype=np.int8).reshape(1, 2, self.rows, self.cols)
        correction = _upsample(torch.from_numpy(grid.astype(np.float64)) / GRID_UNITS,
                               height, width)
        return (self.base.flow(height, width).double() + correction).to(torch.float32)


def read_global_motion(
    data: bytes, grid: bool, height: int, width: int
) -> tuple[GlobalMotion | GridMotion, int]:
    """The global motion model that opens a P frame's payload (with its correction grid
    where ``grid``; padded frame size ``height`` x ``width``) and the bytes it took."""
    if len(data) < SIZE:
        raise BitstreamError("a global motion P frame is too short for its model")
    if grid:
        return GridMotion.read(data, height, width)
    return GlobalMotion.from_bytes(data[:SIZE]), SIZE


def fit_motion_grid(
    base: GlobalMotion, dense: Tensor, reference: Tensor, target: Tensor,
    warp: Callable[[Tensor, Tensor], Tensor], block: int = GRID_BLOCK,
    steps: int = GRID_REFINE_STEPS, rate_lambda: float | None = None,
) -> GridMotion:
    """Encoder side: the correction grid over ``base`` that starts from the dense flow's
    mean miss per cell and is moved by Adam to lower ``MSE(warp(reference, flow), target)``
    (as :func:`refine_global_motion`), quantised to :data:`GRID_UNITS`. With
    ``rate_lambda`` (the frame's rate-distortion lambda, ``bpp + lambda 255^2 MSE``) the fit
    lowers ``MSE + GRID_RATE_WEIGHT * bits / (pixels lambda 255^2)`` instead, the bits
    those of :func:`.grid_coding.rate_proxy`: a value its neighbours predict codes in a
    fraction of a bit, so the fit keeps only the corrections that pay for themselves."""
    height, width = target.shape[-2:]
    rows, cols = _grid_shape(height, width, block)
    base_flow = base.flow(height, width)
    start = F.adaptive_avg_pool2d(dense.float() - base_flow, (rows, cols))
    params = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([params], lr=GRID_REFINE_STEP)
    bit_weight = (0.0 if rate_lambda is None
                  else GRID_RATE_WEIGHT / (height * width * rate_lambda * 255.0**2))
    with torch.enable_grad():
        for _ in range(steps):
            flow = base_flow + _upsample(params, height, width)
            loss = torch.mean((warp(reference, flow) - target) ** 2)
            if bit_weight:
                loss = loss + bit_weight * rate_proxy(params * GRID_UNITS)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    grid = torch.round(params.detach().double() * GRID_UNITS).clamp(-127, 127)
    return GridMotion(base, block, rows, cols, grid.to(torch.int8).numpy().tobytes())
