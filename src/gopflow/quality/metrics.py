"""Full-reference quality metrics of a distorted video against its reference.

Data flow: ``probe`` both inputs (stream index, frame counts: a count mismatch fails before
any decoding) -> decode both with PyAV in lockstep, one frame of each in memory (MS-SSIM
batches a few luma planes) -> bring each distorted frame to the reference's size and plane
layout (padding cropped; bicubic scaling only when the caller asks) -> per-frame PSNR (Y, U,
V, YUV 6:1:1), SSIM (Y), MS-SSIM (Y) -> :class:`FrameScores` (one series per metric) ->
pooled summaries (mean, harmonic mean, min, 5th percentile) for the whole video or per GOP.
VMAF runs inside ffmpeg's libvmaf (:mod:`gopflow.quality.vmaf`) and returns the same
:class:`FrameScores`; :func:`gopflow.quality.measure.measure` runs both and merges them.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from gopflow.errors import FrameCountError, MetricError, UsageError
from gopflow.media.probe import open_input, probe
from gopflow.quality.names import (
    ALL_METRICS,
    FRAME_METRICS,
    METRIC_GROUPS,
)

# PSNR of identical planes (MSE 0) is infinite; it is reported as this finite cap.
PSNR_CAP_DB = 100.0
# A distorted frame at most this much larger than the reference (in each dimension) is the
# reference plus encoder/alignment padding (odd sizes padded to even, 16-pixel macroblocks):
# it is cropped back, never scaled.
MAX_PADDING = 15
POOLINGS = ("mean", "harmonic_mean", "min", "p5")
LOW_PERCENTILE = 5.0
MSSSIM_WINDOW = 11
MSSSIM_MIN_SIDE = (MSSSIM_WINDOW - 1) * 2**4 + 1  # pytorch_msssim: 5 scales of an 11-tap window
_MSSSIM_BATCH = 8

Resize = Literal["none", "crop", "scale"]
_RESIZE_ORDER: Mapping[str, int] = {"none": 0, "crop": 1, "scale": 2}

# Planar layouts compared plane by plane; JPEG-range twins carry the same planes.
_PLAIN = {"yuvj420p": "yuv420p", "yuvj422p": "yuv422p", "yuvj444p": "yuv444p"}
_JPEG_TWIN = {plain: jpeg for jpeg, plain in _PLAIN.items()}
_COMPARE_BITS: Mapping[str, int] = {
    "gray": 8, "gray10le": 10, "gray12le": 12,
    "yuv420p": 8, "yuv422p": 8, "yuv444p": 8,
    "yuv420p10le": 10, "yuv422p10le": 10, "yuv444p10le": 10,
    "yuv420p12le": 12, "yuv422p12le": 12, "yuv444p12le": 12,
}


# ---------------------------------------------------------------------------------------------
# Results and pooling
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pooled:
    """One metric pooled over a run of frames.

    ``harmonic_mean`` is libvmaf's ``n / sum(1 / (x + 1)) - 1`` (defined for scores of 0,
    which VMAF has; within a few hundredths of the plain harmonic mean for PSNR values), used
    for every metric so the poolings mean the same thing everywhere. ``p5`` is the 5th
    percentile (linear interpolation between frames).
    """

    frames: int
    mean: float
    harmonic_mean: float
    min: float
    p5: float

    def to_dict(self) -> dict[str, float | int]:
        return {
            "frames": self.frames, "mean": self.mean, "harmonic_mean": self.harmonic_mean,
            "min": self.min, "p5": self.p5,
        }


def pool(values: Sequence[float]) -> Pooled:
    """Mean, harmonic mean, minimum and 5th percentile of per-frame scores."""
    if len(values) == 0:
        return Pooled(0, math.nan, math.nan, math.nan, math.nan)
    data = np.asarray(values, dtype=np.float64)
    shifted = data + 1.0
    harmonic = len(data) / float(np.sum(1.0 / shifted)) - 1.0 if np.all(shifted > 0) else math.nan
    return Pooled(
        frames=len(data),
        mean=float(np.mean(data)),
        harmonic_mean=harmonic,
        min=float(np.min(data)),
        p5=float(np.percentile(data, LOW_PERCENTILE)),
    )


@dataclass(frozen=True)
class MetricSeries:
    """Per-frame scores of one metric, frame ``i`` of the reference at index ``i``."""

    name: str
    values: tuple[float, ...]

    def pooled(self, start: int = 0, end: int | None = None) -> Pooled:
        return pool(self.values[start:end])


class _FrameRange(Protocol):
    start_frame: int

    @property
    def end_frame(self) -> int: ...


@dataclass(frozen=True)
class GopQuality:
    """Pooled scores of frames ``[start_frame, end_frame)`` (one GOP)."""

    index: int
    start_frame: int
    end_frame: int
    pooled: Mapping[str, Pooled]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "start_frame": self.start_frame, "end_frame": self.end_frame,
            "pooled": {name: p.to_dict() for name, p in self.pooled.items()},
        }


@dataclass(frozen=True)
class FrameScores:
    """Per-frame scores of ``distorted`` against ``reference`` at the reference's size.

    ``resize`` says what was done to the distorted frames: ``none``, ``crop`` (padding
    removed) or ``scale`` (bicubic to the reference size).
    """

    reference: str
    distorted: str
    frames: int
    width: int
    height: int
    distorted_width: int
    distorted_height: int
    resize: Resize
    series: tuple[MetricSeries, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.series)

    def __getitem__(self, name: str) -> tuple[float, ...]:
        for s in self.series:
            if s.name == name:
                return s.values
        raise KeyError(f"no metric {name!r} in these scores (have: {', '.join(self.names)})")

    def summary(self) -> dict[str, Pooled]:
        """Every metric pooled over the whole video."""
        return {s.name: s.pooled() for s in self.series}

    def per_gop(self, ranges: Iterable[tuple[int, int] | _FrameRange]) -> tuple[GopQuality, ...]:
        """Every metric pooled per frame range: ``(start, end)`` pairs (end exclusive) or
        objects with ``start_frame``/``end_frame`` such as :class:`gopflow.types.GopSpec`."""
        found = []
        for index, item in enumerate(ranges):
            if isinstance(item, tuple):
                start, end = int(item[0]), int(item[1])
            else:
                start, end = int(item.start_frame), int(item.end_frame)
            if not 0 <= start < end <= self.frames:
                raise MetricError(
                    f"frame range {index} [{start}, {end}) is empty or outside the "
                    f"{self.frames} scored frames"
                )
            found.append(
                GopQuality(index, start, end, {s.name: s.pooled(start, end) for s in self.series})
            )
        return tuple(found)

    def merged(self, other: FrameScores) -> FrameScores:
        """These scores plus ``other``'s metrics (same inputs and frame count)."""
        if other.frames != self.frames:
            raise FrameCountError(
                f"cannot merge scores of {self.frames} and {other.frames} frames "
                f"({self.distorted})"
            )
        clash = set(self.names) & set(other.names)
        if clash:
            raise MetricError(f"metrics scored twice: {', '.join(sorted(clash))}")
        resize = max(self.resize, other.resize, key=_RESIZE_ORDER.__getitem__)
        return FrameScores(
            self.reference, self.distorted, self.frames, self.width, self.height,
            self.distorted_width, self.distorted_height, resize, self.series + other.series,
        )

    def to_dict(self, per_frame: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "reference": self.reference, "distorted": self.distorted, "frames": self.frames,
            "width": self.width, "height": self.height,
            "distorted_width": self.distorted_width, "distorted_height": self.distorted_height,
            "resize": self.resize,
            "summary": {name: p.to_dict() for name, p in self.summary().items()},
        }
        if per_frame:
            data["per_frame"] = {s.name: list(s.values) for s in self.series}
        return data


