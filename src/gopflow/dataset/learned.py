"""Reads of learned-codec payloads (``--codec dvc|fvc|intra``) in an archive.

A learned GOP's payload is its ``.gflv`` frame units back to back (kind, frame index,
payload, CRC32 each; ``docs/gflv-format.md``), without the stream's header and end unit.
What the header would carry is in the card (``settings.learned``: codec, quality, intra
offset, model id) and the index (width, height, first frame), so a payload decodes on its
own. The codec is loaded once per reader (weights checked against the registry's SHA-256,
``torch.load(..., weights_only=True)``) and decodes on the codec's fixed torch thread count,
so a read returns the encoder's reconstruction bit for bit.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from gopflow.codecs.learned.api import CODEC_NAMES, CodedFrame
from gopflow.codecs.learned.bitstream import BitstreamError, units_from_bytes
from gopflow.errors import CorruptInputError, InputError

LEARNED_CODECS = CODEC_NAMES


@dataclass(frozen=True)
class LearnedPayloads:
    """How an archive's learned payloads were coded (the card's ``settings.learned``)."""

    codec: str
    quality: int
    intra_offset: int
    model_id: str

    @classmethod
    def from_card(cls, card: dict[str, Any], where: str) -> LearnedPayloads:
        learned = (card.get("settings") or {}).get("learned")
        try:
            return cls(str(learned["codec"]), int(learned["quality"]),
                       int(learned["intra_offset"]), str(learned["model_id"]))
        except (TypeError, KeyError, ValueError):
            raise CorruptInputError(f"{where}: a learned archive's card has no "
                                    "settings.learned (codec, quality, intra_offset, "
                                    "model_id)") from None


class LearnedDecoder:
    """Decodes one archive's learned GOP payloads with one loaded codec (thread-safe)."""

    def __init__(self, payloads: LearnedPayloads) -> None:
        self.payloads = payloads
        self._codec: Any = None
        self._lock = threading.Lock()

    def _loaded(self) -> Any:
        with self._lock:
            if self._codec is None:
                from gopflow.codecs.learned.engine import load_codec

                codec = load_codec(self.payloads.codec)
                if codec.model_id != self.payloads.model_id:
                    raise InputError(
                        f"the archive was coded by model {self.payloads.model_id}; the "
                        f"installed {self.payloads.codec} weights are {codec.model_id}")
                self._codec = codec
            return self._codec

    def decode(self, data: bytes, first_frame: int, width: int, height: int, first: int = 0,
               last: int | None = None, name: str = "GOP") -> list[np.ndarray]:
        """Frames ``first .. last-1`` (default: all) of one GOP payload whose first unit is
        frame ``first_frame`` of its video, as ``height x width x 3`` uint8 RGB. Decoding
        starts at the last intra unit (key or refresh) at or before ``first`` and stops at
        ``last``."""
        try:
            units = units_from_bytes(data, first_frame, name)
        except BitstreamError as exc:
            raise CorruptInputError(str(exc)) from exc
        stop = len(units) if last is None else min(last, len(units))
        if stop <= first:
            return []
        if not units[0].kind.starts_gop:
            raise CorruptInputError(f"{name} does not start with an intra frame")
        entry = max(i for i in range(first + 1) if units[i].kind.starts_gop)
        frames = [CodedFrame(unit.kind, unit.payload) for unit in units[entry:stop]]
        p = self.payloads
        try:
            decoded = self._loaded().decode_gop(frames, width, height, p.quality,
                                                p.intra_offset)
        except BitstreamError as exc:
            raise CorruptInputError(f"{name}: {exc}") from exc
        return decoded[first - entry:]
