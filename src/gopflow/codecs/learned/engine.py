"""The GOP engine: codes a closed GOP with a learned intra codec and a DVC or FVC inter codec.

Frame 0 is intra-coded, later frames inter-coded against the *decoded* previous frame(s).
The encoder runs the decoder's path: every payload is decoded right after it is written and
the reconstruction, rounded to uint8, is the next reference on both sides.

Encoder decisions (none changes the decoder), each by ``J = bpp + lambda * MSE`` (8-bit MSE,
``lambda`` the level's training Lagrangian from ``mode_lambdas``, so decisions use the loss the
models were trained on; bits are real payload sizes). A frame's error carries into the later
frames of its GOP that predict from it, each inheriting the share ``PROPAGATION`` of its
reference's error, so ``lambda`` is weighted by ``1 + p + p^2 + ... + p^n`` for the ``n``
frames after it (after x264's macroblock tree, which gives what later frames reference a
finer quantiser, propagating a fraction of each block's cost along the chain):

- Adaptive intra: the encoder also codes every P frame as an intra frame (at the P frames'
  level: a refresh unit, ``R``) and keeps the cheaper. A chosen intra frame starts a new
  closed GOP in the stream, as a scene cut does in x264. It bounds the drift of a long P
  chain, at one more intra encode and decode per P frame.
- Residual dead zone (``deadzones``): each P frame's residual latent is coded with every
  dead zone (plain rounding, and zeroing small symbols; rate-distortion optimised
  quantisation in the spirit of x264's dead zone and trellis) and the cheapest is kept. The
  models are trained with a fixed quantiser, so per frame the encoder often does better by
  spending fewer residual bits than the trained analysis transform asks for.
- Per-frame levels (``lead_offsets``, ``residual_offsets``): each P frame's lead latent
  (DVC motion, FVC offsets) and residual are also coded at levels around the stream's
  (:data:`RDO_LEAD_OFFSETS`, :data:`RDO_RESIDUAL_OFFSETS`) and the cheapest combination with
  the dead zones is kept; where it is not the stream's level, the frame is written as a
  ``Q`` unit that names its two levels. As x264's adaptive quantiser and macroblock tree
  give each frame its own quantiser; the motion in particular is often worth coding finer
  than the residual.
- Skip (``skip_residual``; on with ``rdo``): each P frame's lead latent is also coded alone,
  its residual taken as all zeros (an ``S`` unit, after H.264's P-skip, which codes motion
  and no residual). A coded residual always pays for its hyperprior side information, even
  when its symbols are all zero: at the lowest qualities most of the bytes of a near-empty
  residual are that ``z``.
- Motion prediction (``predict_lead``; on with ``rdo``, DVC only): a P frame whose reference
  is itself a P frame codes its motion latent as the difference from the reference's decoded
  motion latent (the lead level byte of a ``Q`` or ``S`` unit flags it), as H.264 codes
  motion vectors as differences from a prediction. Not a per-frame choice (that would
  double the refinement): it lowers the BD-rate, though at quality 1 the motion alone can
  code cheaper.
- Global motion (``global_motion``; on with ``rdo``, DVC only): each P frame is also coded
  with one affine motion model (12 bytes, fitted to the dense flow and refined for the warp)
  in place of its motion latent, with each residual choice and without a residual (the lead
  level byte of a ``Q`` or ``S`` unit flags it), after AV1's global motion. On a slow pan
  DVC's motion auto-encoder spends a kilobyte or more a 720p frame, and its flow warps worse
  than the affine model.
- Side-information search (``side_search``; on with ``rdo``): every latent coder searches a
  ``z`` that codes the same integers in fewer bytes (:meth:`.GainedHyperprior.compress`).
  Not a trade: the reconstruction is unchanged, only the rate can fall, so the P frame
  candidates are compared without it and only the chosen one is coded again with it.

Intra offset (``intra_offset``, written in the stream header): the key intra frame that opens
each GOP is coded that many quality levels above the P frames (capped at the top level), as
x264 codes I frames with a finer quantiser (``ipratio``): every P frame of the GOP predicts
from it. Refresh frames stay at the P frames' level, so quality 1 keeps the lowest rates.

Determinism: convolution results on this CPU depend on the torch thread count (measured:
encoder outputs differ by ~1e-7 between 1 and 2 threads), and a tiny difference in a
predicted scale can change an entropy-coder table index. All codec inference therefore runs
under :func:`codec_threads` (a fixed :data:`CODEC_THREADS`), so a decoder in another process
reproduces the encoder's reconstruction bit for bit. Parallelism comes from coding GOPs in
separate workers.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gopflow.codecs.learned.api import (
    CODEC_NAMES,
    DEFAULT_MOTION_REFINEMENT,
    CodedFrame,
    CodedGop,
    InterCandidate,
    candidate_count,
)
from gopflow.codecs.learned.bitstream import (
    GLOBAL_LEAD,
    GRID_LEAD,
    PREDICTED_LEAD,
    BitstreamError,
    UnitKind,
)
from gopflow.codecs.learned.hyperprior import (
    ROUNDING,
    SIDE_SEARCH_STEPS,
    Refinement,
    set_side_search,
)
from gopflow.errors import UsageError
from gopflow.zoo.registry import (
    ModelIntegrityError,
    ModelMissingError,
    load_model,
    model_metadata,
    read_registry,
)

PROPAGATION = 0.5
"""Share of a frame's error that the next frame of its GOP inherits (encoder decisions).
With ``bench/codecs.py``'s RD points, 0.5 in this geometric weight gives a lower BD-rate
than the linear weights ``1 + n``, ``1 + n/2`` and ``1 + n/4``."""
CODEC_THREADS = 1
"""Torch threads for all codec inference (part of the format: results depend on it)."""


@contextmanager
def codec_threads(count: int = CODEC_THREADS) -> Iterator[None]:
    """Run torch with exactly ``count`` threads inside, restoring the previous count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class IntraModel(Protocol):
    """What the engine needs from an intra codec (:class:`~.intra.IntraCodec`)."""

    levels: int
    multiple: int

    def compress(self, x: Tensor, level: int) -> bytes: ...

    def decompress(self, payload: bytes, padded_h: int, padded_w: int, level: int) -> Tensor: ...