@dataclass(frozen=True)
class PsnrSummary:
    """Per-frame luma PSNR and its pooled values (kept for :func:`psnr_y`'s callers)."""

    frames: int
    per_frame_y: tuple[float, ...]

    @property
    def mean_y(self) -> float:
        return float(np.mean(self.per_frame_y)) if self.per_frame_y else math.nan

    @property
    def min_y(self) -> float:
        return float(np.min(self.per_frame_y)) if self.per_frame_y else math.nan


# ---------------------------------------------------------------------------------------------
# Names, sizes, layouts
# ---------------------------------------------------------------------------------------------


def expand_metrics(names: Iterable[str]) -> tuple[str, ...]:
    """Metric names from groups (``psnr``) and single names (``psnr_y``), in canonical order."""
    wanted: set[str] = set()
    for raw in names:
        name = raw.strip().lower().replace("-", "_")
        if not name:
            continue
        if name in METRIC_GROUPS:
            wanted.update(METRIC_GROUPS[name])
        elif name in ALL_METRICS:
            wanted.add(name)
        else:
            raise UsageError(
                f"unknown metric {raw!r}; choose from {', '.join(METRIC_GROUPS)} "
                f"(or single names: {', '.join(ALL_METRICS)})"
            )
    if not wanted:
        raise UsageError("no metric asked for")
    return tuple(m for m in ALL_METRICS if m in wanted)


