"""Learned codec models and the GOP engine: exact round trips with the real rANS coder.

The models are untrained (fixed-seed random weights, built here): the entropy coder still
writes real bytes, so round trips, cropping and cross-process determinism are real checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from compressai.models.base import get_scale_table

from gopflow.codecs.dvc.model import DvcReference
from gopflow.codecs.learned.api import DEFAULT_MOTION_REFINEMENT, CodedFrame
from gopflow.codecs.learned.bitstream import (
    GLOBAL_LEAD,
    GRID_LEAD,
    PREDICTED_LEAD,
    BitstreamError,
    UnitKind,
)
from gopflow.codecs.learned.engine import (
    PROPAGATION,
    RDO_DEADZONES,
    RDO_LEAD_OFFSETS,
    RDO_REFINED_LEAD_OFFSETS,
    RDO_RESIDUAL_OFFSETS,
    GopCodec,
    build_codec_model,
    codec_threads,
    load_codec,
    model_digest,
    propagation_weight,
    registry_name,
    to_tensor,
)
from gopflow.codecs.learned.hyperprior import (
    GainedHyperprior,
    Refinement,
    resample_gains,
    set_side_search,
)
from gopflow.codecs.learned.intra import IntraCodec
from gopflow.errors import UsageError
from gopflow.zoo.registry import (
    ModelIntegrityError,
    ModelMissingError,
    install_model,
    read_registry,
)
from small_codecs import INTER_ARCHS, SMALL_INTRA

torch.set_num_threads(1)



def _model(arch: dict[str, Any], seed: int) -> Any:
    torch.manual_seed(seed)
    model = build_codec_model(arch)
    model.eval()
    model.update()
    return model


def _codec(
    name: str, mode_lambdas: list[float] | None = None, deadzones: tuple[float, ...] = (0.5,),
    adaptive_intra: bool | None = None, side_search: int = 0,
    lead_offsets: tuple[int, ...] = (0,), residual_offsets: tuple[int, ...] = (0,),
    refine_steps: int = 0, skip_residual: bool = False, predict_lead: bool = False,
    global_motion: bool = False,
) -> GopCodec:
    intra = _model(SMALL_INTRA, 0)
    inter = _model(INTER_ARCHS[name], 1) if name != "intra" else None
    return GopCodec(name, intra, inter, f"{name}:test", mode_lambdas, adaptive_intra,
                    deadzones, side_search, lead_offsets, residual_offsets, refine_steps,
                    skip_residual, predict_lead, global_motion)


def _frames(count: int, height: int, width: int) -> list[np.ndarray]:
    """A moving smooth pattern with texture (so inter frames have motion to code)."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    noise = rng.integers(0, 40, size=(height, width, 3)).astype(np.float32)
    frames = []
    for t in range(count):
        base = 120 + 80 * np.sin((xx + 3 * t) / 9.0)[..., None] * np.cos(yy / 7.0)[..., None]
        frame = base + np.roll(noise, 2 * t, axis=1) * np.array([1.0, 0.5, 0.2])
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def _names() -> list[str]:
    return ["intra", *INTER_ARCHS]


@pytest.mark.parametrize("name", _names())
def test_round_trip_is_exact_and_crops_odd_sizes(name: str) -> None:
    codec = _codec(name)
    frames = _frames(3, 54, 70)
    gop = codec.encode_gop(frames, quality=2)
    kinds = [frame.kind for frame in gop.frames]
    expected_inter = UnitKind.INTRA if name == "intra" else UnitKind.INTER
    assert kinds == [UnitKind.INTRA, expected_inter, expected_inter]
    assert all(r.shape == (54, 70, 3) and r.dtype == np.uint8 for r in gop.recon)
    assert gop.payload_bytes > 0
    decoded = codec.decode_gop(gop.frames, width=70, height=54, quality=2)
    assert len(decoded) == 3
    for got, want in zip(decoded, gop.recon, strict=True):
        np.testing.assert_array_equal(got, want)


def test_levels_are_checked_and_payloads_validated() -> None:
    codec = _codec("intra")
    frames = _frames(1, 64, 64)
    with pytest.raises(UsageError):
        codec.encode_gop(frames, quality=0)
    with pytest.raises(UsageError):
        codec.encode_gop(frames, quality=5)
    gop = codec.encode_gop(frames, quality=4)
    # A payload decoded at a different frame size (other latent shape) is refused cleanly.
    with pytest.raises(BitstreamError):
        codec.decode_gop(gop.frames, width=200, height=64, quality=4)
    with pytest.raises(BitstreamError):
        codec.decode_gop([CodedFrame(UnitKind.INTRA, gop.frames[0].payload[:-3])], 64, 64, 4)


def test_codec_threads_restores_the_count() -> None:
    before = torch.get_num_threads()
    with codec_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before


_DECODER = r"""
import json, sys
import numpy as np, torch
torch.set_num_threads(2)
from gopflow.codecs.learned.api import CodedFrame
from gopflow.codecs.learned.bitstream import UnitKind
from gopflow.codecs.learned.engine import GopCodec, build_codec_model
spec = json.load(open(sys.argv[1]))
def load(arch, path):
    model = build_codec_model(arch)
    model.load_state_dict(torch.load(path, weights_only=True))
    model.eval()
    model.update()
    return model
intra = load(spec["intra"], spec["intra_path"])
inter = load(spec["inter"], spec["inter_path"]) if spec["inter"] else None
codec = GopCodec(spec["name"], intra, inter, "x")
frames = [CodedFrame(UnitKind(k), open(p, "rb").read()) for k, p in spec["frames"]]
out = codec.decode_gop(frames, spec["width"], spec["height"], spec["level"], spec["offset"])
np.save(spec["out"], np.stack(out))
"""


