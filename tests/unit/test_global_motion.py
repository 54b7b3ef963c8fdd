"""DVC's global motion model: the fit, the refinement, the 12-byte coding."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from gopflow.codecs.dvc.global_motion import (
    GRID_BLOCKS,
    GRID_UNITS,
    MATRIX_UNITS,
    RANS_GRID,
    SIZE,
    TRANSLATION_UNITS,
    GlobalMotion,
    GridMotion,
    fit_global_motion,
    fit_motion_grid,
    refine_global_motion,
)
from gopflow.codecs.dvc.grid_coding import decode_grid, encode_grid, rate_proxy
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
        candidate, *gridded = dvc.compress_global(
            current, DvcReference(previous, None), 1, [], (), skip_residual=True)
    motion = candidate.lead_latent
    assert candidate.lead_global and candidate.residual_level is None
    assert not candidate.lead_grid
    # Then one candidate per grid size, each correcting the first model.
    assert [c.lead_latent.block for c in gridded] == list(GRID_BLOCKS)
    for grid in gridded:
        assert grid.lead_grid and grid.lead_global and grid.lead_latent.base == motion
        assert (grid.lead_latent.rows, grid.lead_latent.cols) == (-(-64 // grid.lead_latent.block),
                                                                  -(-128 // grid.lead_latent.block))
        assert grid.payload.startswith(grid.lead_latent.to_bytes())
    assert abs(motion.tx - 2 * TRANSLATION_UNITS) <= 0.2 * TRANSLATION_UNITS
    assert abs(motion.ty) <= 0.2 * TRANSLATION_UNITS
    assert max(abs(motion.a), abs(motion.b), abs(motion.c), abs(motion.d)) < MATRIX_UNITS // 200
    assert candidate.payload[:SIZE] == motion.to_bytes()


def _grid(rows: int, cols: int, seed: int) -> GridMotion:
    values = np.random.default_rng(seed).integers(-3, 4, size=(2, rows, cols), dtype=np.int8)
    values[0, 0, 0] = -128  # the extremes survive the row differences (mod 256)
    values[1, -1, -1] = 127
    return GridMotion(GlobalMotion(64, -32, 5, 0, 0, -7), 32, rows, cols, values.tobytes())


def _flat_grid(rows: int, cols: int) -> GridMotion:
    """A grid of equal corrections but for one: zlib codes it in fewer bytes than rANS."""
    values = np.full((2, rows, cols), 3, dtype=np.int8)
    values[1, -1, -1] = -128
    return GridMotion(GlobalMotion(64, -32, 5, 0, 0, -7), 32, rows, cols, values.tobytes())


@pytest.mark.parametrize("coding", ["rans", "zlib"])
def test_grid_codes_its_corrections_exactly_and_refuses_damaged_ones(coding: str) -> None:
    # A 96 x 160 padded frame in 32-px cells; the coder takes the shorter coding.
    grid = _grid(3, 5, seed=1) if coding == "rans" else _flat_grid(3, 5)
    data = grid.to_bytes()
    assert data[:SIZE] == grid.base.to_bytes()
    assert bool(data[SIZE] & RANS_GRID) == (coding == "rans")
    assert data[SIZE] & ~RANS_GRID == 2  # 32 px in 16-px steps
    assert GridMotion.read(data + b"residual", 96, 160) == (grid, len(data))
    assert GridMotion.read(data, 65, 129)[0] == grid  # the cell count rounds up
    head = data[:SIZE + 3]
    damaged = [(data[:SIZE + 2], "too short", 96),
               (data[:-1], "needs", 96),
               (data[:SIZE] + bytes([data[SIZE] & RANS_GRID]) + data[SIZE + 1:], "zero block", 96)]
    if coding == "zlib":
        damaged += [(head + bytes([0xFF]) * (len(data) - SIZE - 3), "corrupt", 96),
                    (data, "holds", 128)]
    else:
        damaged += [(head + bytes([255]) + data[SIZE + 4:], "Laplace scale", 96),
                    (data[:SIZE] + data[SIZE:SIZE + 1] + bytes([0, 9]) + data[SIZE + 3:SIZE + 12],
                     "too short", 96)]
    for bad, message, height in damaged:
        with pytest.raises(BitstreamError, match=message):
            GridMotion.read(bad, height, 160)
    with pytest.raises(ValueError, match="needs 30 bytes"):
        GridMotion(grid.base, 32, 3, 5, grid.corrections[:-1])


def test_rans_grid_coding_is_shorter_than_zlib_on_noisy_grids_and_exact_at_the_extremes() -> None:
    rng = np.random.default_rng(5)
    for rows, cols, spread in ((1, 1, 1.0), (9, 15, 0.5), (9, 15, 3.0), (18, 30, 2.5),
                               (18, 30, 120.0)):
        values = np.clip(np.round(rng.laplace(0.0, spread, (2, rows, cols))), -128, 127)
        values = values.astype(np.int8)
        values[0, 0, 0], values[1, -1, -1] = -128, 127  # escaped by rANS's bypass code
        coded = encode_grid(values)
        assert np.array_equal(decode_grid(coded, rows, cols), values)
    # A noisy 32-px grid of a 960 x 576 frame (as flower's: mean |MED residual| 2.5 units).
    values = np.round(rng.laplace(0.0, 2.5, (2, 18, 30))).astype(np.int8)
    grid = GridMotion(GlobalMotion(0, 0, 0, 0, 0, 0), 32, 18, 30, values.tobytes())
    differences = values.reshape(-1, 30).astype(np.uint8)
    differences[:, 1:] = differences[:, 1:] - differences[:, :-1]
    deflated = zlib.compress(differences.tobytes(), 9, wbits=-15)
    assert len(grid.to_bytes()) - SIZE - 3 < 0.9 * len(deflated)


def test_grid_flow_adds_the_smooth_corrections_to_the_affine_flow() -> None:
    base = GlobalMotion(64, -32, 5, 0, 0, -7)
    constant = GridMotion(base, 32, 2, 3, np.repeat(np.int8([6, -2]), 6).tobytes())
    difference = constant.flow(64, 96) - base.flow(64, 96)
    assert difference.shape == (1, 2, 64, 96) and constant.flow(64, 96).dtype == torch.float32
    assert torch.allclose(difference[0, 0], torch.full((64, 96), 6 / GRID_UNITS), atol=1e-6)
    assert torch.allclose(difference[0, 1], torch.full((64, 96), -2 / GRID_UNITS), atol=1e-6)
    one = np.zeros((2, 2, 3), dtype=np.int8)
    one[0, 1, 2] = 8  # one cell's u: full in its cell's middle, fading towards the others
    bump = (GridMotion(base, 32, 2, 3, one.tobytes()).flow(64, 96) - base.flow(64, 96))[0, 0]
    assert float(bump[48, 80]) == pytest.approx(8 / GRID_UNITS, abs=1e-5)
    assert float(bump[0, 0]) == pytest.approx(0.0, abs=1e-6)
    assert 0 < float(bump[40, 64]) < 8 / GRID_UNITS


def _half_pan() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, GlobalMotion]:
    """The left half pans 2 px a frame, the right half stands still: no affine model fits.
    ``(previous, current, their dense flow, the refined affine model)``."""
    moving = _pan(2, 64, 128, 2.0)
    still = _pan(1, 64, 128, 2.0)[0]
    previous = to_tensor(np.concatenate((moving[0][:, :64], still[:, 64:]), axis=1))
    current = to_tensor(np.concatenate((moving[1][:, :64], still[:, 64:]), axis=1))
    dense = dis_flow(current, previous)
    affine = refine_global_motion(fit_global_motion(dense), previous, current, backward_warp)
    return previous, current, dense, affine


def test_grid_fit_follows_motion_that_one_affine_model_misses() -> None:
    previous, current, dense, affine = _half_pan()
    grid = fit_motion_grid(affine, dense, previous, current, backward_warp, block=16)

    def error(flow: torch.Tensor) -> float:
        return float(torch.mean((backward_warp(previous, flow) - current)[..., 8:-8, 8:-8] ** 2))

    assert (grid.rows, grid.cols, grid.base) == (4, 8, affine)
    assert error(grid.flow(64, 128)) < 0.5 * error(affine.flow(64, 128))
    u = grid.flow(64, 128)[0, 0]
    assert float(u[32, 16]) == pytest.approx(2.0, abs=0.5)
    assert float(u[32, 112]) == pytest.approx(0.0, abs=0.5)


def test_rate_proxy_charges_what_the_neighbours_do_not_predict() -> None:
    flat = torch.full((1, 2, 4, 6), 3.0)
    spike = flat.clone()
    spike[0, 0, 2, 3] = 7.0
    assert float(rate_proxy(flat)) == 0.0
    assert float(rate_proxy(spike)) > 0.0
    grid = spike.clone().requires_grad_(True)
    rate_proxy(grid).backward()
    assert grid.grad is not None and float(grid.grad[0, 0, 2, 3]) > 0.0


def test_rate_aware_grid_fit_spends_fewer_bytes_where_bits_are_dear() -> None:
    previous, current, dense, affine = _half_pan()
    plain = fit_motion_grid(affine, dense, previous, current, backward_warp, block=16)
    cheap = fit_motion_grid(affine, dense, previous, current, backward_warp, block=16,
                            rate_lambda=1e-5)
    generous = fit_motion_grid(affine, dense, previous, current, backward_warp, block=16,
                               rate_lambda=1e3)

    def error(flow: torch.Tensor) -> float:
        return float(torch.mean((backward_warp(previous, flow) - current)[..., 8:-8, 8:-8] ** 2))

    assert generous == plain  # bits all but free: the plain fit
    assert len(cheap.to_bytes()) < len(plain.to_bytes())
    assert error(cheap.flow(64, 128)) >= error(plain.flow(64, 128))