class InterModel(Protocol):
    """What the engine needs from an inter codec (DVC, FVC): an opaque decoder state built
    from the decoded (uint8-rounded) frames, and per-frame payloads coded against it."""

    levels: int
    multiple: int

    def next_state(self, state: Any, recon: Tensor, lead_hat: Tensor | None = ...) -> Any: ...

    def compress_inter(
        self, x: Tensor, state: Any, lead_levels: Sequence[int], residual_levels: Sequence[int],
        deadzones: Sequence[float] = ..., refinement: Refinement | None = ...,
        lead_latent: Tensor | None = ..., skip_residual: bool = ..., predict_lead: bool = ...,
    ) -> Iterator[InterCandidate]: ...

    def decompress_inter(
        self, payload: bytes, state: Any, lead_level: int, residual_level: int | None,
        lead_predicted: bool = ..., lead_global: bool = ..., lead_grid: bool = ...,
    ) -> tuple[Tensor, Tensor | None]: ...


class GlobalMotionModel(InterModel, Protocol):
    """An inter codec that can also code a frame's motion as one global motion model
    (DVC: :meth:`~gopflow.codecs.dvc.model.DvcCodec.compress_global`)."""

    def compress_global(
        self, x: Tensor, state: Any, lead_level: int, residual_levels: Sequence[int],
        deadzones: Sequence[float] = ..., skip_residual: bool = ..., motion: Any = ...,
        rate_lambda: float | None = ...,
    ) -> Iterator[InterCandidate]: ...


@dataclass(frozen=True)
class InterLevels:
    """How an inter unit's payload is coded: the 0-based levels of its lead latent (DVC
    motion, FVC offsets) and of its residual (``None``: skipped, all zeros), whether the lead
    latent is a difference from the previous frame's, whether a global motion model stands in
    for it (and whether a correction grid follows that model), and the payload itself."""

    lead: int
    residual: int | None
    lead_predicted: bool
    payload: bytes
    lead_global: bool = False
    lead_grid: bool = False


def to_tensor(frame: np.ndarray) -> Tensor:
    """``H x W x 3`` uint8 RGB -> ``1 x 3 x H x W`` float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float() / 255.0


def to_uint8(x: Tensor) -> Tensor:
    """A model output rounded to the uint8 grid (kept as a ``1 x 3 x H x W`` tensor)."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0)


