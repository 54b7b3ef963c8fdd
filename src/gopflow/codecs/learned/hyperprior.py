"""A variable-rate scale-hyperprior latent coder, shared by every learned auto-encoder.

Scale hyperprior after Balle et al. 2018 ("Variational image compression with a scale
hyperprior"): side information ``z = h_a(|y|)`` is coded with a factorized prior
(CompressAI's ``EntropyBottleneck``) and ``h_s(z_hat)`` predicts the scale of each zero-mean
Gaussian latent (``GaussianConditional`` with a scale table). Variable rate after Cui et al.
2021 ("Asymmetric Gained Deep Image Compression"): per-level, per-channel gain and inverse
gain vectors on ``y`` (and on ``z``), so one model gives ``levels`` rate points (0 = lowest).

Training uses "mixed" quantisation (Minnen and Singh 2020, "Channel-wise autoregressive
entropy models"): the rate terms see additive uniform noise, the decoder path sees the
latents rounded as the coder rounds them (straight-through gradient), so a P-frame chain trains
on the reconstructions the decoder will really produce.

Coding uses rounding and CompressAI's real rANS coder. ``y`` has zero mean, so the coded
symbols are the integers ``round(gain * y)`` and the decoder recovers ``y_hat`` exactly; only
the entropy parameters (scales) must be computed identically on both sides (see
:func:`gopflow.codecs.learned.engine.codec_threads`).

Decoding goes through :func:`decode_exact`, not CompressAI's ``decompress``: CompressAI's
rANS decoder reads its string without bounds checks (a short or corrupt string made it read
past the buffer: heap bytes in the decoded latent, or a segfault) and never tells whether the
string was exactly what an encoder writes. :func:`decode_exact` pads the string, then refuses
it unless the decoded integers code back to the very same bytes (:func:`rans_encode`: its
encoder writes into a buffer of one word per symbol, and before that buffer where a string
needs more, so such strings are coded in Python instead, to the same bytes).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models.utils import conv, deconv
from torch import Tensor, nn

from gopflow.codecs.learned.bitstream import BitstreamError

HYPER_STRIDE = 4
"""Spatial down-sampling of ``z`` relative to ``y``."""
ROUNDING = 0.5
"""The dead zone of plain rounding: ``|gain * y| < 0.5`` codes as 0 anyway."""


SIDE_SEARCH_STEPS = 30
"""Adam steps of the encoder's side-information search (:meth:`GainedHyperprior.compress`)."""
SIDE_SEARCH_STEP = 0.05
"""Its step size, in quantisation steps of ``z``. With :data:`SIDE_SEARCH_STEPS` it saves
as much as longer searches on the intra, motion and plain residual latents and nearly as
much on a dead-zone residual; a longer search with larger steps finds more there but less
elsewhere, at three times the steps."""


REFINE_STEP = 0.05
"""The step size of the encoder's lead-latent refinement (:meth:`GainedHyperprior.refine`),
in latent units before the gain: DVC's refined motion lowers a P frame's cost
``bpp + lambda * MSE`` by several percent against the best unrefined candidate, most at the
lower qualities. The refinement minimises the lead latent's own cost (its bits and its
prediction's error): refining through the residual coder as well (the full cost) gains less
at three times the time per step."""


@dataclass(frozen=True)
class Refinement:
    """Settings of :meth:`GainedHyperprior.refine`: the Lagrangian of each level (the
    models' training lambdas), Adam steps and step size."""

    lambdas: tuple[float, ...]
    steps: int
    step: float = REFINE_STEP


@dataclass(frozen=True)
class LatentCode:
    """The entropy-coded strings of one latent (batch 1): ``y`` and ``z``."""

    y_string: bytes
    z_string: bytes


