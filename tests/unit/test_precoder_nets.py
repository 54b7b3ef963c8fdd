"""Learned precoders: network shapes, the codec proxy, the weights registry, determinism."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gopflow.errors import GopflowError, InputError, ToolMissingError
from gopflow.precoders import nets
from gopflow.precoders.dvp import DvpDownscaler, DvpPrecoder
from gopflow.precoders.proxy import CodecProxy, dct_matrix, qstep
from gopflow.precoders.resample import scaled_size
from gopflow.precoders.restore import RestoreTarget, full_size_bytes
from gopflow.precoders.vistra import (
    FrameInterpolator,
    LearnedRestorer,
    Upsampler,
    scale_between,
    warp,
)
from gopflow.zoo import registry as weights
from gopflow.zoo.registry import build_model

SCALES = (Fraction(3, 4), Fraction(2, 3), Fraction(1, 2))


def _trained(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``module`` with random (non-zero) weights in every layer, in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return module.eval()


def _frame(width: int, height: int, seed: int = 0) -> av.VideoFrame:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    luma = (128 + 60 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + rng.normal(0, 8, (height, width)))
    planes = [
        np.clip(luma, 0, 255).astype(np.uint8),
        rng.integers(100, 156, ((height + 1) // 2, (width + 1) // 2), dtype=np.uint8),
        rng.integers(100, 156, ((height + 1) // 2, (width + 1) // 2), dtype=np.uint8),
    ]
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane, data in zip(frame.planes, planes, strict=True):
        rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        rows[:, : data.shape[1]] = data
    return frame


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize(("height", "width"), [(72, 128), (101, 147)])
def test_downscaler_output_size_matches_lanczos_path(scale, height, width):
    net = DvpDownscaler(scale).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, height, width))
    coded_w, coded_h = scaled_size(width, height, scale)
    assert out.shape == (2, 1, coded_h, coded_w)
    assert coded_w % 2 == 0 and coded_h % 2 == 0


@pytest.mark.parametrize("scale", SCALES)
def test_untrained_nets_are_the_plain_resamplers(scale):
    x = torch.rand(1, 1, 96, 120)
    down = DvpDownscaler(scale).eval()
    with torch.no_grad():
        small = down(x)
        plain = F.interpolate(x, size=small.shape[-2:], mode="bicubic", antialias=True)
        assert torch.allclose(small, plain, atol=1e-6)
        up = Upsampler(scale).eval()(small, (96, 120))
        assert up.shape == (1, 1, 96, 120)
        assert torch.allclose(up, F.interpolate(small, size=(96, 120), mode="bicubic"), atol=1e-6)


@pytest.mark.parametrize(("height", "width"), [(96, 120), (90, 34), (720, 1280)])
def test_lanczos_decimation_equals_the_resampling_matrices(height, width):
    x = torch.rand(2, 1, height, width)
    size = (height // 2, width // 2)
    fast = nets.lanczos_resize(x, size)  # strided convolution with replicate padding
    mh = torch.from_numpy(nets.resize_matrix(height, size[0]).copy())
    mw = torch.from_numpy(nets.resize_matrix(width, size[1]).copy())
    assert torch.allclose(fast, mh @ x @ mw.T, atol=1e-5)


def test_lanczos_base_is_swscale_lanczos_untrained():
    """An untrained ``base="lanczos"`` downscaler is the Lanczos the benchmark compares
    against: within rounding of swscale's fixed-point ``lanczos`` on a real-looking picture."""
    rng = np.random.default_rng(3)
    smooth = F.interpolate(torch.from_numpy(rng.random((1, 1, 48, 80), np.float32)),
                           size=(144, 256), mode="bicubic").clamp(0, 1)
    luma = (smooth[0, 0].numpy() * 219 + 16).round().astype(np.uint8)
    frame = av.VideoFrame.from_ndarray(np.stack([luma] * 3, axis=-1), format="rgb24")
    frame = frame.reformat(format="gray")
    source = frame.to_ndarray()
    ours = DvpDownscaler(Fraction(1, 2), base="lanczos").eval()
    with torch.no_grad():
        small = ours(torch.from_numpy(source.astype(np.float32) / 255)[None, None])
    mine = (small[0, 0].numpy() * 255).round()
    swscale = frame.reformat(width=128, height=72, interpolation="LANCZOS").to_ndarray()
    error = np.abs(mine - swscale.astype(np.float64))
    bicubic = F.interpolate(torch.from_numpy(source.astype(np.float32))[None, None],
                            size=(72, 128), mode="bicubic", antialias=True)[0, 0].round().numpy()
    assert error.mean() < 0.3 and error.max() <= 2
    assert np.abs(bicubic - swscale).mean() > 2 * error.mean()  # a different filter differs