def pad_to(x: Tensor, multiple: int) -> Tensor:
    """Replicate-pad the bottom and right edges to a multiple of ``multiple``."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % multiple, 0, -h % multiple), mode="replicate")


class GopCodec:
    """A :class:`~gopflow.codecs.learned.api.LearnedVideoCodec`: intra plus optional inter.

    ``mode_lambdas``: each level's training lambda, for the encoder's decisions;
    ``adaptive_intra`` (default: whether lambdas are given), ``deadzones`` (candidate
    residual dead zones, plain rounding only by default), ``lead_offsets`` and
    ``residual_offsets`` (candidate P frame levels around the stream's, ``(0,)`` by default)
    choose which decisions it makes; ``side_search`` turns on the search for cheaper side
    information in every latent coder of both models (steps; 0 off; see
    :meth:`.GainedHyperprior.compress`); ``refine_steps`` refines each P frame's lead latent
    (DVC motion, FVC offsets) for its prediction at every candidate level (Adam steps; 0
    off; see :meth:`.GainedHyperprior.refine`); ``global_motion`` also tries each P
    frame with one global motion model in place of its lead latent (DVC)."""

    def __init__(
        self, name: str, intra: IntraModel, inter: InterModel | None, model_id: str,
        mode_lambdas: Sequence[float] | None = None, adaptive_intra: bool | None = None,
        deadzones: Sequence[float] = (ROUNDING,), side_search: int = 0,
        lead_offsets: Sequence[int] = (0,), residual_offsets: Sequence[int] = (0,),
        refine_steps: int = 0, skip_residual: bool = False, predict_lead: bool = False,
        global_motion: bool = False,
    ) -> None:
        if name not in CODEC_NAMES:
            raise UsageError(f"unknown learned codec {name!r}; known: {', '.join(CODEC_NAMES)}")
        if (name == "intra") != (inter is None):
            need = "no" if name == "intra" else "an"
            raise UsageError(f"codec {name!r} needs {need} inter model")
        if inter is not None and inter.levels != intra.levels:
            raise UsageError(f"intra has {intra.levels} levels, inter {inter.levels}")
        self.name = name
        self.model_id = model_id
        self.levels = intra.levels
        self.intra = intra
        self.inter = inter
        self.multiple = max(intra.multiple, inter.multiple if inter is not None else 1)
        if mode_lambdas is not None and len(mode_lambdas) != self.levels:
            raise UsageError(f"encoder decisions need one lambda per level ({self.levels}), "
                             f"got {len(mode_lambdas)}")
        self.mode_lambdas = tuple(mode_lambdas) if mode_lambdas is not None else None
        self.adaptive_intra = (self.mode_lambdas is not None if adaptive_intra is None
                               else adaptive_intra)
        self.deadzones = tuple(deadzones)
        if not self.deadzones or min(self.deadzones) < ROUNDING:
            raise UsageError(f"residual dead zones must be at least {ROUNDING}")
        self.lead_offsets = tuple(lead_offsets)
        self.residual_offsets = tuple(residual_offsets)
        if 0 not in self.lead_offsets or 0 not in self.residual_offsets:
            raise UsageError("P frame level offsets must include 0 (the stream's level)")
        self.skip_residual = skip_residual
        self.predict_lead = predict_lead
        if global_motion and not hasattr(inter, "compress_global"):
            raise UsageError(f"codec {name!r} has no global motion model (DVC has)")
        self.global_motion = global_motion
        choices = candidate_count(self.lead_offsets, self.residual_offsets, self.deadzones,
                                  skip_residual, global_motion)
        if (self.adaptive_intra or choices > 1 or refine_steps) and self.mode_lambdas is None:
            raise UsageError("adaptive intra, dead-zone, level and skip choices and the lead "
                             "refinement need the training lambdas")
        if refine_steps < 0:
            raise UsageError(f"refinement steps must be >= 0, got {refine_steps}")
        self.refinement = (Refinement(self.mode_lambdas, refine_steps)
                           if refine_steps and self.mode_lambdas is not None else None)
        self.side_search = side_search
        for model in (intra, inter):
            if isinstance(model, nn.Module):
                set_side_search(model, side_search)

    def quality_index(self, quality: int) -> int:
        """The 0-based level of ``quality``; a one-line error outside ``1..levels``."""
        if not 1 <= quality <= self.levels:
            raise UsageError(f"--quality must be 1 to {self.levels} for {self.name}, got "
                             f"{quality}")
        return quality - 1

    def _intra_level(self, index: int, intra_offset: int) -> int:
        """0-based level of intra frames: ``intra_offset`` above ``index``, capped."""
        if not 0 <= intra_offset < 256:
            raise UsageError(f"the intra offset must be 0..255, got {intra_offset}")
        if intra_offset and self.inter is None:
            raise UsageError("an intra offset is for dvc and fvc: every frame of the intra "
                             "codec is an intra frame (choose its quality instead)")
        return min(index + intra_offset, self.levels - 1)

    def _decode(
        self, frame: CodedFrame, state: Any, padded: tuple[int, int], level: int,
        intra_level: int,
    ) -> tuple[Tensor, Any]:
        """One frame's uint8-grid reconstruction (padded) and the next decoder state."""
        lead_hat = None
        if frame.kind.starts_gop:
            at = intra_level if frame.kind == UnitKind.INTRA else level
            recon = to_uint8(self.intra.decompress(frame.payload, padded[0], padded[1], at))
            state = None  # an intra frame starts a new reference chain
        elif frame.kind.predicted and self.inter is not None and state is not None:
            levels = self.inter_levels(frame, level)
            picture, lead_hat = self.inter.decompress_inter(
                levels.payload, state, levels.lead, levels.residual, levels.lead_predicted,
                levels.lead_global, levels.lead_grid)
            recon = to_uint8(picture)
        else:
            raise BitstreamError(f"an inter frame without a reference for codec {self.name!r}")
        if self.inter is not None:
            state = self.inter.next_state(state, recon / 255.0, lead_hat)
        return recon, state

    def inter_levels(self, frame: CodedFrame, level: int) -> InterLevels:
        """The levels of an inter frame and its latent payload: the stream's level for ``P``
        units, the two level bytes that open a ``Q`` unit's payload, the one lead level byte
        that opens an ``S`` unit's (no residual); in ``Q`` and ``S`` units the lead level
        byte's :data:`~.bitstream.PREDICTED_LEAD` bit says the lead latent is predicted, its
        :data:`~.bitstream.GLOBAL_LEAD` bit that a global motion model replaces it, its
        :data:`~.bitstream.GRID_LEAD` bit that a correction grid follows that model."""
        if frame.kind == UnitKind.INTER:
            return InterLevels(level, level, False, frame.payload)
        unit, count = ("an S unit", 1) if frame.kind == UnitKind.SKIP else ("a Q unit", 2)
        if len(frame.payload) < count:
            raise BitstreamError(f"{unit} is too short for its level bytes")
        flags = frame.payload[0] & (PREDICTED_LEAD | GLOBAL_LEAD | GRID_LEAD)
        lead = frame.payload[0] & ~flags
        residual = frame.payload[1] if count == 2 else None
        if max(lead, residual or 0) >= self.levels:
            raise BitstreamError(f"{unit} names level {max(lead, residual or 0) + 1}; "
                                 f"codec {self.name!r} has {self.levels}")
        return InterLevels(lead, residual, bool(flags & PREDICTED_LEAD), frame.payload[count:],
                           bool(flags & GLOBAL_LEAD), bool(flags & GRID_LEAD))

    def _around(self, level: int, offsets: tuple[int, ...]) -> list[int]:
        """The valid 0-based levels ``level + offset``, in the order of ``offsets``."""
        return [level + offset for offset in offsets if 0 <= level + offset < self.levels]

    def _inter_frame(
        self, x: Tensor, source: np.ndarray, state: Any, level: int, later: int
    ) -> CodedFrame:
        """A P frame: the cheapest of the candidate levels, residual dead zones, skip and
        global motion choices, by the propagated cost (:meth:`_propagated_lambda`); a ``Q``
        unit when its levels are not the stream's or its lead is flagged. Candidates are
        compared without the side-information search (it leaves the reconstruction as it
        is); the chosen one is coded again with it, from the lead latent (or global motion
        model) it was coded from (refined once, not again)."""
        assert self.inter is not None
        leads = self._around(level, self.lead_offsets)
        residuals = self._around(level, self.residual_offsets)
        choices = candidate_count(
            leads, residuals, self.deadzones, self.skip_residual, self.global_motion)
        if choices == 1:
            (best,) = self.inter.compress_inter(
                x, state, leads, residuals, self.deadzones, self.refinement,
                predict_lead=self.predict_lead)
        else:
            height, width = source.shape[:2]
            lmbda = self._propagated_lambda(level, later)
            best, best_cost = None, math.inf
            set_side_search(self.inter, 0)
            candidates = self.inter.compress_inter(
                x, state, leads, residuals, self.deadzones, self.refinement,
                skip_residual=self.skip_residual, predict_lead=self.predict_lead)
            if self.global_motion:
                candidates = itertools.chain(candidates, self._global(
                    x, state, level, residuals, self.deadzones, self.skip_residual,
                    rate_lambda=lmbda))
            try:
                for candidate in candidates:
                    picture = _crop(to_uint8(candidate.recon), height, width)
                    cost = _rd_cost(candidate.payload, picture, source, lmbda)
                    if cost < best_cost:
                        best, best_cost = replace(candidate, recon=None), cost
            finally:
                set_side_search(self.inter, self.side_search)
            assert best is not None
            if self.side_search:
                residual = [] if best.residual_level is None else [best.residual_level]
                deadzone = [] if best.deadzone is None else [best.deadzone]
                if best.lead_global:
                    (best,) = self._global(
                        x, state, best.lead_level, residual, deadzone,
                        best.residual_level is None, best.lead_latent)
                else:
                    (best,) = self.inter.compress_inter(
                        x, state, (best.lead_level,), residual, deadzone,
                        lead_latent=best.lead_latent, skip_residual=best.residual_level is None,
                        predict_lead=best.lead_predicted)
        lead = (best.lead_level | (PREDICTED_LEAD if best.lead_predicted else 0)
                | (GLOBAL_LEAD if best.lead_global else 0) | (GRID_LEAD if best.lead_grid else 0))
        if best.residual_level is None:
            return CodedFrame(UnitKind.SKIP, bytes((lead,)) + best.payload)
        if (lead, best.residual_level) == (level, level):
            return CodedFrame(UnitKind.INTER, best.payload)
        return CodedFrame(UnitKind.LEVELED_INTER, bytes((lead, best.residual_level)) + best.payload)

    def _global(
        self, x: Tensor, state: Any, level: int, residuals: Sequence[int],
        deadzones: Sequence[float], skip: bool, motion: Any = None,
        rate_lambda: float | None = None,
    ) -> Iterator[InterCandidate]:
        """The global motion candidates of a P frame, their grids fitted rate-aware for
        ``rate_lambda``; ``motion`` re-codes a chosen candidate with its model."""
        model: GlobalMotionModel = self.inter  # type: ignore[assignment]
        return model.compress_global(x, state, level, residuals, deadzones, skip, motion,
                                     rate_lambda)

    def _propagated_lambda(self, level: int, later: int) -> float:
        """The level's training lambda, weighted by ``sum(PROPAGATION**k, k = 0..later)``: a
        frame's error carries into the ``later`` frames of the GOP that predict from it, each
        inheriting a share of its reference's error."""
        assert self.mode_lambdas is not None
        return self.mode_lambdas[level] * propagation_weight(later)

    def encode_gop(
        self, frames: Sequence[np.ndarray], quality: int, intra_offset: int = 0
    ) -> CodedGop:
        """Code a closed GOP (first frame intra) at ``quality`` (1..levels), intra
        frames ``intra_offset`` levels higher."""
        index = self.quality_index(quality)
        key = self._intra_level(index, intra_offset)
        if not frames:
            raise UsageError("a GOP needs at least one frame")
        shape = frames[0].shape
        for frame in frames:
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise UsageError("learned codecs take H x W x 3 uint8 RGB frames")
            if frame.shape != shape:
                raise UsageError(f"GOP frames differ in size: {frame.shape} vs {shape}")
        height, width = shape[:2]
        coded: list[CodedFrame] = []
        recons: list[np.ndarray] = []
        state: Any = None
        with codec_threads(), torch.no_grad():
            for position, frame in enumerate(frames):
                x = pad_to(to_tensor(frame), self.multiple)
                padded = (x.shape[-2], x.shape[-1])
                intra_only = position == 0 or self.inter is None
                later = len(frames) - 1 - position
                if intra_only:
                    item = CodedFrame(UnitKind.INTRA, self.intra.compress(x, key))
                else:
                    item = self._inter_frame(x, frame, state, index, later)
                recon, next_state = self._decode(item, state, padded, index, key)
                picture = _crop(recon, height, width)
                if not intra_only and self.adaptive_intra:
                    lmbda = self._propagated_lambda(index, later)
                    alternative = CodedFrame(UnitKind.REFRESH, self.intra.compress(x, index))
                    alt_recon, alt_state = self._decode(alternative, state, padded, index, key)
                    alt_picture = _crop(alt_recon, height, width)
                    if (_rd_cost(alternative.payload, alt_picture, frame, lmbda)
                            < _rd_cost(item.payload, picture, frame, lmbda)):
                        item, picture, next_state = alternative, alt_picture, alt_state
                state = next_state
                coded.append(item)
                recons.append(picture)
        return CodedGop(tuple(coded), tuple(recons))

    def decode_gop(
        self, frames: Sequence[CodedFrame], width: int, height: int, quality: int,
        intra_offset: int = 0,
    ) -> list[np.ndarray]:
        """Decode a GOP coded by :meth:`encode_gop` to its exact reconstruction."""
        index = self.quality_index(quality)
        key = self._intra_level(index, intra_offset)
        if width <= 0 or height <= 0:
            raise UsageError(f"frame size must be positive, got {width}x{height}")
        step = self.multiple
        padded = (-(-height // step) * step, -(-width // step) * step)
        out: list[np.ndarray] = []
        state: Any = None
        with codec_threads(), torch.no_grad():
            for frame in frames:
                recon, state = self._decode(frame, state, padded, index, key)
                out.append(_crop(recon, height, width))
        return out


def propagation_weight(later: int) -> float:
    """``1 + p + ... + p^later`` for ``p = PROPAGATION``: the error of a frame that ``later``
    frames predict from, counted in each of them as far as it reaches."""
    return sum(PROPAGATION**k for k in range(later + 1))


def _rd_cost(payload: bytes, picture: np.ndarray, source: np.ndarray, lmbda: float) -> float:
    """``bpp + lambda * MSE`` (8-bit units): the training loss ``R + lambda 255^2 MSE``."""
    error = picture.astype(np.float64) - source.astype(np.float64)
    pixels = source.shape[0] * source.shape[1]
    return 8.0 * len(payload) / pixels + lmbda * float(np.mean(error * error))


def _crop(recon: Tensor, height: int, width: int) -> np.ndarray:
    return recon[0, :, :height, :width].permute(1, 2, 0).to(torch.uint8).numpy().copy()


def codec_classes() -> dict[str, Callable[..., nn.Module]]:
    """The learned codec model classes by registry ``arch["class"]`` name."""
    from gopflow.codecs.learned.intra import IntraCodec

    classes: dict[str, Callable[..., nn.Module]] = {"IntraCodec": IntraCodec}
    try:
        from gopflow.codecs.dvc.model import DvcCodec

        classes["DvcCodec"] = DvcCodec
    except ImportError:
        pass
    try:
        from gopflow.codecs.fvc.model import FvcCodec

        classes["FvcCodec"] = FvcCodec
    except ImportError:
        pass
    return classes


def build_codec_model(arch: dict[str, Any]) -> nn.Module:
    """A codec model from its :meth:`arch` description (the registry's builder hook)."""
    spec = dict(arch)
    name = spec.pop("class", None)
    classes = codec_classes()
    if name not in classes:
        raise UsageError(f"unknown learned codec class {name!r}; known: {sorted(classes)}")
    return classes[name](**spec)


def registry_name(codec: str) -> str:
    """Registry name of a codec's weights: ``codec-intra``, ``codec-dvc``, ``codec-fvc``."""
    return f"codec-{codec}"


def _load(codec: str, directory: str | os.PathLike[str] | None) -> tuple[Any, str]:
    name = registry_name(codec)
    entry = read_registry(directory).get(name)
    if entry is None:
        raise ModelMissingError(
            f"learned codec weights {name!r} are not installed; train them with "
            f"`gopflow train codec --model {codec} --data DIR` and install them"
        )
    model = load_model(name, directory, builder=build_codec_model)
    model.update()
    return model, entry.sha256[:12]


RDO_DEADZONES: tuple[float, ...] = (ROUNDING, 1.0, 1.5, 2.0)
"""The residual dead zones the encoder tries per P frame with ``rdo`` (plain rounding first)."""
RDO_LEAD_OFFSETS: tuple[int, ...] = (0, 1, 2)
"""Levels above the stream's at which ``rdo`` also codes each P frame's motion (offsets)."""
RDO_REFINED_LEAD_OFFSETS: tuple[int, ...] = (0, 1)
"""The same with the lead-latent refinement on: refined motion is hardly ever worth coding
2 levels up, so leaving out that candidate codes nearly the same bytes and encodes about 1.5
times faster."""
RDO_RESIDUAL_OFFSETS: tuple[int, ...] = (-1, 0, 1)
"""Levels around the stream's at which ``rdo`` also codes each P frame's residual."""


def refine_steps_for(name: str, rdo: bool, steps: int | None = None) -> int:
    """Adam steps of the lead-latent refinement: ``steps`` when given (0 turns it off), else
    :data:`DEFAULT_MOTION_REFINEMENT` with ``rdo`` and none without."""
    if steps is None:
        return DEFAULT_MOTION_REFINEMENT.get(name, 0) if rdo else 0
    if steps < 0:
        raise UsageError(f"motion refinement steps must be >= 0, got {steps}")
    if steps and name not in DEFAULT_MOTION_REFINEMENT:
        raise UsageError(f"motion refinement is for dvc and fvc, not {name!r}")
    return steps


def load_codec(
    name: str, directory: str | os.PathLike[str] | None = None, adaptive_intra: bool = False,
    rdo: bool = False, refine_steps: int | None = None,
) -> GopCodec:
    """The learned codec ``name`` (``intra``, ``dvc``, ``fvc``) with its shipped weights,
    each file checked against the registry's SHA-256. Encoder decisions by rate-distortion
    cost, with the lambdas the inter model was trained with (its installed metadata):
    ``adaptive_intra`` picks intra or inter per P frame, ``rdo`` the residual dead zone
    (:data:`RDO_DEADZONES`) and the P frame levels (:data:`RDO_LEAD_OFFSETS`, or
    :data:`RDO_REFINED_LEAD_OFFSETS` with the refinement; :data:`RDO_RESIDUAL_OFFSETS`)
    and whether to skip the residual, refines each P frame's lead latent
    (:data:`DEFAULT_MOTION_REFINEMENT`) and searches every latent's side information for
    shorter strings
    (:data:`~.hyperprior.SIDE_SEARCH_STEPS`; same reconstruction, fewer bytes).
    ``refine_steps`` overrides the refinement's steps (:func:`refine_steps_for`)."""
    if name not in CODEC_NAMES:
        raise UsageError(f"unknown learned codec {name!r}; known: {', '.join(CODEC_NAMES)}")
    steps = refine_steps_for(name, rdo, refine_steps)
    intra, intra_sha = _load("intra", directory)
    if name == "intra":
        return GopCodec(name, intra, None, f"intra:{intra_sha}")
    inter, inter_sha = _load(name, directory)
    lambdas = None
    if adaptive_intra or rdo or steps:
        lambdas = model_metadata(registry_name(name), directory).get("lambdas")
        if not isinstance(lambdas, list):  # GopCodec checks there is one per level
            raise ModelIntegrityError(
                f"{registry_name(name)} has no training lambdas in its metadata; adaptive "
                "intra and --rdo need them (reinstall the weights with their metadata, or "
                "pass --no-adaptive-intra --no-rdo)")
    return GopCodec(name, intra, inter, f"{name}:{inter_sha}+{intra_sha}", lambdas,
                    adaptive_intra=adaptive_intra,
                    deadzones=RDO_DEADZONES if rdo else (ROUNDING,),
                    side_search=SIDE_SEARCH_STEPS if rdo else 0,
                    lead_offsets=(RDO_REFINED_LEAD_OFFSETS if steps else RDO_LEAD_OFFSETS)
                    if rdo else (0,),
                    residual_offsets=RDO_RESIDUAL_OFFSETS if rdo else (0,),
                    refine_steps=steps, skip_residual=rdo, predict_lead=rdo,
                    global_motion=rdo and hasattr(inter, "compress_global"))


def model_digest(model: nn.Module) -> str:
    """A 12-hex-digit digest of a model's state (model ids for models not from the registry)."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:12]
