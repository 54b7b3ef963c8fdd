"""Entropy coding of a motion grid's int8 corrections with CompressAI's rANS coder.

Data flow: ``2 x rows x cols`` int8 corrections (u then v) -> per component, each value
minus a prediction: its LOCO-I median edge (MED) prediction from the left, upper and
upper-left values (Weinberger et al. 2000, "The LOCO-I lossless image compression
algorithm"), or one constant, the component's median (the encoder takes the one that
codes in fewer bits: the grid fit leaves a few quarter-pixels of noise on smooth fields,
which neighbours do not predict) -> one discretised Laplace distribution per component,
its scale one of :data:`SCALES` chosen by the encoder for the fewest bits -> CompressAI's
``RansEncoder`` with those quantised CDFs (residuals beyond +-:data:`ALPHABET` take its
bypass escape) -> bytes. The decoder reads the two component headers, decodes every
residual at once and undoes the prediction (in raster order for MED).

Format (format version 8; docs/gflv-format.md), per component u then v: scale index u8
with bit 7 (:data:`CONSTANT_PREDICTION`) set where the prediction is a constant, then that
constant (int8); then the rANS string.

Written by hand around CompressAI's coder: its entropy models code CNN latents with learned
or Gaussian tables; a two-parameter static model of a few hundred small integers needs no
network, and codes typical grids shorter than zlib's deflated row differences (the grid's
other coding, which the encoder picks where it is shorter).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gopflow.codecs.learned.bitstream import BitstreamError
from gopflow.codecs.learned.hyperprior import decode_exact, rans_encode

ALPHABET = 40
"""Residuals in ``-ALPHABET..ALPHABET`` have a table symbol; larger ones are escaped."""
SCALES: tuple[float, ...] = tuple(0.15 * 1.25**i for i in range(28))
"""Laplace scales (mean absolute residual, in grid units) the encoder picks from: 0.15-61."""
CONSTANT_PREDICTION = 0x80
"""Flag (bit 7) of a component's scale byte: its values are predicted by the constant that
follows, not by MED."""
PRECISION = 16
"""Bits of the quantised CDFs (CompressAI's default)."""
_ESCAPE_BITS = 16.0
"""About what an escaped residual costs in the bypass code (for the scale choice only)."""


@functools.cache
def _tables() -> tuple[list[list[int]], list[int], list[int], np.ndarray]:
    """Quantised CDFs, their sizes and offsets, one per scale: the pmf of a two-sided
    geometric (discretised Laplace) over ``-ALPHABET..ALPHABET`` plus the tail mass beyond,
    rounded to multiples of ``2^-32`` before quantisation, so that encoder and decoder build
    the same integer tables even where libm differs in the last bit; and each table's code
    lengths in bits (``scales x symbols + escape``, for the encoder's scale choice)."""
    from compressai._CXX import pmf_to_quantized_cdf

    ks = np.arange(-ALPHABET, ALPHABET + 1, dtype=np.float64)
    cdfs = []
    for scale in SCALES:
        theta = math.exp(-1.0 / scale)
        pmf = (1.0 - theta) / (1.0 + theta) * np.power(theta, np.abs(ks))
        tail = max(1.0 - float(pmf.sum()), 0.0)
        probabilities = np.round(np.append(pmf, tail) * 2.0**32) / 2.0**32
        cdfs.append(list(pmf_to_quantized_cdf(probabilities.tolist(), PRECISION)))
    lengths = PRECISION - np.log2(np.diff(np.asarray(cdfs, dtype=np.float64), axis=1))
    return cdfs, [2 * ALPHABET + 3] * len(SCALES), [-ALPHABET] * len(SCALES), lengths


def _med(left: Any, up: Any, corner: Any, xp: Any = np) -> Any:
    """LOCO-I's median edge predictor: the plane through the three neighbours,
    ``left + up - corner``, clipped to the range of ``left`` and ``up``; element-wise for
    numpy scalars and arrays, or with ``xp=torch`` for tensors."""
    return (left + up - corner).clip(xp.minimum(left, up), xp.maximum(left, up))


MIN_PROXY_SCALE = 0.25
"""Floor of :func:`rate_proxy`'s Laplace scale (grid units): once nearly every residual is
zero, a residual of one costs about what the narrowest tables charge for it."""


def rate_proxy(grid: Tensor) -> Tensor:
    """A differentiable stand-in for the bits :func:`encode_grid` spends on a real-valued
    grid (``1 x 2 x rows x cols``, in grid units), for a rate-aware fit: each value's
    residual against its MED prediction (as :func:`_residuals`), costed as a Laplace of
    the current mean absolute residual ``b`` codes it, ``|r| / (b ln 2)`` bits (the
    gradient of ``n log2 b`` in each ``|r|``, ``b`` held fixed: shrinking every residual
    lets the encoder pick a narrower table)."""
    plane = grid[0]
    prediction = _med(plane[:, 1:, :-1], plane[:, :-1, 1:], plane[:, :-1, :-1], torch)
    residuals = torch.cat([(plane[:, 1:, 1:] - prediction).flatten(1),
                           (plane[:, 0, 1:] - plane[:, 0, :-1]).flatten(1),
                           (plane[:, 1:, 0] - plane[:, :-1, 0]).flatten(1)], dim=1).abs()
    scale = residuals.detach().mean(dim=1, keepdim=True).clamp_min(MIN_PROXY_SCALE)
    return (residuals / scale).sum() / math.log(2.0)


def _residuals(plane: np.ndarray) -> np.ndarray:
    """Each value minus its MED prediction (first row: the left value; first column: the
    upper one; the first value: 0)."""
    values = plane.astype(np.int64)
    prediction = np.zeros_like(values)
    prediction[1:, 1:] = _med(values[1:, :-1], values[:-1, 1:], values[:-1, :-1])
    prediction[0, 1:] = values[0, :-1]
    prediction[1:, 0] = values[:-1, 0]
    return values - prediction


def _undo_residuals(residuals: np.ndarray) -> np.ndarray:
    """:func:`_residuals` inverted, in raster order (each prediction needs decoded values)."""
    rows, cols = residuals.shape
    values = np.zeros((rows, cols), dtype=np.int64)
    for i in range(rows):
        for j in range(cols):
            if i == 0:
                prediction = int(values[0, j - 1]) if j else 0
            elif j == 0:
                prediction = int(values[i - 1, 0])
            else:
                prediction = int(_med(values[i, j - 1], values[i - 1, j], values[i - 1, j - 1]))
            values[i, j] = prediction + int(residuals[i, j])
    return values


def _best_scale(residuals: np.ndarray) -> tuple[int, float]:
    """The scale index whose table codes ``residuals`` in the fewest (ideal) bits, and
    those bits."""
    lengths = _tables()[3]
    inside = np.abs(residuals) <= ALPHABET
    escapes = int(np.count_nonzero(~inside))
    costs = (lengths[:, residuals[inside] + ALPHABET].sum(axis=1)
             + escapes * (_ESCAPE_BITS + lengths[:, -1]))
    best = int(np.argmin(costs))
    return best, float(costs[best])


def _component(plane: np.ndarray) -> tuple[bytes, np.ndarray, int]:
    """One component's header, residuals and scale index, by the cheaper prediction."""
    med = _residuals(plane)
    centre = int(np.median(plane.astype(np.int64)))
    flat = plane.astype(np.int64) - centre
    med_scale, med_bits = _best_scale(med)
    flat_scale, flat_bits = _best_scale(flat)
    if flat_bits + 8 < med_bits:
        return bytes([flat_scale | CONSTANT_PREDICTION, centre & 0xFF]), flat, flat_scale
    return bytes([med_scale]), med, med_scale


def encode_grid(corrections: np.ndarray) -> bytes:
    """Code ``2 x rows x cols`` int8 corrections (see the module docstring). The string is
    CompressAI's encoder's (:func:`.hyperprior.rans_encode`): a small grid of escaped
    values needs more words than it has values, which CompressAI's encoder writes before
    its buffer, so those are coded in Python, to the same bytes."""
    cdfs, sizes, offsets, _ = _tables()
    headers, planes, scales = zip(*(_component(plane) for plane in corrections), strict=True)
    symbols = np.concatenate([residuals.ravel() for residuals in planes])
    indexes = np.repeat(np.asarray(scales), [residuals.size for residuals in planes])
    string = rans_encode(symbols, indexes, np.asarray(cdfs), np.asarray(sizes),
                         np.asarray(offsets))
    return b"".join(headers) + string


def decode_grid(data: bytes, rows: int, cols: int) -> np.ndarray:
    """The ``2 x rows x cols`` int8 corrections :func:`encode_grid` coded in ``data``; an
    inconsistent one (a scale out of range, a value beyond int8, a rANS string that is not
    exactly what the encoder writes: :func:`.hyperprior.decode_exact`) raises
    :class:`BitstreamError`."""
    scales, centres, position = [], [], 0
    for _ in range(2):
        if len(data) < position + 1:
            raise BitstreamError("a grid motion model's entropy-coded grid is too short")
        head = data[position]
        scales.append(head & ~CONSTANT_PREDICTION)
        if head & CONSTANT_PREDICTION:
            if len(data) < position + 2:
                raise BitstreamError("a grid motion model's entropy-coded grid is too short")
            centres.append(int(np.int8(np.uint8(data[position + 1]))))
            position += 2
        else:
            centres.append(None)
            position += 1
    if len(data) < position + 8:  # rANS flushes an 8-byte state
        raise BitstreamError("a grid motion model's entropy-coded grid is too short")
    if max(scales) >= len(SCALES):
        raise BitstreamError(f"a grid motion model names Laplace scale {max(scales)}; "
                             f"there are {len(SCALES)}")
    cdfs, sizes, offsets, _ = _tables()
    indexes = np.repeat(np.asarray(scales), rows * cols)
    decoded = decode_exact(data[position:], indexes, np.asarray(cdfs), np.asarray(sizes),
                           np.asarray(offsets), "a grid motion model's grid")
    residuals = decoded.reshape(2, rows, cols)
    values = np.stack([_undo_residuals(plane) if centre is None else plane + centre
                       for plane, centre in zip(residuals, centres, strict=True)])
    if values.min() < -128 or values.max() > 127:
        raise BitstreamError("a grid motion model's grid decodes beyond int8")
    return values.astype(np.int8)
