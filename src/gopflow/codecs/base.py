"""The codec protocol every GOP encoder implements.

Data flow: an iterable of decoded frames (one closed GOP) -> ``encode_gop`` -> the bytes of
a self-contained segment whose first frame is an IDR/IRAP picture.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from gopflow.types import EncodeSettings, SourceFormat


class GopEncoder(Protocol):
    """Encodes one closed GOP to a standalone segment."""

    settings: EncodeSettings

    def encode_gop(self, frames: Iterable[Any], source: SourceFormat) -> bytes:
        """Encode ``frames`` (PyAV video frames in presentation order) to segment bytes."""
        ...