@pytest.mark.parametrize("name", _names())
def test_another_process_with_other_threads_decodes_the_same(name: str, tmp_path: Path) -> None:
    # P models with every encoder decision on: they must change nothing a decoder computes.
    inter = name != "intra"
    codec = (_codec(name, [0.001] * 4, RDO_DEADZONES, adaptive_intra=True, side_search=3,
                    lead_offsets=RDO_LEAD_OFFSETS, residual_offsets=RDO_RESIDUAL_OFFSETS,
                    refine_steps=3, skip_residual=True, predict_lead=True,
                    global_motion=name == "dvc")
             if inter else _codec(name))
    frames = _frames(3, 64, 96)
    offset = 1 if inter else 0
    with codec_threads(2):  # the caller's thread count must not matter
        gop = codec.encode_gop(frames, quality=3, intra_offset=offset)
    torch.save(codec.intra.state_dict(), tmp_path / "intra.pt")
    if codec.inter is not None:
        torch.save(codec.inter.state_dict(), tmp_path / "inter.pt")
    paths = []
    for i, frame in enumerate(gop.frames):
        path = tmp_path / f"frame{i}.bin"
        path.write_bytes(frame.payload)
        paths.append([int(frame.kind), str(path)])
    spec = {
        "name": name, "intra": SMALL_INTRA, "intra_path": str(tmp_path / "intra.pt"),
        "inter": INTER_ARCHS.get(name), "inter_path": str(tmp_path / "inter.pt"),
        "frames": paths, "width": 96, "height": 64, "level": 3, "offset": offset,
        "out": str(tmp_path / "out.npy"),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    subprocess.run([sys.executable, "-c", _DECODER, str(tmp_path / "spec.json")],
                   check=True, env=env, timeout=120)
    decoded = np.load(tmp_path / "out.npy")
    np.testing.assert_array_equal(decoded, np.stack(gop.recon))


@pytest.mark.parametrize("name", _names())
def test_training_loss_has_gradients_in_every_stage(name: str) -> None:
    arch = SMALL_INTRA if name == "intra" else INTER_ARCHS[name]
    torch.manual_seed(3)
    model = build_codec_model(arch)
    model.train()
    frames = torch.rand(2, model.frames_per_sample, 3, 64, 64)
    reference = None if name == "intra" else torch.rand(2, 3, 64, 64)
    for stage in model.stages:
        model.zero_grad()
        loss, metrics = model.training_loss(
            reference, frames, torch.tensor([0, 3]), torch.tensor([0.01, 0.05]), stage)
        assert loss.ndim == 0 and torch.isfinite(loss)
        assert metrics["bpp"] > 0
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    assert torch.isfinite(model.aux_loss())


def test_dvc_residual_stage_trains_the_residual_coder_and_compensation_alone() -> None:
    torch.manual_seed(3)
    model = build_codec_model(INTER_ARCHS["dvc"])
    model.train()
    assert model.fine_tune_stages == ("residual",)
    frames, reference = torch.rand(2, 2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    loss, metrics = model.training_loss(
        reference, frames, torch.tensor([0, 3]), torch.tensor([0.01, 0.05]), "residual")
    loss.backward()
    learning = {name.split(".")[0] for name, p in model.named_parameters()
                if p.grad is not None and float(p.grad.abs().sum()) > 0}
    assert learning == {"r_a", "r_s", "residual_prior", "mc"}
    assert set(model.frozen_modules("residual")) == {"flow", "m_a", "m_s", "motion_prior"}
    assert metrics["bpp"] > 0
    with pytest.raises(ValueError, match="no training stage"):
        model.training_loss(reference, frames, torch.tensor([0, 3]),
                            torch.tensor([0.01, 0.05]), "nope")


def test_dvc_residual_stage_codes_against_the_closer_of_latent_and_grid_motion() -> None:
    torch.manual_seed(4)
    model = build_codec_model(INTER_ARCHS["dvc"])
    model.train()
    smooth = torch.nn.functional.interpolate(torch.rand(2, 3, 20, 20), size=(80, 80),
                                             mode="bicubic", align_corners=False).clamp(0, 1)
    reference = smooth[..., 8:72, 8:72]
    frames = smooth[..., 5:69, 8:72][:, None]  # a 3 px pan: the grid motion follows it
    grid = model.grid_prediction(frames[:, 0], reference)
    assert grid.shape == reference.shape
    _, metrics = model.training_loss(
        reference, frames, torch.tensor([1, 3]), torch.tensor([0.01, 0.05]), "residual")
    assert metrics["grid"] == 1.0


def test_arch_rebuilds_the_same_model() -> None:
    torch.manual_seed(0)
    model = IntraCodec(**{k: v for k, v in SMALL_INTRA.items() if k != "class"})
    rebuilt = build_codec_model(model.arch())
    rebuilt.load_state_dict(model.state_dict())
    assert model_digest(rebuilt) == model_digest(model)
    with pytest.raises(UsageError):
        build_codec_model({"class": "Nope"})


def test_fvc_reference_buffer_is_bounded() -> None:
    model = _model(INTER_ARCHS["fvc"], 1)
    frames = [torch.rand(1, 3, 64, 64) for _ in range(4)]
    state = None
    with torch.no_grad():
        for frame in frames:
            state = model.next_state(state, frame)
        assert len(state) == INTER_ARCHS["fvc"]["buffer"]
        torch.testing.assert_close(state[0], model.extract(frames[-1]), rtol=0, atol=0)


def test_load_codec_from_a_registry_checks_presence(tmp_path: Path) -> None:
    with pytest.raises(ModelMissingError, match="gopflow train codec"):
        load_codec("dvc", tmp_path)
    for name, arch, seed in (("intra", SMALL_INTRA, 0), ("dvc", INTER_ARCHS["dvc"], 1)):
        model = _model(arch, seed)
        torch.save(model.state_dict(), tmp_path / f"{name}-src.pt")
        install_model(registry_name(name), tmp_path / f"{name}-src.pt", arch, directory=tmp_path)
    codec = load_codec("dvc", tmp_path)
    entries = read_registry(tmp_path)
    assert codec.model_id == (
        f"dvc:{entries['codec-dvc'].sha256[:12]}+{entries['codec-intra'].sha256[:12]}")
    frames = _frames(2, 64, 64)
    gop = codec.encode_gop(frames, quality=1)
    np.testing.assert_array_equal(np.stack(_codec("dvc").encode_gop(frames, 1).recon),
                                  np.stack(gop.recon))
    assert load_codec("intra", tmp_path).model_id.startswith("intra:")


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


@pytest.mark.parametrize("name", list(INTER_ARCHS))
def test_adaptive_intra_keeps_the_cheaper_frame_type(name: str) -> None:
    # Frame 1 is a scene cut (another picture); frames 2-3 continue it.
    frames = _frames(4, 64, 64)
    frames[1:] = [np.ascontiguousarray(f[::-1, ::-1]) for f in frames[1:]]
    fixed = _codec(name).encode_gop(frames, 2)
    as_intra = _codec("intra").encode_gop(frames[1:2], 2)
    inter_bytes, intra_bytes = len(fixed.frames[1].payload), len(as_intra.frames[0].payload)
    inter_mse, intra_mse = _mse(fixed.recon[1], frames[1]), _mse(as_intra.recon[0], frames[1])
    assert inter_bytes != intra_bytes and inter_mse != intra_mse
    # At frame 1 both candidates start from the same decoded frame 0, so the choice can be
    # checked directly: with lambda ~ 0 the smaller payload wins, with a huge lambda the
    # smaller error wins.
    for lmbda, want_intra in ((1e-12, intra_bytes < inter_bytes), (1e6, intra_mse < inter_mse)):
        codec = _codec(name, [lmbda] * 4)
        gop = codec.encode_gop(frames, 2)
        assert gop.frames[0].kind == UnitKind.INTRA
        assert gop.frames[1].kind == (UnitKind.REFRESH if want_intra else UnitKind.INTER)
        chosen = as_intra if want_intra else fixed
        index = 0 if want_intra else 1
        assert gop.frames[1].payload == chosen.frames[index].payload
        np.testing.assert_array_equal(gop.recon[1], chosen.recon[index])
        # Mixed frame types decode exactly, each intra frame restarting the reference chain.
        decoded = codec.decode_gop(gop.frames, width=64, height=64, quality=2)
        for got, want in zip(decoded, gop.recon, strict=True):
            np.testing.assert_array_equal(got, want)
    # One lambda per level, or the codec refuses to start.
    with pytest.raises(UsageError, match="one lambda per level"):
        _codec(name, [0.01, 0.02])


def test_adaptive_intra_reads_the_trained_lambdas(tmp_path: Path) -> None:
    for name, arch, seed in (("intra", SMALL_INTRA, 0), ("dvc", INTER_ARCHS["dvc"], 1)):
        torch.save(_model(arch, seed).state_dict(), tmp_path / f"{name}-src.pt")
        install_model(registry_name(name), tmp_path / f"{name}-src.pt", arch, directory=tmp_path)
    with pytest.raises(ModelIntegrityError, match="no training lambdas"):
        load_codec("dvc", tmp_path, adaptive_intra=True)
    assert load_codec("dvc", tmp_path).mode_lambdas is None
    metadata = tmp_path / "codec-dvc.json"
    metadata.write_text(json.dumps({"lambdas": [0.001, 0.002, 0.004, 0.008]}))
    install_model("codec-dvc", tmp_path / "dvc-src.pt", INTER_ARCHS["dvc"], (metadata,),
                  tmp_path)
    codec = load_codec("dvc", tmp_path, adaptive_intra=True)
    assert codec.mode_lambdas == (0.001, 0.002, 0.004, 0.008)
    # The motion refinement: on with --rdo by default, its steps overridable, 0 turns it off.
    assert codec.refinement is None
    rdo = load_codec("dvc", tmp_path, rdo=True)
    refined = rdo.refinement
    assert refined is not None and refined.steps == DEFAULT_MOTION_REFINEMENT["dvc"] > 0
    assert refined.lambdas == codec.mode_lambdas
    assert rdo.lead_offsets == RDO_REFINED_LEAD_OFFSETS  # refined motion needs fewer levels
    assert rdo.skip_residual and not codec.skip_residual  # skip is an --rdo choice
    assert rdo.predict_lead and not codec.predict_lead  # so is the motion prediction
    unrefined = load_codec("dvc", tmp_path, rdo=True, refine_steps=0)
    assert unrefined.refinement is None and unrefined.lead_offsets == RDO_LEAD_OFFSETS
    alone = load_codec("dvc", tmp_path, refine_steps=5).refinement  # needs the lambdas too
    assert alone is not None and alone.steps == 5
    with pytest.raises(UsageError, match=">= 0"):
        load_codec("dvc", tmp_path, rdo=True, refine_steps=-1)
    with pytest.raises(UsageError, match="dvc and fvc"):
        load_codec("intra", tmp_path, refine_steps=3)


def test_training_pass_rounds_the_decoder_path_and_keeps_gradients() -> None:
    """Mixed quantisation: in training, h_s and the returned latents see the coder's rounding
    (straight-through), the rate terms see noise; in eval, the pass equals the real coder's."""
    torch.manual_seed(0)
    prior = GainedHyperprior(8, 8, levels=2)
    y = (torch.randn(2, 8, 8, 8) * 3).requires_grad_()
    level = torch.tensor([0, 1])
    prior.train()
    y_hat, bits = prior(y, level)
    gain, inv_gain = prior.gain.abs()[level][:, :, None, None], prior.inv_gain.abs()[level]
    symbols = y_hat * inv_gain[:, :, None, None].reciprocal()
    assert torch.allclose(symbols, torch.round(y * gain), atol=1e-4)
    (y_hat.sum() + bits.sum()).backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    prior.eval()
    prior.entropy_bottleneck.update(force=True)
    prior.gaussian_conditional.update_scale_table(get_scale_table())
    with torch.no_grad():
        _, coded = prior.compress(y[:1].detach(), 1)
        assert torch.equal(prior(y[:1].detach(), torch.tensor([1]))[0], coded)


def test_gains_resample_in_log_lambda() -> None:
    gains = torch.tensor([[1.0, 4.0], [2.0, 2.0], [4.0, 1.0]])
    lambdas = (0.001, 0.002, 0.004)
    same = resample_gains(gains, lambdas, lambdas)
    assert torch.allclose(same, gains)
    between, below, above = resample_gains(gains, lambdas, (0.001 * 2**0.5, 0.0005, 0.008))
    assert torch.allclose(between, torch.tensor([2**0.5, 2 * 2**0.5]))
    assert torch.allclose(below, torch.tensor([0.5, 8.0]))
    assert torch.allclose(above, torch.tensor([8.0, 0.5]))
    with pytest.raises(ValueError, match="gain vectors"):
        resample_gains(gains, lambdas[:2], lambdas)


def test_dvc_motion_warm_up_trains_the_flow_network_even_when_no_motion_is_coded() -> None:
    """The warm-up's uncoded-flow term: with the motion decoder silenced (it decodes no
    motion whatever is coded), the flow network still gets a gradient and the loss counts
    the uncoded warp's error on top of the coded one's rate-distortion cost."""
    model = build_codec_model(INTER_ARCHS["dvc"])
    model.train()
    with torch.no_grad():
        for parameter in model.m_s.parameters():
            parameter.zero_()
    frames = torch.from_numpy(np.stack(_frames(2, 64, 64))).permute(0, 3, 1, 2).float() / 255
    reference, x = frames[:1], frames[1:]
    level, lmbda = torch.tensor([3]), torch.tensor([0.013])
    warped, loss, metrics = model.motion_warm_up_loss(x, reference, level, lmbda)
    assert torch.allclose(warped, reference, atol=1e-5)  # no decoded motion: the reference
    assert float(loss) > metrics["loss"]
    loss.backward()
    flow_grads = [p.grad for p in model.flow.parameters() if p.grad is not None]
    assert flow_grads and sum(float(g.abs().sum()) for g in flow_grads) > 0


def test_dis_flow_follows_backward_warp_convention() -> None:
    """A frame that moved 3 px right: the teacher's flow points back by 3 px, and warping
    the reference with it rebuilds the frame far better than the unwarped reference."""
    from gopflow.codecs.dvc.model import backward_warp, dis_flow

    reference = torch.from_numpy(np.stack(_frames(1, 96, 128))).permute(0, 3, 1, 2) / 255.0
    current = torch.roll(reference, shifts=3, dims=-1)
    flow = dis_flow(current, reference)
    inner = (slice(None), slice(None), slice(16, -16), slice(16, -16))
    assert torch.allclose(flow[:, 0][inner[:1] + inner[2:]].median(), torch.tensor(-3.0),
                          atol=0.25)
    assert flow[:, 1][inner[:1] + inner[2:]].abs().median() < 0.25
    warped_error = ((backward_warp(reference, flow) - current)[inner] ** 2).mean()
    assert warped_error < 0.1 * ((reference - current)[inner] ** 2).mean()


def test_pyramid_flow_corrects_its_initial_flow() -> None:
    """With an initial flow the pyramid returns it plus its correction: zero correction
    (silenced last layers) gives back the initial flow exactly, none gives zero motion."""
    from gopflow.codecs.dvc.model import PyramidFlow

    torch.manual_seed(3)
    net = PyramidFlow(8, 3)
    with torch.no_grad():
        for level in net.nets:
            level[-1].weight.zero_()
            level[-1].bias.zero_()
    frames = torch.rand(2, 3, 64, 64)
    initial = torch.randn(2, 2, 64, 64)
    assert torch.equal(net(frames, frames.flip(0), initial), initial)
    assert torch.count_nonzero(net(frames, frames.flip(0))) == 0


def _prior() -> GainedHyperprior:
    torch.manual_seed(0)
    prior = GainedHyperprior(8, 8, levels=2)
    prior.eval()
    prior.entropy_bottleneck.update(force=True)
    prior.gaussian_conditional.update_scale_table(get_scale_table())
    return prior


def test_dead_zone_zeroes_small_symbols_and_the_decoder_reads_them() -> None:
    prior = _prior()
    y = torch.randn(1, 8, 16, 16) * 2
    gain = prior.gain.abs()[1][None, :, None, None]
    with torch.no_grad():
        plain, plain_hat = prior.compress(y, 1)
        same, same_hat = prior.compress(y, 1, deadzone=0.5)
        assert same == plain and torch.equal(same_hat, plain_hat)
        sizes = []
        for deadzone in (1.0, 2.0, 1e9):
            code, y_hat = prior.compress(y, 1, deadzone)
            symbols = torch.round(y_hat / prior.inv_gain.abs()[1][None, :, None, None])
            small = (y * gain).abs() < deadzone
            assert torch.all(symbols[small] == 0)
            assert torch.equal(symbols[~small], torch.round(y * gain)[~small])
            assert torch.equal(prior.decompress(code, (16, 16), 1), y_hat)
            sizes.append(len(code.y_string) + len(code.z_string))
        assert len(plain.y_string) + len(plain.z_string) > sizes[0] > sizes[1] > sizes[2]


def test_side_search_shortens_the_strings_of_the_same_symbols() -> None:
    prior = _prior()
    y = torch.randn(1, 8, 16, 16)
    y[..., :8] *= 8.0  # large symbols on the left, almost none on the right
    y[..., 8:] *= 0.1
    with torch.no_grad():
        prior.h_a[-1].weight.zero_()  # an uninformative guess: the same z everywhere
        prior.h_s[-2].bias.fill_(0.5)
        for deadzone in (0.5, 2.0):
            plain, plain_hat = prior.compress(y, 1, deadzone)
            prior.side_search = 30
            searched, searched_hat = prior.compress(y, 1, deadzone)
            again, _ = prior.compress(y, 1, deadzone)
            prior.side_search = 0
            assert torch.equal(searched_hat, plain_hat)  # same integers, same reconstruction
            assert again == searched  # the search is repeatable
            assert torch.equal(prior.decompress(searched, (16, 16), 1), plain_hat)
            # A constant z is a poor guess: the search must find shorter strings.
            assert len(searched.y_string) + len(searched.z_string) < (
                len(plain.y_string) + len(plain.z_string))
    with pytest.raises(ValueError, match=">= 0"):
        set_side_search(prior, -1)


def test_refinement_lowers_the_real_cost_of_a_poor_latent() -> None:
    prior = _prior()
    target = torch.randn(1, 8, 16, 16) * 4.0
    start = torch.zeros_like(target)  # a poor guess: it codes nothing of the target
    lambdas = (1e-2, 1e-2)  # distortion dominates even under an untrained prior

    def cost(latent: torch.Tensor) -> float:  # real bytes of the coded integers
        with torch.no_grad():
            code, y_hat = prior.compress(latent, 1)
        bits = 8 * (len(code.y_string) + len(code.z_string))
        return bits / 16**2 + lambdas[1] * 255**2 * float(torch.mean((y_hat - target) ** 2))

    refinement = Refinement(lambdas, steps=30, step=0.5)
    refined = prior.refine(start, 1, lambda y_hat: y_hat, target, refinement)
    again = prior.refine(start, 1, lambda y_hat: y_hat, target, refinement)
    assert torch.equal(refined, again)  # repeatable: the noise comes from a fixed seed
    assert cost(refined) < 0.5 * cost(start)
    assert not start.any()  # the caller's latent is left as it was
    unrefined = prior.refine(start, 1, lambda y_hat: y_hat, target, Refinement(lambdas, 0))
    assert torch.equal(unrefined, start)
    # A latent that already codes the target is not made worse by its own measure.
    exact = torch.round(target * prior.gain.abs()[1][None, :, None, None]) / prior.gain.abs()[
        1][None, :, None, None]
    assert cost(prior.refine(exact, 1, lambda y_hat: y_hat, target, refinement)) <= (
        cost(exact) * 1.01)


@pytest.mark.parametrize("name", list(INTER_ARCHS))
def test_lead_refinement_changes_only_the_encoder(name: str) -> None:
    frames = _frames(3, 64, 64)
    lambdas = [1.0] * 4  # distortion dominates: the refinement must move the lead latent
    plain = _codec(name, lambdas, adaptive_intra=False).encode_gop(frames, 2)
    codec = _codec(name, lambdas, adaptive_intra=False, refine_steps=30)
    assert codec.refinement is not None and codec.refinement.lambdas == tuple(lambdas)
    refined = codec.encode_gop(frames, 2)
    assert refined.frames[0] == plain.frames[0]  # the key frame has no lead latent
    assert [f.payload for f in refined.frames[1:]] != [f.payload for f in plain.frames[1:]]
    decoder = _codec(name)  # the decoder knows nothing of the refinement
    np.testing.assert_array_equal(np.stack(decoder.decode_gop(refined.frames, 64, 64, 2)),
                                  np.stack(refined.recon))
    # With level choices and the side search, the chosen candidate is coded again from its
    # refined latent: the same frames, no more bytes.
    choices = {"lead_offsets": (0, 1), "residual_offsets": (0, 1)}
    chosen = _codec(name, lambdas, adaptive_intra=False, refine_steps=30, **choices)
    searched = _codec(name, lambdas, adaptive_intra=False, refine_steps=30, side_search=5,
                      **choices)
    gop, searched_gop = chosen.encode_gop(frames, 2), searched.encode_gop(frames, 2)
    np.testing.assert_array_equal(np.stack(searched_gop.recon), np.stack(gop.recon))
    assert searched_gop.payload_bytes <= gop.payload_bytes
    np.testing.assert_array_equal(np.stack(decoder.decode_gop(searched_gop.frames, 64, 64, 2)),
                                  np.stack(gop.recon))
    with pytest.raises(UsageError, match="lambdas"):
        _codec(name, None, adaptive_intra=False, refine_steps=30)
    with pytest.raises(UsageError, match="refinement steps"):
        _codec(name, lambdas, adaptive_intra=False, refine_steps=-1)


@pytest.mark.parametrize("name", list(INTER_ARCHS))
def test_side_search_reaches_every_latent_and_decodes_exactly(name: str) -> None:
    frames = _frames(3, 64, 64)
    plain = _codec(name).encode_gop(frames, 2)
    codec = _codec(name, side_search=10)
    priors = [m for model in (codec.intra, codec.inter) for m in model.modules()
              if isinstance(m, GainedHyperprior)]
    assert len(priors) == 3 and all(prior.side_search == 10 for prior in priors)
    gop = codec.encode_gop(frames, 2)
    assert gop.payload_bytes <= plain.payload_bytes  # tiny untrained models: often equal
    for got, want, before in zip(codec.decode_gop(gop.frames, 64, 64, 2), gop.recon,
                                 plain.recon, strict=True):
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, before)  # only the rate changes


@pytest.mark.parametrize("name", list(INTER_ARCHS))
def test_rdo_keeps_the_cheapest_dead_zone(name: str) -> None:
    frames = _frames(3, 64, 64)
    candidates = (0.5, 2.0, 1e9)

    def codec_with(lmbda: float, deadzones: tuple[float, ...]) -> GopCodec:
        codec = _codec(name, [lmbda] * 4, deadzones, adaptive_intra=False)
        assert codec.inter is not None
        with torch.no_grad():  # untrained residual latents are near 0: give them symbols
            codec.inter.residual_prior.gain.mul_(50.0)
        return codec

    single = {zone: codec_with(0.01, (zone,)).encode_gop(frames[:2], 2) for zone in candidates}
    payloads = {zone: gop.frames[1].payload for zone, gop in single.items()}
    assert len(set(payloads.values())) == 3
    chosen = []
    for lmbda in (1e-9, 1e4):
        gop = codec_with(lmbda, candidates).encode_gop(frames, 2)
        weight = lmbda * propagation_weight(1)  # frame 1 of 3: one later frame predicts from it
        costs = {zone: 8 * len(payloads[zone]) / 64**2
                 + weight * _mse(single[zone].recon[1], frames[1]) for zone in candidates}
        best = min(costs, key=costs.__getitem__)
        chosen.append(best)
        assert gop.frames[1].payload == payloads[best]
        np.testing.assert_array_equal(gop.recon[1], single[best].recon[1])
        assert [f.kind for f in gop.frames] == [UnitKind.INTRA, UnitKind.INTER, UnitKind.INTER]
    assert chosen == [1e9, 0.5]  # rate only: code no residual; distortion only: plain rounding
    # Rate-distortion choices need the lambdas, and dead zones below rounding make no sense.
    with pytest.raises(UsageError, match="lambdas"):
        _codec(name, None, candidates)
    with pytest.raises(UsageError, match="dead zones"):
        _codec(name, [0.01] * 4, (0.25,))


@pytest.mark.parametrize("name", list(INTER_ARCHS))
def test_rdo_keeps_the_cheapest_levels_and_names_them_in_q_units(name: str) -> None:
    frames = _frames(2, 64, 64)

    def codec_with(lmbda: float, side_search: int = 0) -> GopCodec:
        codec = _codec(name, [lmbda] * 4, (0.5,), adaptive_intra=False, side_search=side_search,
                       lead_offsets=(0, 1, 2), residual_offsets=(-1, 0, 1))
        assert codec.inter is not None
        with torch.no_grad():  # untrained residual latents are near 0: give them symbols
            codec.inter.residual_prior.gain.mul_(50.0)
        return codec

    chosen = []
    for lmbda in (1e-9, 1e4):
        codec = codec_with(lmbda)
        assert codec.inter is not None
        gop = codec.encode_gop(frames, 2)  # 0-based level 1: motion 1..3, residual 0..2
        state = codec.inter.next_state(None, to_tensor(gop.recon[0]))
        costs: dict[tuple[int, int], tuple[float, bytes]] = {}
        with torch.no_grad():
            for lead in (1, 2, 3):
                for residual in (0, 1, 2):
                    (one,) = codec.inter.compress_inter(
                        to_tensor(frames[1]), state, (lead,), (residual,), (0.5,))
                    recon, _ = codec.inter.decompress_inter(one.payload, state, lead, residual)
                    picture = torch.round(recon * 255.0)[0].permute(1, 2, 0).numpy()
                    costs[lead, residual] = (
                        8 * len(one.payload) / 64**2 + lmbda * _mse(picture, frames[1]),
                        one.payload)
        assert len({payload for _, payload in costs.values()}) == 9
        best = min(costs, key=lambda levels: costs[levels][0])
        chosen.append(best)
        frame = gop.frames[1]
        if best == (1, 1):
            assert (frame.kind, frame.payload) == (UnitKind.INTER, costs[best][1])
        else:
            assert frame.kind == UnitKind.LEVELED_INTER
            assert frame.payload == bytes(best) + costs[best][1]
        decoded = codec.decode_gop(gop.frames, 64, 64, 2)
        np.testing.assert_array_equal(np.stack(decoded), np.stack(gop.recon))
        # The side-information search codes the chosen candidate again: same frames.
        searched = codec_with(lmbda, side_search=10).encode_gop(frames, 2)
        assert searched.payload_bytes <= gop.payload_bytes
        assert searched.frames[1].payload[:2] == frame.payload[:2] or best == (1, 1)
        np.testing.assert_array_equal(np.stack(searched.recon), np.stack(gop.recon))
    assert any(best != (1, 1) for best in chosen)  # some frame was written as a Q unit
    # A Q unit naming a level the codec lacks, or too short for its levels, is refused.
    for payload in (bytes((9, 1)) + gop.frames[1].payload[2:], b"\x01"):
        forged = (gop.frames[0], CodedFrame(UnitKind.LEVELED_INTER, payload))
        with pytest.raises(BitstreamError, match="Q unit"):
            codec.decode_gop(forged, 64, 64, 2)
    with pytest.raises(UsageError, match="include 0"):
        _codec(name, [0.01] * 4, lead_offsets=(1, 2))


@pytest.mark.parametrize("name", list(INTER_ARCHS))
def test_rdo_skips_the_residual_where_it_does_not_pay_and_s_units_decode(name: str) -> None:
    frames = _frames(3, 64, 64)

    def codec_with(lmbda: float, skip: bool, side_search: int = 0) -> GopCodec:
        codec = _codec(name, [lmbda] * 4, (0.5, 2.0), adaptive_intra=False,
                       side_search=side_search, skip_residual=skip)
        assert codec.inter is not None
        with torch.no_grad():  # untrained residual latents are near 0: give them symbols
            codec.inter.residual_prior.gain.mul_(50.0)
        return codec

    # Rate only: every P frame drops its residual (side information included) for an S unit.
    coded = codec_with(1e-9, skip=False).encode_gop(frames, 2)
    codec = codec_with(1e-9, skip=True)
    assert codec.inter is not None
    skipped = codec.encode_gop(frames, 2)
    assert [f.kind for f in skipped.frames] == [UnitKind.INTRA, UnitKind.SKIP, UnitKind.SKIP]
    for frame, other in zip(skipped.frames[1:], coded.frames[1:], strict=True):
        assert frame.payload[0] == 1  # the stream's 0-based level: motion is not moved
        assert len(frame.payload) < len(other.payload)
    decoded = codec.decode_gop(skipped.frames, 64, 64, 2)
    np.testing.assert_array_equal(np.stack(decoded), np.stack(skipped.recon))
    # An S payload is the lead latent alone; the residual is all zeros on both sides.
    state = codec.inter.next_state(None, to_tensor(skipped.recon[0]))
    with torch.no_grad():
        (alone,) = codec.inter.compress_inter(to_tensor(frames[1]), state, (1,), (), (),
                                              skip_residual=True)
        assert (alone.residual_level, alone.deadzone) == (None, None)
        assert skipped.frames[1].payload == b"\x01" + alone.payload
        recon, _ = codec.inter.decompress_inter(alone.payload, state, 1, None)
    np.testing.assert_array_equal(
        torch.round(recon * 255.0)[0].permute(1, 2, 0).numpy(), skipped.recon[1])
    # The side-information search re-codes the skip candidate: same frames, no more bytes.
    searched = codec_with(1e-9, skip=True, side_search=10).encode_gop(frames, 2)
    assert [f.kind for f in searched.frames] == [f.kind for f in skipped.frames]
    assert searched.payload_bytes <= skipped.payload_bytes
    np.testing.assert_array_equal(np.stack(searched.recon), np.stack(skipped.recon))
    # Distortion only: frame 1 (the same reference as above) keeps its residual, which
    # brings it closer to the source than the skip does.
    kept = codec_with(1e4, skip=True).encode_gop(frames, 2)
    assert kept.frames[1].kind == UnitKind.INTER
    assert _mse(kept.recon[1], frames[1]) < _mse(skipped.recon[1], frames[1])
    # An S unit without its level byte, or naming a level the codec lacks, is refused.
    for payload in (b"", bytes((9,)) + alone.payload):
        forged = (skipped.frames[0], CodedFrame(UnitKind.SKIP, payload))
        with pytest.raises(BitstreamError, match="an S unit"):
            codec.decode_gop(forged, 64, 64, 2)


def test_dvc_codes_motion_as_a_difference_from_the_previous_p_frame() -> None:
    frames = _frames(4, 64, 64)

    def with_motion(codec: GopCodec) -> GopCodec:
        assert codec.inter is not None
        with torch.no_grad():  # untrained motion latents round to 0: quantise them finer
            codec.inter.motion_prior.gain.mul_(50.0)
            codec.inter.motion_prior.inv_gain.div_(50.0)
        return codec

    plain = with_motion(_codec("dvc")).encode_gop(frames, 2)
    codec = with_motion(_codec("dvc", predict_lead=True))
    assert codec.inter is not None
    gop = codec.encode_gop(frames, 2)
    # Frame 1 follows the intra frame: no motion to predict from, a plain P unit as before.
    assert gop.frames[:2] == plain.frames[:2]
    assert [f.kind for f in gop.frames[2:]] == [UnitKind.LEVELED_INTER] * 2
    for frame in gop.frames[2:]:  # the stream's levels, the lead byte flagged
        assert frame.payload[:2] == bytes((1 | PREDICTED_LEAD, 1))
        assert codec.inter_levels(frame, 1).lead_predicted
    decoded = codec.decode_gop(gop.frames, 64, 64, 2)
    np.testing.assert_array_equal(np.stack(decoded), np.stack(gop.recon))
    # The decoded motion is the previous frame's plus the coded difference: the flag matters.
    state = codec.inter.next_state(None, to_tensor(gop.recon[0]))
    with torch.no_grad():
        _, motion_1 = codec.inter.decompress_inter(gop.frames[1].payload, state, 1, 1)
        state = codec.inter.next_state(state, to_tensor(gop.recon[1]), motion_1)
        payload = gop.frames[2].payload[2:]
        predicted, motion_2 = codec.inter.decompress_inter(payload, state, 1, 1, True)
        _, difference = codec.inter.decompress_inter(payload, state, 1, 1)
    assert motion_1.abs().max() > 0
    torch.testing.assert_close(motion_2, motion_1 + difference, rtol=0, atol=0)
    np.testing.assert_array_equal(
        torch.round(predicted * 255.0)[0].permute(1, 2, 0).numpy(), gop.recon[2])
    # With choices and the side search, the chosen candidate is coded again as predicted.
    searched = with_motion(_codec("dvc", [0.01] * 4, (0.5, 1.5), adaptive_intra=False,
                                  side_search=10, skip_residual=True, predict_lead=True)
                           ).encode_gop(frames, 2)
    assert all(codec.inter_levels(f, 1).lead_predicted for f in searched.frames[2:])
    decoded = codec.decode_gop(searched.frames, 64, 64, 2)
    np.testing.assert_array_equal(np.stack(decoded), np.stack(searched.recon))
    # A frame after an intra frame has no motion to predict from; FVC never predicts.
    forged = (gop.frames[0], gop.frames[2])
    with pytest.raises(BitstreamError, match="without any"):
        codec.decode_gop(forged, 64, 64, 2)
    fvc = _codec("fvc", predict_lead=True)
    fvc_gop = fvc.encode_gop(frames[:3], 2)
    assert [f.kind for f in fvc_gop.frames] == [UnitKind.INTRA, UnitKind.INTER, UnitKind.INTER]
    flagged = CodedFrame(UnitKind.LEVELED_INTER,
                         bytes((1 | PREDICTED_LEAD, 1)) + fvc_gop.frames[2].payload)
    with pytest.raises(BitstreamError, match="FVC"):
        fvc.decode_gop((*fvc_gop.frames[:2], flagged), 64, 64, 2)


def test_dvc_global_motion_frames_are_chosen_by_cost_and_decode_exactly() -> None:
    frames = _frames(4, 64, 64)

    def codec_with(global_motion: bool, side_search: int = 0) -> GopCodec:
        return _codec("dvc", [1e-9] * 4, (0.5, 1.5), adaptive_intra=False,
                      side_search=side_search, skip_residual=True, predict_lead=True,
                      global_motion=global_motion)

    # Rate only: 12 bytes of global motion beat any coded motion latent, and the frame after
    # a global frame has no motion latent to predict from.
    latents = codec_with(False).encode_gop(frames, 2)
    codec = codec_with(True)
    gop = codec.encode_gop(frames, 2)
    assert [f.kind for f in gop.frames] == [UnitKind.INTRA] + [UnitKind.SKIP] * 3
    for frame, other in zip(gop.frames[1:], latents.frames[1:], strict=True):
        assert frame.payload[0] == 1 | GLOBAL_LEAD
        levels = codec.inter_levels(frame, 1)
        assert levels.lead_global and not levels.lead_predicted and levels.residual is None
        assert len(frame.payload) < len(other.payload)
    decoded = codec.decode_gop(gop.frames, 64, 64, 2)
    np.testing.assert_array_equal(np.stack(decoded), np.stack(gop.recon))
    # The side-information search re-codes the chosen global candidate: the same frames.
    searched = codec_with(True, side_search=10).encode_gop(frames, 2)
    assert searched.frames == gop.frames
    np.testing.assert_array_equal(np.stack(searched.recon), np.stack(gop.recon))
    # Distortion only: the residual is coded again (Q units keep the flag when global).
    fine = _codec("dvc", [1e4] * 4, (0.5,), adaptive_intra=False, skip_residual=True,
                  global_motion=True)
    assert fine.inter is not None
    with torch.no_grad():  # untrained residual latents are near 0: give them symbols
        fine.inter.residual_prior.gain.mul_(50.0)
        fine.inter.residual_prior.inv_gain.div_(50.0)
    kept = fine.encode_gop(frames, 2)
    assert all(f.kind != UnitKind.SKIP for f in kept.frames[1:])
    assert any(f.kind == UnitKind.LEVELED_INTER and f.payload[0] & GLOBAL_LEAD
               for f in kept.frames[1:])
    np.testing.assert_array_equal(np.stack(fine.decode_gop(kept.frames, 64, 64, 2)),
                                  np.stack(kept.recon))
    # A unit with a correction grid (the second global candidate) decodes to its frame.
    first, unit = gop.frames[0], gop.frames[1]
    assert codec.inter is not None
    with torch.no_grad():
        _, gridded, *_ = codec.inter.compress_global(  # type: ignore[attr-defined]
            to_tensor(frames[1]), DvcReference(to_tensor(gop.recon[0]), None), 1, [], (),
            skip_residual=True)
    grid_unit = CodedFrame(UnitKind.SKIP, bytes((1 | GLOBAL_LEAD | GRID_LEAD,)) + gridded.payload)
    assert codec.inter_levels(grid_unit, 1).lead_grid
    decoded = codec.decode_gop((first, grid_unit), 64, 64, 2)
    expected = torch.round(gridded.recon.clamp(0, 1) * 255)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(decoded[1], expected.astype(np.uint8))
    # Malformed global units are refused in one line; FVC has no global motion.
    for payload, message in ((unit.payload[:6], "too short"),
                             (bytes((unit.payload[0] | PREDICTED_LEAD,)) + unit.payload[1:],
                              "both a global and a predicted"),
                             (bytes((unit.payload[0] | GRID_LEAD,)) + unit.payload[1:],
                              "grid motion model"),
                             (bytes((1 | GRID_LEAD,)) + unit.payload[1:],
                              "grid without a global")):
        with pytest.raises(BitstreamError, match=message):
            codec.decode_gop((first, CodedFrame(UnitKind.SKIP, payload)), 64, 64, 2)
    with pytest.raises(UsageError, match="no global motion"):
        _codec("fvc", [0.01] * 4, global_motion=True)
    fvc = _codec("fvc")
    fvc_gop = fvc.encode_gop(frames[:2], 2)
    flagged = CodedFrame(UnitKind.LEVELED_INTER,
                         bytes((1 | GLOBAL_LEAD, 1)) + fvc_gop.frames[1].payload)
    with pytest.raises(BitstreamError, match="FVC"):
        fvc.decode_gop((fvc_gop.frames[0], flagged), 64, 64, 2)


def test_propagation_weight_counts_each_later_frame_by_its_inherited_share() -> None:
    assert 0.0 < PROPAGATION < 1.0
    assert propagation_weight(0) == 1.0  # the last frame of a GOP: only its own error
    weights = [propagation_weight(n) for n in range(12)]
    assert weights == sorted(weights)  # more later frames, more weight on the error
    for n, weight in enumerate(weights):
        assert weight == pytest.approx((1 - PROPAGATION ** (n + 1)) / (1 - PROPAGATION))
    assert weights[-1] < 1 / (1 - PROPAGATION)  # a geometric series: bounded, unlike 1 + n


def test_intra_offset_codes_intra_frames_at_a_higher_level() -> None:
    frames = _frames(3, 64, 64)
    intra = _codec("intra")
    codec = _codec("dvc")
    plain = codec.encode_gop(frames, 2)
    raised = codec.encode_gop(frames, 2, intra_offset=1)
    # The intra frame is the intra codec's frame at level 3; capped at the top level.
    assert raised.frames[0].payload == intra.encode_gop(frames[:1], 3).frames[0].payload
    assert raised.frames[0].payload != plain.frames[0].payload
    capped = codec.encode_gop(frames[:1], 3, intra_offset=7)
    assert capped.frames[0].payload == intra.encode_gop(frames[:1], 4).frames[0].payload
    decoded = codec.decode_gop(raised.frames, 64, 64, 2, intra_offset=1)
    np.testing.assert_array_equal(np.stack(decoded), np.stack(raised.recon))
    # A refresh frame (adaptive intra, rate-dominated lambda) stays at the P frames' level.
    adaptive = _codec("dvc", [1e-12] * 4).encode_gop(frames, 2, intra_offset=1)
    assert [f.kind for f in adaptive.frames][:2] == [UnitKind.INTRA, UnitKind.REFRESH]
    assert adaptive.frames[0].payload == raised.frames[0].payload
    assert adaptive.frames[1].payload == intra.encode_gop(frames[1:2], 2).frames[0].payload
    decoded = _codec("dvc").decode_gop(adaptive.frames, 64, 64, 2, intra_offset=1)
    np.testing.assert_array_equal(np.stack(decoded), np.stack(adaptive.recon))
    with pytest.raises(UsageError, match="intra offset is for dvc and fvc"):
        intra.encode_gop(frames[:1], 2, intra_offset=1)
    with pytest.raises(UsageError, match=r"0\.\.255"):
        codec.encode_gop(frames, 2, intra_offset=-1)