RANS_PAD_WORDS = 1024
"""Zero words appended to a rANS string beyond one per symbol before CompressAI decodes it
(:func:`decode_exact`). Outside its escapes the decoder reads at most one word per symbol,
and a zero word ends any escape chain, so a string that is too short makes it read zeros
here instead of the heap behind the buffer (random strings read at most half a word per
symbol past their end)."""
ESCAPE_LIMIT = 1 << 28
"""Escaped values CompressAI's encoder can write: its bypass code of ``raw`` (``2|v| - 1``
or ``2(v - max)``) loops for ever at ``raw >= 2^28``, so no string holds one."""
PYTHON_RANS_LIMIT = 1 << 16
"""The most symbols :func:`decode_exact` codes again in Python (where CompressAI's buffer is
too small): a real latent never needs more than a word per symbol, a motion grid has a few
thousand values at most."""
_RANS_L = 1 << 31
_WORD = 0xFFFFFFFF


def rans_encode(
    values: np.ndarray, indexes: np.ndarray, cdfs: np.ndarray, sizes: np.ndarray,
    offsets: np.ndarray,
) -> bytes:
    """The rANS string of ``values`` (int64, one per entry of ``indexes``, each coded with
    that row of ``cdfs``, CompressAI's quantised CDFs, with its length and offset): what
    CompressAI's ``RansEncoder.encode_with_indexes`` writes, from CompressAI's encoder
    where the string fits its buffer (one word per symbol: :func:`rans_words_bound`), else
    from :func:`_encode_python`. ``ValueError`` for a value its escape code cannot hold
    (:data:`ESCAPE_LIMIT`)."""
    flat = indexes.astype(np.int64).ravel()
    cdfs, sizes, offsets = (np.asarray(part, dtype=np.int64) for part in (cdfs, sizes, offsets))
    values = np.asarray(values, dtype=np.int64).ravel()
    bound = rans_words_bound(values, flat, cdfs, sizes, offsets)
    if bound < 0:
        raise ValueError("a value is beyond the rANS escape code")
    return _encode(values.tolist(), (flat.tolist(), cdfs.tolist(), sizes.tolist(),
                                     offsets.tolist()), bound)


def _encode(values: list[int], tables: tuple[list[Any], ...], bound: int) -> bytes:
    """:func:`rans_encode` with the tables as lists (indexes, CDFs, sizes, offsets) and
    the bound of its words computed."""
    from compressai.ans import RansEncoder

    if bound <= len(values):
        return bytes(RansEncoder().encode_with_indexes(values, *tables))
    return _encode_python(values, *tables)