def test_interpolator_shapes_and_untrained_average():
    a, b = torch.rand(1, 1, 70, 90), torch.rand(1, 1, 70, 90)
    net = FrameInterpolator().eval()
    with torch.no_grad():
        out = net(a, b)
        flow, mask, residual = net.motion(a, b)
    assert out.shape == a.shape
    assert flow.shape == (1, 2, 70, 90) and mask.shape == residual.shape == a.shape
    assert torch.allclose(out, 0.5 * (a + b), atol=1e-5)


def test_warp_follows_the_flow():
    image = torch.rand(1, 1, 20, 30)
    flow = torch.zeros(1, 2, 20, 30)
    flow[:, 0] = 2.0  # sample 2 pixels to the right
    out = warp(image, flow)
    assert torch.allclose(out[..., :, :-2], image[..., :, 2:], atol=1e-5)


@pytest.mark.parametrize("scale", [Fraction(3, 4), Fraction(1, 2)])
def test_strips_equal_whole_frame(scale):
    x = torch.rand(1, 1, 300, 200)
    down = _trained(DvpDownscaler(scale))
    up = _trained(Upsampler(scale), seed=1)
    with torch.no_grad():  # training mode: whole-frame convolutions
        whole_down = down.train()(x)
        whole_up = up.train()(whole_down, (300, 200))
    with torch.inference_mode():  # eval mode, no autograd: strips with a halo
        strip_down = down.eval()(x)
        strip_up = up.eval()(strip_down, (300, 200))
    assert torch.allclose(whole_down, strip_down, atol=1e-5)
    assert torch.allclose(whole_up, strip_up, atol=1e-5)


def test_build_roundtrips_arch():
    for net in (DvpDownscaler(Fraction(2, 3)), DvpDownscaler(Fraction(1, 2), base="lanczos"),
                Upsampler(Fraction(3, 4)), FrameInterpolator()):
        rebuilt = build_model(net.arch())
        assert type(rebuilt) is type(net)
        assert nets.parameter_count(rebuilt) == nets.parameter_count(net)
        assert rebuilt.arch() == net.arch()
    with pytest.raises(GopflowError, match="base"):
        DvpDownscaler(Fraction(1, 2), base="nearest")


# ----------------------------------------------------------------------------- proxy
def test_dct_is_orthonormal_and_qstep_is_h264():
    d = dct_matrix()
    assert torch.allclose(d @ d.T, torch.eye(8), atol=1e-6)
    assert qstep(4) == pytest.approx(0.625)
    assert qstep(28) == pytest.approx(10.0)
    assert qstep(34) == pytest.approx(2 * qstep(28))


def test_proxy_rounds_in_eval_and_adds_noise_in_training():
    y = torch.rand(2, 1, 20, 28)  # not a multiple of 8: padded inside
    proxy = CodecProxy(blur_prob=0.0).eval()
    out = proxy(y, 30.0)
    assert out.shape == y.shape
    assert torch.equal(out, proxy(y, 30.0))  # deterministic
    # Every coefficient of the coded picture is a multiple of the step.
    coeffs = proxy.blocks(CodecProxy._pad(out[..., :16, :24]))
    levels = coeffs / qstep(30.0)
    assert torch.allclose(levels, levels.round(), atol=1e-3)
    # Fine quantisation is close to the input; coarse is far.
    assert (proxy(y, 0.0) - y).abs().max() < 2.0 / 255
    assert (proxy(y, 45.0) - y).abs().mean() > (proxy(y, 25.0) - y).abs().mean()

    proxy.train()
    torch.manual_seed(0)
    first = proxy(y, 30.0)
    second = proxy(y, 30.0)
    assert not torch.equal(first, second)
    noise = (first - y).abs().mean()
    assert 0 < noise < 0.1


def test_proxy_passes_gradients_in_both_modes():
    for train in (True, False):
        y = torch.rand(1, 1, 16, 16, requires_grad=True)
        proxy = CodecProxy().train(train)
        proxy(y, 30.0).sum().backward()
        assert y.grad is not None and y.grad.abs().sum() > 0
    y = torch.rand(1, 1, 16, 16, requires_grad=True)
    CodecProxy().rate(y, 30.0).backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- registry
def _install(tmp_path: Path, name: str = "dvp-1_2") -> Path:
    net = _trained(DvpDownscaler(Fraction(1, 2)))
    path = tmp_path / "src.pt"
    torch.save(net.state_dict(), path)
    weights.install_model(name, path, net.arch(), directory=tmp_path / "reg")
    return tmp_path / "reg"


