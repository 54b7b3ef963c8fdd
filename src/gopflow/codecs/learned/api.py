"""The contract between gopflow's learned video codecs and the rest of the pipeline.

Data flow::

    GOP frames (H x W x 3 uint8 RGB, any size)
      -> LearnedVideoCodec.encode_gop(frames, level, intra_offset)   [codecs/learned/engine.py]
         (pad to the model's multiple; frame 0 intra-coded by the hyperprior image codec,
          frames 1.. inter-coded by DVC or FVC against the *decoded* previous frame(s))
      -> CodedGop: one CodedFrame (kind, entropy-coded payload) per frame, and the exact
         reconstruction the decoder will produce
      -> bitstream units in one .gflv file                 [codecs/learned/bitstream.py]
      -> LearnedVideoCodec.decode_gop(frames, width, height, level) in another process
         == CodedGop.recon, bit for bit

Training (``gopflow train codec``) drives the models through :class:`TrainableCodec`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from gopflow.codecs.learned.bitstream import UnitKind

DEFAULT_INTRA_OFFSETS: dict[str, int] = {"intra": 0, "dvc": 1, "fvc": 0}
"""Quality levels between intra and P frames by default, as x264's ``ipratio`` gives I frames
a finer quantiser (compared with ``bench/codecs.py``): it pays for DVC, whose P frames carry
the intra frame's quality along the GOP (an offset of 1 codes about as well as larger ones
on the benchmark clips and keeps the lowest rates within reach), and costs FVC (its
alignment barely uses the reference), so FVC keeps 0."""
DEFAULT_MOTION_REFINEMENT: dict[str, int] = {"dvc": 20, "fvc": 0}
"""Adam steps refining each P frame's lead latent with ``--rdo``, by codec
(:meth:`~gopflow.codecs.learned.hyperprior.GainedHyperprior.refine`): it lowers the cost of
DVC's motion. FVC's offsets are refined by the same code when asked, but the refinement
tends to keep the start (the same bytes) at several times the encode time, so it stays off
there."""
CODEC_NAMES: tuple[str, ...] = ("intra", "dvc", "fvc")
"""The learned codecs, by the name the CLI, the registry (``codec-<name>``) and streams use."""


@dataclass(frozen=True)
class CodedFrame:
    """One frame's entropy-coded data: ``INTRA`` or ``INTER`` and an opaque payload."""

    kind: UnitKind
    payload: bytes


@dataclass(frozen=True)
class InterCandidate:
    """One way an inter codec can code a P frame: the payload, and (when the encoder asked
    for several, to choose by rate-distortion cost) the decoder's reconstruction of it
    (padded ``1 x 3 x H x W`` tensor in [0, 1]; ``None`` for a single candidate), with the
    choices behind it: the 0-based levels of the lead latent (DVC motion, FVC offsets) and of
    the residual, and the residual's dead zone (both ``None`` for a skip candidate: no
    residual is coded, the decoder takes it as all zeros). ``lead_latent`` is the lead
    latent as it was coded (after any refinement; with ``lead_predicted``, its difference
    from the previous frame's decoded lead latent): passed back to ``compress_inter`` with
    the same choices, it codes this candidate again without estimating or refining the
    latent anew. With ``lead_global`` the frame's motion is a global motion model
    (DVC's ``compress_global``; ``lead_latent`` is then the model, with a correction grid
    where ``lead_grid``) and no lead latent is coded."""

    payload: bytes
    recon: Any
    lead_level: int
    residual_level: int | None
    deadzone: float | None
    lead_latent: Any
    lead_predicted: bool
    lead_global: bool
    lead_grid: bool = False


def candidate_count(
    lead_levels: Sequence[int], residual_levels: Sequence[int], deadzones: Sequence[float],
    skip_residual: bool, global_models: int = 0,
) -> int:
    """How many candidates ``compress_inter`` yields: per lead level, one per residual level
    and dead zone, plus the skip candidate; as many again for each of ``global_models``
    global motion models (``compress_global``: the affine model, alone and with its
    correction grid)."""
    per_lead = len(residual_levels) * len(deadzones) + skip_residual
    return (len(lead_levels) + global_models) * per_lead


@dataclass(frozen=True)
class CodedGop:
    """A coded GOP: its frames in order and the decoder's reconstruction of each
    (``H x W x 3`` uint8 RGB, cropped to the source size)."""

    frames: tuple[CodedFrame, ...]
    recon: tuple[np.ndarray, ...]

    @property
    def payload_bytes(self) -> int:
        return sum(len(frame.payload) for frame in self.frames)


class LearnedVideoCodec(Protocol):
    """A learned codec ready to code GOPs (weights loaded, entropy tables built)."""

    name: str
    """``"intra"``, ``"dvc"`` or ``"fvc"``."""
    model_id: str
    """Stable id written into streams: names plus weights SHA-256 prefixes."""
    levels: int
    """Qualities ``1..levels`` (1 = lowest rate)."""

    def quality_index(self, quality: int) -> int:
        """The 0-based level of ``quality``; a one-line error outside ``1..levels``."""
        ...

    def encode_gop(
        self, frames: Sequence[np.ndarray], quality: int, intra_offset: int = 0
    ) -> CodedGop:
        """Code one closed GOP (first frame intra) at ``quality``, intra frames
        ``intra_offset`` levels higher (capped at the top level)."""
        ...

    def decode_gop(
        self, frames: Sequence[CodedFrame], width: int, height: int, quality: int,
        intra_offset: int = 0,
    ) -> list[np.ndarray]:
        """Decode a GOP coded by :meth:`encode_gop` to its exact reconstruction."""
        ...


class TrainableCodec(Protocol):
    """What the training job needs from a learned codec model (an ``nn.Module``)."""

    stages: tuple[str, ...]
    """Training stages in order, e.g. ``("rd",)`` for intra, ``("motion", "rd")`` for DVC."""
    fine_tune_stages: tuple[str, ...]
    """Stages run only when asked for (``gopflow train codec --stages``), on installed
    weights: e.g. DVC's ``"residual"``."""
    frames_per_sample: int
    """Frames to code per training sample (after the reference): 1 for intra; the default
    chain length for P models (``gopflow train codec --frames`` overrides it)."""
    levels: int

    def frozen_modules(self, stage: str) -> tuple[str, ...]:
        """Names of the child modules that ``stage`` leaves exactly as they are (entropy
        model quantiles included): the trainer drops their gradients."""
        ...

    def training_loss(
        self, reference: Any, frames: Any, level: Any, lmbda: Any, stage: str
    ) -> tuple[Any, dict[str, float]]:
        """``(loss, metrics)`` for one batch: ``frames`` ``N x T x 3 x H x W`` in [0, 1];
        ``reference`` ``N x 3 x H x W`` (the decoded previous frame; ``None`` for intra);
        ``level`` ``N`` long (0-based); ``lmbda`` ``N`` float. Loss = R + lmbda * 255^2 * D."""
        ...

    def aux_loss(self) -> Any:
        """CompressAI's auxiliary loss of the entropy bottlenecks (trained separately)."""
        ...