def rans_words_bound(
    values: np.ndarray, indexes: np.ndarray, cdfs: np.ndarray, sizes: np.ndarray,
    offsets: np.ndarray,
) -> int:
    """An upper bound of the 32-bit words CompressAI's ``RansEncoder.encode_with_indexes``
    writes for ``values`` (int64) with tables ``indexes`` (``cdfs``: one row per table),
    or -1 where a value is beyond its escape code (:data:`ESCAPE_LIMIT`). The encoder
    writes into a buffer of one word per symbol, and past its start where it needs more:
    callers check this bound first. Each symbol costs ``16 - log2(frequency)`` bits (a
    fraction of a bit more at most), each escape 4 bits per bypass chunk; the state starts
    at ``2^31`` and never falls below it, so the words are at most the bits over 32, plus
    the 2 words of the final state."""
    if values.size == 0:
        return 2
    maximum = sizes[indexes] - 2
    value = values - offsets[indexes]
    inside = (value >= 0) & (value < maximum)
    raw = np.where(value < 0, -2 * value - 1, 2 * (value - maximum))
    raw = np.where(inside, 0, raw)
    if raw.max() >= ESCAPE_LIMIT:
        return -1
    symbol = np.where(inside, value, maximum)
    frequency = cdfs[indexes, symbol + 1] - cdfs[indexes, symbol]
    bits = float(np.sum(16.0 - np.log2(np.maximum(frequency, 1))))
    rest = raw[~inside]
    nibbles = np.zeros_like(rest)
    while rest.any():
        nibbles += rest > 0
        rest = rest >> 4
    bits += 4.0 * float(np.sum(nibbles + nibbles // 15 + 1))
    return 2 + int((bits + 1e-4 * values.size + 1.0) // 32)


def _put(x: int, out: list[int], start: int, freq: int, bits: int) -> int:
    """ryg_rans' ``Rans64EncPut`` (``bits`` of precision); emitted words go to ``out``."""
    if x >= ((_RANS_L >> bits) << 32) * freq:
        out.append(x & _WORD)
        x >>= 32
    return ((x // freq) << bits) + (x % freq) + start


def _encode_python(
    values: list[int], indexes: list[int], cdfs: list[list[int]], sizes: list[int],
    offsets: list[int],
) -> bytes:
    """CompressAI's ``RansEncoder.encode_with_indexes`` (``compressai/cpp_exts/rans``),
    step for step, without its fixed buffer: symbols in reverse, escapes as 4-bit bypass
    chunks (value chunks, then the chunk count in chunks of at most 15), then the 64-bit
    state; little-endian words, as CompressAI writes them on x86-64 and AArch64."""
    x, out = _RANS_L, []
    for i in range(len(values) - 1, -1, -1):
        table = indexes[i]
        cdf, maximum = cdfs[table], sizes[table] - 2
        value = values[i] - offsets[table]
        if value < 0 or value >= maximum:
            raw = -2 * value - 1 if value < 0 else 2 * (value - maximum)
            chunks = 0
            while raw >> (4 * chunks):
                chunks += 1
            pieces = [(raw >> (4 * j)) & 15 for j in range(chunks - 1, -1, -1)]
            pieces += [15] * (chunks // 15) + [chunks % 15]
            for piece in pieces:  # Rans64EncPutBits, 4 bits
                if x >= ((_RANS_L >> 16) << 32) << 12:
                    out.append(x & _WORD)
                    x >>= 32
                x = (x << 4) | piece
            value = maximum
        x = _put(x, out, cdf[value], cdf[value + 1] - cdf[value], 16)
    words = [x & _WORD, x >> 32, *reversed(out)]
    return struct.pack(f"<{len(words)}I", *words)


def decode_exact(
    string: bytes, indexes: np.ndarray, cdfs: np.ndarray, sizes: np.ndarray,
    offsets: np.ndarray, what: str = "a latent",
) -> np.ndarray:
    """The integers (int64, one per entry of ``indexes``, each coded with that table:
    a row of ``cdfs``, CompressAI's quantised CDFs, with its length and offset) that
    CompressAI's rANS coder coded in ``string``, refused with :class:`BitstreamError`
    unless ``string`` is exactly what the encoder writes for them: whole 32-bit words, at
    least the 2 of the final state, and :func:`rans_encode` of the decoded integers gives
    the same bytes (so a string that ends early, or goes on after the last symbol, or was
    decoded with other tables, is refused with near certainty). The string is padded with
    zero words first (:data:`RANS_PAD_WORDS`): CompressAI's decoder has no bounds
    checks."""
    from compressai.ans import RansDecoder

    count = int(indexes.size)
    if len(string) < 8 or len(string) % 4:
        raise BitstreamError(f"{what} does not decode: its rANS string has {len(string)} "
                             "bytes (whole 32-bit words, at least 2)")
    flat = indexes.astype(np.int64).ravel()
    cdfs, sizes, offsets = (np.asarray(part, dtype=np.int64) for part in (cdfs, sizes, offsets))
    tables = (flat.tolist(), cdfs.tolist(), sizes.tolist(), offsets.tolist())
    padded = string + bytes(4 * (count + RANS_PAD_WORDS))
    decoded = RansDecoder().decode_with_indexes(padded, *tables)
    values = np.asarray(decoded, dtype=np.int64)
    bound = rans_words_bound(values, flat, cdfs, sizes, offsets)
    corrupt = BitstreamError(f"{what} does not decode: its rANS string is corrupt")
    if bound < 0 or len(string) > 4 * bound or (bound > count and count > PYTHON_RANS_LIMIT):
        raise corrupt
    if _encode(decoded, tables, bound) != string:
        raise corrupt
    return values


GAIN_NAMES = ("gain", "inv_gain", "hyper_gain", "hyper_inv_gain")
"""The per-level parameters of :class:`GainedHyperprior` (``levels x channels`` each)."""


def _bits(likelihoods: Tensor) -> Tensor:
    """Information content (bits) of a likelihood tensor, summed over all elements."""
    return -torch.log2(likelihoods).sum()


def set_side_search(model: nn.Module, steps: int) -> None:
    """Turn the side-information search on (``steps`` > 0) or off in every
    :class:`GainedHyperprior` of ``model`` (an encoder setting; decoders ignore it)."""
    if steps < 0:
        raise ValueError(f"side-information search steps must be >= 0, got {steps}")
    for module in model.modules():
        if isinstance(module, GainedHyperprior):
            module.side_search = steps


def straight_through_round(x: Tensor) -> Tensor:
    """``round(x)`` forward, identity gradient backward."""
    return x + (torch.round(x) - x).detach()


def resample_gains(
    gains: Tensor, lambdas: Sequence[float], new_lambdas: Sequence[float]
) -> Tensor:
    """Gain vectors (``levels x C``) for other rate points: each channel's log-gain is
    linear in log-lambda between the two nearest trained levels, and extrapolated from the
    two end levels beyond them. Between levels this is Cui et al.'s exponential gain
    interpolation; it gives a starting point that ``--init`` training then refines."""
    if gains.shape[0] != len(lambdas) or len(lambdas) < 2:
        raise ValueError(f"{gains.shape[0]} gain vectors for {len(lambdas)} lambdas")
    logs = torch.log(gains.detach().abs().clamp_min(1e-6))
    known = [math.log(value) for value in lambdas]
    rows = []
    for target in (math.log(value) for value in new_lambdas):
        upper = next((i for i, value in enumerate(known) if value >= target), len(known) - 1)
        upper = min(max(upper, 1), len(known) - 1)
        lower = upper - 1
        weight = (target - known[lower]) / (known[upper] - known[lower])
        rows.append(logs[lower] + weight * (logs[upper] - logs[lower]))
    return torch.exp(torch.stack(rows)).to(gains.dtype)


def resample_levels(
    state: dict[str, Tensor], lambdas: Sequence[float], new_lambdas: Sequence[float]
) -> dict[str, Tensor]:
    """A model state dict with every hyperprior's gain vectors resampled to ``new_lambdas``
    (see :func:`resample_gains`); everything else is shared by all levels and kept."""
    return {
        key: resample_gains(value, lambdas, new_lambdas)
        if key.rsplit(".", 1)[-1] in GAIN_NAMES else value
        for key, value in state.items()
    }


class GainedHyperprior(nn.Module):
    """Scale-hyperprior coder of an ``M``-channel latent with ``levels`` gain vectors."""

    def __init__(self, channels: int, hyper_channels: int, levels: int = 4) -> None:
        super().__init__()
        m, n = channels, hyper_channels
        self.levels = levels
        self.h_a = nn.Sequential(
            conv(m, n, 3, 1), nn.ReLU(inplace=True),
            conv(n, n, 5, 2), nn.ReLU(inplace=True),
            conv(n, n, 5, 2),
        )
        self.h_s = nn.Sequential(
            deconv(n, n, 5, 2), nn.ReLU(inplace=True),
            deconv(n, n, 5, 2), nn.ReLU(inplace=True),
            conv(n, m, 3, 1), nn.ReLU(inplace=True),
        )
        self.entropy_bottleneck = EntropyBottleneck(n)
        self.gaussian_conditional = GaussianConditional(None)
        # Level 0 quantises coarsest; gains spread over a factor of 4 and are learned.
        spread = torch.tensor(
            [2.0 ** (2.0 * (i / max(levels - 1, 1)) - 1.0) for i in range(levels)]
        )
        self.gain = nn.Parameter(spread[:, None].repeat(1, m))
        self.inv_gain = nn.Parameter((1.0 / spread)[:, None].repeat(1, m))
        self.hyper_gain = nn.Parameter(torch.ones(levels, n))
        self.hyper_inv_gain = nn.Parameter(torch.ones(levels, n))

    def _gains(self, level: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-sample gains ``N x C x 1 x 1`` (absolute values keep them positive)."""
        pick = [p.abs()[level][:, :, None, None] for p in (
            self.gain, self.inv_gain, self.hyper_gain, self.hyper_inv_gain)]
        return pick[0], pick[1], pick[2], pick[3]

    def forward(self, y: Tensor, level: Tensor) -> tuple[Tensor, Tensor]:
        """``(y_hat, bits per sample)``. Training: mixed quantisation (noisy latents for the
        likelihoods, straight-through rounded ones for ``h_s`` and the returned ``y_hat``);
        eval: rounded everywhere, as :meth:`compress` codes them."""
        gain, inv_gain, hgain, hinv = self._gains(level)
        z = self.h_a(torch.abs(y)) * hgain
        z_tilde, z_likelihoods = self.entropy_bottleneck(z)
        if self.training:
            z_tilde = self._round_z(z)
        scales = self.h_s(z_tilde * hinv) * gain
        y_tilde, y_likelihoods = self.gaussian_conditional(y * gain, scales)
        if self.training:
            y_tilde = straight_through_round(y * gain)
        bits = -(
            torch.log(y_likelihoods).sum(dim=(1, 2, 3))
            + torch.log(z_likelihoods).sum(dim=(1, 2, 3))
        ) / math.log(2.0)
        return y_tilde * inv_gain, bits

    def _round_z(self, z: Tensor) -> Tensor:
        """``z`` rounded as the coder rounds it, with a straight-through gradient.
        EntropyBottleneck.compress rounds ``z`` around its learned medians (CompressAI has
        no public accessor for them), so the straight-through values do the same."""
        medians = self.entropy_bottleneck._get_medians().detach().reshape(1, -1, 1, 1)
        return straight_through_round(z - medians) + medians

    def refine(
        self, y: Tensor, level: int, render: Callable[[Tensor], Tensor], target: Tensor,
        refinement: Refinement,
    ) -> Tensor:
        """Encoder-side latent refinement (Campos et al. 2019, "Content Adaptive Optimization
        for Neural Image Compression"): Adam on the latent ``y`` itself, minimising
        ``bits / pixels + lambda * 255^2 * MSE(render(y_hat), target)`` with the rate under
        additive noise (as in training, noise from a fixed seed) and ``y_hat`` rounded as
        the coder rounds it (straight-through). Returns the iterate with the lowest exact
        cost (the bits of the rounded integers), the start included, so it never codes
        worse than the analysis transform's guess by that measure. The decoder is unchanged:
        it decodes whatever integers were written. ``render`` maps a decoded latent to what
        it predicts (DVC: the reference warped by the decoded flow)."""
        gain, inv_gain, hgain, hinv = self._gains(torch.tensor([level]))
        lmbda = refinement.lambdas[level] * 255.0**2
        pixels = target.shape[-2] * target.shape[-1]
        latent = y.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([latent], lr=refinement.step)
        best, best_cost = latent.detach().clone(), math.inf
        with torch.enable_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for step in range(refinement.steps + 1):
                scaled = latent * gain
                z = self.h_a(torch.abs(latent)) * hgain
                scales = self.h_s(self._round_z(z) * hinv) * gain
                y_hat = straight_through_round(scaled) * inv_gain
                error = torch.mean((render(y_hat) - target) ** 2)
                with torch.no_grad():
                    exact = float(_bits(self.gaussian_conditional(
                        scaled, scales, training=False)[1])) + float(
                        _bits(self.entropy_bottleneck(z, training=False)[1]))
                cost = exact / pixels + lmbda * float(error.detach())
                if cost < best_cost:
                    best, best_cost = latent.detach().clone(), cost
                if step == refinement.steps:
                    break
                noisy = (_bits(self.gaussian_conditional(scaled, scales, training=True)[1])
                         + _bits(self.entropy_bottleneck(z, training=True)[1]))
                (latent.grad,) = torch.autograd.grad(noisy / pixels + lmbda * error, [latent])
                optimizer.step()
        return best

    side_search: int = 0
    """Steps of the encoder's side-information search (0: off); see :meth:`compress`."""

    def _scales_indexes(self, z_hat: Tensor, gain: Tensor) -> Tensor:
        return self.gaussian_conditional.build_indexes(self.h_s(z_hat) * gain)

    def _code(self, scaled: Tensor, z: Tensor, gain: Tensor, hinv: Tensor) -> LatentCode:
        """Entropy-code the integers ``round(scaled)`` with side information ``z``."""
        z_string = self.entropy_bottleneck.compress(z)
        z_q = self.entropy_bottleneck.decompress(z_string, z.shape[-2:])
        indexes = self._scales_indexes(z_q * hinv, gain)
        y_string = self.gaussian_conditional.compress(scaled, indexes)
        return LatentCode(y_string[0], z_string[0])

    def _search_side(self, scaled: Tensor, z: Tensor, gain: Tensor, hinv: Tensor) -> Tensor:
        """A side information ``z`` that codes the fixed integers ``round(scaled)`` in fewer
        bits than the analysis transform's ``h_a`` gives: Adam on ``z`` for
        :data:`SIDE_SEARCH_STEPS` steps, minimising the bits of ``z`` (additive noise, as in
        training; noise from a fixed seed) plus the exact bits of the integers under the
        scales ``h_s`` predicts from rounded ``z`` (straight-through). Returns the iterate
        with the fewest exact bits, the start included. The hyper-analysis ``h_a`` is an
        amortised guess trained on crops; where the latent is almost all zero (a P frame's
        residual after a dead zone) the guess costs several times the bits of the latent."""
        symbols = torch.round(scaled)
        start = z.detach().clone()
        z = start.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=SIDE_SEARCH_STEP)
        best, best_bits = start, math.inf
        with torch.enable_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for step in range(self.side_search + 1):
                scales = self.h_s(self._round_z(z) * hinv) * gain
                y_bits = _bits(self.gaussian_conditional(symbols, scales, training=False)[1])
                exact = float(y_bits.detach()) + float(
                    _bits(self.entropy_bottleneck(z, training=False)[1]).detach())
                if exact < best_bits:
                    best, best_bits = z.detach().clone(), exact
                if step == self.side_search:
                    break
                z_bits = _bits(self.entropy_bottleneck(z, training=True)[1])
                (z.grad,) = torch.autograd.grad(y_bits + z_bits, [z])
                optimizer.step()
        return best

    def compress(
        self, y: Tensor, level: int, deadzone: float = ROUNDING
    ) -> tuple[LatentCode, Tensor]:
        """Code ``y`` (batch 1) with real rANS: ``(strings, y_hat)``; ``y_hat`` is exactly what
        :meth:`decompress` returns (both come from the same decoded ``z``).

        ``deadzone`` above :data:`ROUNDING` quantises with a dead zone: scaled latents with
        ``|gain * y| < deadzone`` become 0, and ``z`` describes the latent as coded. The
        decoder is unchanged (it decodes whatever integers were written); the encoder trades
        distortion for rate, as x264's dead-zone quantiser does (see
        :meth:`gopflow.codecs.learned.engine.GopCodec`'s rate-distortion choice).

        With :attr:`side_search` steps, the encoder also codes the same integers with a
        searched ``z`` (:meth:`_search_side`) and keeps the shorter strings (real bytes):
        the reconstruction is the same, only the rate can fall."""
        if y.shape[0] != 1:
            raise ValueError("the latent coder codes one frame at a time")
        gain, inv_gain, hgain, hinv = self._gains(torch.tensor([level]))
        scaled = y * gain
        if deadzone > ROUNDING:
            scaled = torch.where(scaled.abs() < deadzone, torch.zeros_like(scaled), scaled)
            y = scaled / gain
        z = self.h_a(torch.abs(y)) * hgain
        code = self._code(scaled, z, gain, hinv)
        if self.side_search:
            searched = self._code(scaled, self._search_side(scaled, z, gain, hinv), gain, hinv)
            if len(searched.y_string) + len(searched.z_string) < (
                    len(code.y_string) + len(code.z_string)):
                code = searched
        return code, torch.round(scaled) * inv_gain

    def zeros(self, y_size: tuple[int, int]) -> Tensor:
        """The all-zero ``y_hat`` of a latent of spatial size ``y_size``: a skipped latent,
        as the encoder and the decoder both take it (no bits, not even side information)."""
        return torch.zeros(1, self.gain.shape[1], *y_size)

    def decompress(self, code: LatentCode, y_size: tuple[int, int], level: int) -> Tensor:
        """Decode ``y_hat`` (``1 x M x h x w``) for a latent of spatial size ``y_size``."""
        h, w = y_size
        if h % HYPER_STRIDE or w % HYPER_STRIDE:
            raise ValueError(f"latent size {y_size} is not a multiple of {HYPER_STRIDE}")
        gain, inv_gain, _, hinv = self._gains(torch.tensor([level]))
        z_q = self._decode_z(code.z_string, (h // HYPER_STRIDE, w // HYPER_STRIDE))
        indexes = self._scales_indexes(z_q * hinv, gain)
        y_q = _decode_latent(self.gaussian_conditional, code.y_string, indexes, "a latent")
        return y_q.to(z_q.dtype) * inv_gain

    def _decode_z(self, string: bytes, size: tuple[int, int]) -> Tensor:
        """The side information, as ``EntropyBottleneck.decompress`` returns it: the decoded
        integers (one table per channel) plus the channels' medians."""
        bottleneck = self.entropy_bottleneck
        channels = bottleneck._quantized_cdf.shape[0]
        indexes = torch.arange(channels, dtype=torch.int32)[:, None, None].expand(
            channels, *size)[None]
        symbols = _decode_latent(bottleneck, string, indexes, "a latent's side information")
        medians = bottleneck._get_medians().detach().reshape(1, channels, 1, 1)
        return symbols.type_as(medians) + medians


def _decode_latent(model: nn.Module, string: bytes, indexes: Tensor, what: str) -> Tensor:
    """The int32 symbols (``indexes``' shape) of one string of a CompressAI entropy model,
    through :func:`decode_exact` with the model's tables as shipped."""
    values = decode_exact(
        string, indexes.reshape(-1).numpy(), model._quantized_cdf.numpy(),
        model._cdf_length.reshape(-1).numpy(), model._offset.reshape(-1).numpy(), what)
    return torch.from_numpy(values.astype(np.int32)).reshape(indexes.shape)


def pack_codes(codes: list[LatentCode]) -> list[list[bytes]]:
    """Latent codes as ``pack_strings`` groups (one ``[y, z]`` group per latent)."""
    return [[code.y_string, code.z_string] for code in codes]


def unpack_codes(groups: list[list[bytes]], expected: int) -> list[LatentCode]:
    """The inverse of :func:`pack_codes`, checking the number of latents."""
    if len(groups) != expected or any(len(group) != 2 for group in groups):
        raise BitstreamError(
            f"a frame payload has {len(groups)} latents, this codec expects {expected}")
    return [LatentCode(group[0], group[1]) for group in groups]