def test_registry_loads_verified_weights(tmp_path):
    registry = _install(tmp_path)
    model = weights.load_model("dvp-1_2", registry)
    assert isinstance(model, DvpDownscaler) and not model.training
    assert weights.has_model("dvp-1_2", registry)
    assert not weights.has_model("dvp-3_4", registry)


def test_registry_refuses_tampered_or_missing_weights(tmp_path):
    registry = _install(tmp_path)
    with pytest.raises(weights.ModelMissingError, match="no learned model named 'dvp-3_4'"):
        weights.load_model("dvp-3_4", registry)
    file = registry / "dvp-1_2.pt"
    data = bytearray(file.read_bytes())
    data[-20] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(weights.ModelIntegrityError, match="sha256") as caught:
        weights.load_model("dvp-1_2", registry)
    assert isinstance(caught.value, InputError) and isinstance(caught.value, GopflowError)
    file.unlink()
    with pytest.raises(weights.ModelMissingError, match="missing") as missing:
        weights.load_model("dvp-1_2", registry)
    assert isinstance(missing.value, ToolMissingError)


def test_shipped_weights_verify_and_load():
    entries = weights.read_registry()
    if not entries:
        pytest.skip("no weights shipped in this checkout")
    from gopflow.codecs.learned.engine import build_codec_model

    for name, entry in entries.items():
        # The learned codecs share the registry; their classes come from their own builder.
        builder = build_codec_model if name.startswith("codec-") else None
        model = weights.load_model(name, builder=builder)
        assert model.arch()["class"] == entry.arch["class"]


# ----------------------------------------------------------------------------- wrappers
def test_dvp_precoder_is_deterministic_and_sized(tmp_path):
    model = _trained(DvpDownscaler(Fraction(3, 4)))
    precoder = DvpPrecoder(Fraction(3, 4), threads=1, model=model)
    frame = _frame(202, 118)
    first, second = precoder.down(frame), precoder.down(frame)
    width, height = scaled_size(202, 118, Fraction(3, 4))
    assert precoder.size(202, 118) == (width, height)
    assert len(first) == width * height + 2 * ((width + 1) // 2) * ((height + 1) // 2)
    assert first == second
    again = DvpPrecoder(Fraction(3, 4), threads=2, model=model).down(frame)
    assert again == first


def test_restorer_falls_back_to_bicubic_without_weights(tmp_path):
    target = RestoreTarget(160, 96, Fraction(25), 4)
    small = _frame(80, 48)
    restorer = LearnedRestorer(threads=1, registry_dir=str(tmp_path))
    assert scale_between(80, 48, 160, 96) == Fraction(1, 2)
    assert restorer.full_size_bytes(small, target) == full_size_bytes(small, target)
    full = _frame(160, 96)
    assert restorer.full_size_bytes(full, target) == full_size_bytes(full, target)


def test_restorer_uses_the_registered_upsampler(tmp_path):
    net = _trained(Upsampler(Fraction(1, 2)))
    path = tmp_path / "up.pt"
    torch.save(net.state_dict(), path)
    weights.install_model("vistra-up-1_2", path, net.arch(), directory=tmp_path)
    target = RestoreTarget(160, 96, Fraction(25), 4)
    small = _frame(80, 48)
    restorer = LearnedRestorer(threads=1, registry_dir=str(tmp_path))
    learned = restorer.full_size_bytes(small, target)
    plain = full_size_bytes(small, target)
    assert len(learned) == len(plain)
    assert learned[: 160 * 96] != plain[: 160 * 96]  # luma: learned
    assert learned[160 * 96 :] == plain[160 * 96 :]  # chroma: bicubic
    assert restorer.full_size_bytes(small, target) == learned


def test_restore_frames_interpolates_single_gaps(tmp_path):
    target = RestoreTarget(64, 48, Fraction(25), 5)
    frames = []
    for i, slot in enumerate((0, 2, 4)):
        frame = _frame(64, 48, seed=i)
        frames.append(SimpleNamespace(
            time=slot / 25, width=64, height=48, format=frame.format, planes=frame.planes,
            reformat=frame.reformat,
        ))
    restorer = LearnedRestorer(threads=1, registry_dir=str(tmp_path))  # no weights: average
    out = list(restorer.restore_frames(frames, target))
    assert len(out) == 5
    a = np.frombuffer(out[0], np.uint8).astype(np.uint16)
    b = np.frombuffer(out[2], np.uint8)
    assert out[1] == ((a + b + 1) // 2).astype(np.uint8).tobytes()
    c = np.frombuffer(out[4], np.uint8)
    assert out[3] == ((b.astype(np.uint16) + c + 1) // 2).astype(np.uint8).tobytes()
