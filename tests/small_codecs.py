"""Architectures of the tiny learned codecs the tests and the fuzz harness build (untrained,
4 quality levels): small enough to code a GOP in well under a second on one core."""

from __future__ import annotations

from typing import Any

SMALL_INTRA: dict[str, Any] = {"class": "IntraCodec", "channels": 16, "latent_channels": 24,
                               "hyper_channels": 16, "levels": 4}
INTER_ARCHS: dict[str, dict[str, Any]] = {
    "dvc": {"class": "DvcCodec", "flow_channels": 8, "flow_levels": 3, "motion_channels": 8,
            "motion_latent": 12, "residual_channels": 16, "residual_latent": 24,
            "hyper_channels": 8, "mc_channels": 8, "levels": 4},
    "fvc": {"class": "FvcCodec", "channels": 8, "offset_channels": 8, "offset_latent": 12,
            "residual_channels": 16, "residual_latent": 16, "hyper_channels": 8,
            "offset_groups": 2, "buffer": 2, "levels": 4},
}
