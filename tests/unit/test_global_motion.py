"""DVC's global motion model: the fit, the refinement, the 12-byte coding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gopflow.codecs.dvc.global_motion import (
    MATRIX_UNITS,
    SIZE,
    TRANSLATION_UNITS,
    GlobalMotion,
    fit_global_motion,
    refine_global_motion,
)
from gopflow.codecs.dvc.model import DvcReference, backward_warp, dis_flow
from gopflow.codecs.learned.bitstream import BitstreamError
from gopflow.codecs.learned.engine import build_codec_model, to_tensor


def _pan(count: int, height: int, width: int, step: float) -> list[np.ndarray]:
    """A textured pattern moving ``step`` pixels left per frame, computed exactly (a sum of
    random plane waves), so frame ``t`` is frame ``t - 1`` sampled ``step`` pixels right."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    waves = [(rng.uniform(0.3, 1.2), rng.uniform(-0.6, 0.6), rng.uniform(0.0, 6.3),
              rng.uniform(10.0, 25.0)) for _ in range(12)]
    frames = []
    for t in range(count):
        f = sum(a * np.sin(fx * (xx + step * t) + fy * yy + ph) for fx, fy, ph, a in waves)
        rgb = np.stack((128 + f, 128 + 0.7 * f, 128 - 0.5 * f), axis=-1)
        frames.append(np.clip(np.round(rgb), 0, 255).astype(np.uint8))
    return frames


def test_the_model_codes_in_twelve_bytes_and_refuses_other_lengths() -> None:
    motion = GlobalMotion(-32768, 32767, 5, -6, 7, -8)
    assert SIZE == 12
    assert GlobalMotion.from_bytes(motion.to_bytes()) == motion
    for data in (b"", motion.to_bytes()[:-1], motion.to_bytes() + b"\0"):
        with pytest.raises(BitstreamError, match="12 bytes"):
            GlobalMotion.from_bytes(data)


def test_flow_is_affine_about_the_frame_centre() -> None:
    motion = GlobalMotion(64, -32, MATRIX_UNITS // 100, 0, 0, -MATRIX_UNITS // 50)
    flow = motion.flow(9, 11)
    assert flow.shape == (1, 2, 9, 11) and flow.dtype == torch.float32
    assert float(flow[0, 0, 4, 5]) == pytest.approx(1.0)  # the centre: translation only
    assert float(flow[0, 1, 4, 5]) == pytest.approx(-0.5)
    assert float(flow[0, 0, 4, 10] - flow[0, 0, 4, 5]) == pytest.approx(5 * 0.01, abs=1e-4)
    assert float(flow[0, 1, 8, 5] - flow[0, 1, 4, 5]) == pytest.approx(-4 * 0.02, abs=1e-4)


def test_fit_recovers_a_camera_motion_despite_a_moving_object() -> None:
    truth = GlobalMotion(100, -40, 300, -50, 80, -200)
    flow = truth.flow(96, 128).clone()
    flow[:, :, 10:40, 20:60] += torch.tensor([6.0, -4.0]).view(1, 2, 1, 1)  # 10% of it
    fitted = fit_global_motion(flow)
    # Within 0.05 px of the camera's flow everywhere; the object's mean pull is 0.6 px.
    assert float((fitted.flow(96, 128) - truth.flow(96, 128)).abs().max()) < 0.05
    assert fit_global_motion(truth.flow(96, 128)) == truth


def test_refinement_moves_the_model_towards_the_true_pan() -> None:
    previous, current = (to_tensor(frame) for frame in _pan(2, 64, 96, 1.5))
    start = GlobalMotion(int(1.2 * TRANSLATION_UNITS), 0, 0, 0, 0, 0)

    def error(motion: GlobalMotion) -> float:
        warped = backward_warp(previous, motion.flow(64, 96))
        return float(torch.mean((warped - current)[..., :, :80] ** 2))

    refined = refine_global_motion(start, previous, current, backward_warp)
    assert error(refined) < error(start)
    assert abs(refined.tx - 1.5 * TRANSLATION_UNITS) < abs(start.tx - 1.5 * TRANSLATION_UNITS)
    # A model it cannot improve comes back as it was.
    assert refine_global_motion(refined, previous, current, backward_warp, steps=0) == refined


def test_dvc_fits_the_global_motion_of_a_pan() -> None:
    torch.manual_seed(1)
    dvc = build_codec_model({"class": "DvcCodec", "flow_channels": 8, "flow_levels": 3,
                             "motion_channels": 8, "motion_latent": 12,
                             "residual_channels": 16, "residual_latent": 24,
                             "hyper_channels": 8, "mc_channels": 8, "levels": 4})
    dvc.eval()
    dvc.update()
    previous, current = (to_tensor(frame) for frame in _pan(2, 64, 128, 2.0))
    assert float(dis_flow(current, previous)[0, 0].median()) == pytest.approx(2.0, abs=0.2)
    with torch.no_grad():
        (candidate,) = dvc.compress_global(current, DvcReference(previous, None), 1, [], (),
                                           skip_residual=True)
    motion = candidate.lead_latent
    assert candidate.lead_global and candidate.residual_level is None
    assert abs(motion.tx - 2 * TRANSLATION_UNITS) <= 0.2 * TRANSLATION_UNITS
    assert abs(motion.ty) <= 0.2 * TRANSLATION_UNITS
    assert max(abs(motion.a), abs(motion.b), abs(motion.c), abs(motion.d)) < MATRIX_UNITS // 200
    assert candidate.payload[:SIZE] == motion.to_bytes()