def plan_resize(
    reference: tuple[int, int], distorted: tuple[int, int], scale: bool
) -> Resize:
    """How a ``distorted`` (width, height) frame is brought to the ``reference`` size."""
    (rw, rh), (dw, dh) = reference, distorted
    if (rw, rh) == (dw, dh):
        return "none"
    if 0 <= dw - rw <= MAX_PADDING and 0 <= dh - rh <= MAX_PADDING:
        return "crop"
    if scale:
        return "scale"
    raise MetricError(
        f"frame sizes differ: reference {rw}x{rh}, distorted {dw}x{dh}; ask for scaling "
        "(scale=True, --scale) to compare the distorted frames scaled to the reference's "
        "size with bicubic"
    )


def compare_format(pix_fmt: str) -> str:
    """The planar layout frames of a ``pix_fmt`` reference are compared in."""
    plain = _PLAIN.get(pix_fmt, pix_fmt)
    if plain in _COMPARE_BITS:
        return plain
    try:
        import av

        bits = max(c.bits for c in av.VideoFormat(plain).components)
    except (ValueError, TypeError):
        bits = 8
    if bits <= 8:
        return "yuv420p"
    return "yuv420p10le" if bits <= 10 else "yuv420p12le"


def _plane_arrays(frame: Any, sixteen_bit: bool) -> list[np.ndarray]:
    """Views of a planar frame's planes without the line padding."""
    dtype = np.uint16 if sixteen_bit else np.uint8
    size = 2 if sixteen_bit else 1
    arrays = []
    for plane in frame.planes:
        rows = np.frombuffer(plane, dtype).reshape(plane.height, plane.line_size // size)
        arrays.append(rows[:, : plane.width])
    return arrays


def _to_layout(frame: Any, fmt: str, size: tuple[int, int] | None) -> Any:
    """``frame`` in layout ``fmt`` (its JPEG-range twin kept, so no range conversion), scaled
    to ``size`` with bicubic when given."""
    name = frame.format.name
    if _PLAIN.get(name, name) == fmt:
        target = name
    elif name in _PLAIN:
        target = _JPEG_TWIN.get(fmt, fmt)
    else:
        target = fmt
    if size is None:
        return frame if target == name else frame.reformat(format=target)
    return frame.reformat(width=size[0], height=size[1], format=target, interpolation="BICUBIC")


# ---------------------------------------------------------------------------------------------
# Per-frame metrics
# ---------------------------------------------------------------------------------------------


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    diff = a.astype(np.int64) - b.astype(np.int64)
    return float(np.einsum("ij,ij->", diff, diff)) / diff.size


def psnr_from_mse(mse: float, peak: float = 255.0) -> float:
    """ffmpeg's ``10 log10(peak^2 / MSE)``, capped at :data:`PSNR_CAP_DB` for identical planes."""
    if mse <= 0.0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(peak * peak / mse))


def ssim_plane(reference: np.ndarray, distorted: np.ndarray, peak: int = 255) -> float:
    """SSIM of one plane exactly as ffmpeg's ``ssim`` filter (and x264) compute it.

    Written by hand instead of taken from a library because the gopflow numbers must match
    the ffmpeg/x264 SSIM that encoder logs and published tables use, and library SSIMs
    (skimage, pytorch_msssim) use an 11x11 Gaussian window and give different values. ffmpeg
    sums 4x4 blocks, slides an 8x8 window in steps of 4 (overlap 4) over whole blocks only
    (a right/bottom remainder under 4 pixels is ignored), scores each window with integer
    sums and constants ``c1 = (0.01 peak)^2 64`` and ``c2 = (0.03 peak)^2 64 63`` (rounded to
    integers for 8 bit), and averages the windows. Integer sums are exact here (int64);
    ffmpeg's final ratio is in float32, so values agree to about 1e-7.
    """
    height, width = reference.shape
    bh, bw = height // 4, width // 4
    if bh < 2 or bw < 2:
        raise MetricError(f"plane {width}x{height} is too small for SSIM (needs 8x8)")
    a = reference[: bh * 4, : bw * 4].astype(np.int64)
    b = distorted[: bh * 4, : bw * 4].astype(np.int64)

    def blocks(x: np.ndarray) -> np.ndarray:
        sums = x.reshape(bh, 4, bw, 4).sum(axis=(1, 3))
        return sums[:-1, :-1] + sums[1:, :-1] + sums[:-1, 1:] + sums[1:, 1:]

    s1, s2 = blocks(a), blocks(b)
    ss, s12 = blocks(a * a + b * b), blocks(a * b)
    if peak == 255:
        c1 = float(int(0.01 * 0.01 * 255 * 255 * 64 + 0.5))
        c2 = float(int(0.03 * 0.03 * 255 * 255 * 64 * 63 + 0.5))
    else:
        c1 = 0.01 * 0.01 * peak * peak * 64
        c2 = 0.03 * 0.03 * peak * peak * 64 * 63
    variances = (ss * 64 - s1 * s1 - s2 * s2).astype(np.float64)
    covariance = (s12 * 64 - s1 * s2).astype(np.float64)
    s1f, s2f = s1.astype(np.float64), s2.astype(np.float64)
    score = ((2 * s1f * s2f + c1) * (2 * covariance + c2)) / (
        (s1f * s1f + s2f * s2f + c1) * (variances + c2)
    )
    return float(np.mean(score))


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run torch with ``threads`` intra-op threads, restoring the previous setting after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _MsSsim:
    """MS-SSIM (Y) with pytorch_msssim on small batches of luma planes (never a whole video)."""

    def __init__(self, peak: int, device: str) -> None:
        self.peak, self.device = peak, device
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.scores: list[float] = []

    def add(self, reference: np.ndarray, distorted: np.ndarray) -> None:
        height, width = reference.shape
        if min(height, width) < MSSSIM_MIN_SIDE:
            raise MetricError(
                f"MS-SSIM needs frames of at least {MSSSIM_MIN_SIDE} pixels on the shorter "
                f"side (5 scales of an {MSSSIM_WINDOW}-tap window); the reference is "
                f"{width}x{height}"
            )
        self.pending.append((reference.astype(np.float32), distorted.astype(np.float32)))
        if len(self.pending) >= _MSSSIM_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        import torch
        from pytorch_msssim import ms_ssim

        ref = torch.from_numpy(np.stack([r for r, _ in self.pending])[:, None]).to(self.device)
        dist = torch.from_numpy(np.stack([d for _, d in self.pending])[:, None]).to(self.device)
        with torch.no_grad():
            values = ms_ssim(
                ref, dist, data_range=float(self.peak), size_average=False,
                win_size=MSSSIM_WINDOW,
            )
        self.scores.extend(float(v) for v in values.cpu())
        self.pending.clear()


def default_threads() -> int:
    """Threads per measurement: the machine's cores, at most 4 (a worker shares its node)."""
    return max(1, min(4, os.cpu_count() or 1))


def compare_frames(
    reference: Iterable[Any],
    distorted: Iterable[Any],
    metrics: Iterable[str] = ("psnr", "ssim"),
    *,
    scale: bool = False,
    allow_length_mismatch: bool = False,
    threads: int | None = None,
    device: str = "cpu",
    names: tuple[str, str] = ("reference", "distorted"),
) -> FrameScores:
    """Score decoded PyAV frames pairwise (frame ``i`` with frame ``i``), streaming.

    The comparison layout and size are the reference's: distorted frames are cropped (pad),
    scaled (only with ``scale``) and converted as needed. Frame-count mismatches raise
    :class:`FrameCountError` unless ``allow_length_mismatch`` (then the shorter count wins).
    VMAF names are not accepted here (see :func:`gopflow.quality.measure.measure`).
    """
    wanted = expand_metrics(metrics)
    unsupported = [m for m in wanted if m not in FRAME_METRICS]
    if unsupported:
        raise UsageError(f"compare_frames cannot score {', '.join(unsupported)} (use measure)")
    threads = threads or default_threads()
    values: dict[str, list[float]] = {m: [] for m in wanted if m != "msssim_y"}
    msssim: _MsSsim | None = None
    count, resize = 0, "none"
    ref_iter, dist_iter = iter(reference), iter(distorted)
    first_dist_size = (0, 0)
    ref_size = (0, 0)
    stack = contextlib.ExitStack()
    if "msssim_y" in wanted:
        stack.enter_context(torch_threads(threads))
    with stack:
        while True:
            ref_frame = next(ref_iter, None)
            dist_frame = next(dist_iter, None)
            if ref_frame is None or dist_frame is None:
                if (ref_frame is None) != (dist_frame is None) and not allow_length_mismatch:
                    longer = names[0] if dist_frame is None else names[1]
                    raise FrameCountError(
                        f"frame counts differ: {names[1]} and {names[0]} diverge after frame "
                        f"{count} ({longer} has more); pass allow_length_mismatch "
                        "(--allow-length-mismatch) to score the common frames"
                    )
                break
            fmt = compare_format(ref_frame.format.name)
            bits = _COMPARE_BITS[fmt]
            peak = (1 << bits) - 1
            ref_size = (ref_frame.width, ref_frame.height)
            dist_size = (dist_frame.width, dist_frame.height)
            if count == 0:
                first_dist_size = dist_size
            plan = plan_resize(ref_size, dist_size, scale)
            if _RESIZE_ORDER[plan] > _RESIZE_ORDER[resize]:
                resize = plan
            ref_planes = _plane_arrays(_to_layout(ref_frame, fmt, None), bits > 8)
            dist_frame = _to_layout(dist_frame, fmt, ref_size if plan == "scale" else None)
            dist_planes = [
                d[: r.shape[0], : r.shape[1]]
                for r, d in zip(ref_planes, _plane_arrays(dist_frame, bits > 8), strict=True)
            ]
            _score_frame(values, ref_planes, dist_planes, peak)
            if "msssim_y" in wanted:
                if msssim is None:
                    msssim = _MsSsim(peak, device)
                msssim.add(ref_planes[0], dist_planes[0])
            count += 1
        if msssim is not None:
            msssim.flush()
    series = []
    for name in wanted:
        if name == "msssim_y":
            series.append(MetricSeries(name, tuple(msssim.scores if msssim else ())))
        elif values[name] or count == 0:
            series.append(MetricSeries(name, tuple(values[name])))
    return FrameScores(
        reference=names[0], distorted=names[1], frames=count,
        width=ref_size[0], height=ref_size[1],
        distorted_width=first_dist_size[0], distorted_height=first_dist_size[1],
        resize=resize,  # type: ignore[arg-type]
        series=tuple(series),
    )


def _score_frame(
    values: dict[str, list[float]],
    ref: list[np.ndarray],
    dist: list[np.ndarray],
    peak: int,
) -> None:
    """Append one frame's PSNR/SSIM values (chroma metrics only when there is chroma)."""
    if any(name.startswith("psnr") for name in values):
        psnr = [psnr_from_mse(_mse(r, d), peak) for r, d in zip(ref, dist, strict=True)]
        if "psnr_y" in values:
            values["psnr_y"].append(psnr[0])
        if len(psnr) == 3:  # gray references have no chroma: no U, V or YUV PSNR
            for index, name in ((1, "psnr_u"), (2, "psnr_v")):
                if name in values:
                    values[name].append(psnr[index])
            if "psnr_yuv" in values:
                values["psnr_yuv"].append((6.0 * psnr[0] + psnr[1] + psnr[2]) / 8.0)
    if "ssim_y" in values:
        values["ssim_y"].append(ssim_plane(ref[0], dist[0], peak))


def _decoded_frames(path: str, stream_index: int, threads: int) -> Iterator[Any]:
    with open_input(path) as container:
        stream = container.streams[stream_index]
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        yield from container.decode(stream)


def check_frame_counts(
    reference: str, ref_frames: int, distorted: str, dist_frames: int, allow_mismatch: bool
) -> None:
    """Fail early (before decoding) when the inputs' frame counts differ."""
    if ref_frames != dist_frames and not allow_mismatch:
        raise FrameCountError(
            f"frame counts differ: reference {reference} has {ref_frames} frames, distorted "
            f"{distorted} has {dist_frames}; pass allow_length_mismatch "
            "(--allow-length-mismatch) to score the first "
            f"{min(ref_frames, dist_frames)}"
        )


def compute_metrics(
    reference: str,
    distorted: str,
    metrics: Iterable[str] = ("psnr", "ssim"),
    *,
    scale: bool = False,
    allow_length_mismatch: bool = False,
    threads: int | None = None,
    device: str = "cpu",
) -> FrameScores:
    """PSNR/SSIM/MS-SSIM of every frame of ``distorted`` against ``reference`` (two files)."""
    ref_info, dist_info = probe(reference), probe(distorted)
    check_frame_counts(
        reference, ref_info.frame_count, distorted, dist_info.frame_count, allow_length_mismatch
    )
    plan_resize((ref_info.width, ref_info.height), (dist_info.width, dist_info.height), scale)
    threads = threads or default_threads()
    decoder_threads = max(1, threads // 2)
    ref_frames = _decoded_frames(reference, ref_info.stream_index, decoder_threads)
    dist_frames = _decoded_frames(distorted, dist_info.stream_index, decoder_threads)
    try:
        return compare_frames(
            ref_frames, dist_frames, metrics, scale=scale,
            allow_length_mismatch=allow_length_mismatch, threads=threads, device=device,
            names=(reference, distorted),
        )
    finally:
        ref_frames.close()
        dist_frames.close()


def psnr_y(reference: str, distorted: str, allow_length_mismatch: bool = False) -> PsnrSummary:
    """Luma PSNR of every frame of ``distorted`` against ``reference``."""
    scores = compute_metrics(
        reference, distorted, ("psnr_y",), allow_length_mismatch=allow_length_mismatch
    )
    return PsnrSummary(scores.frames, scores["psnr_y"])
