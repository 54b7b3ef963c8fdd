"""``gopflow train evaluate``: a registered precoder against plain resampling on held-out clips.

Each clip's first frames are decoded once, then coded two ways: through the differentiable
codec proxy (luma, per QP) and through real x264 encodes (all planes, per CRF, via
:func:`gopflow.training.x264.x264_roundtrip`). PSNR-Y is measured at source size, so the
numbers say what a viewer gets, not how close the low-resolution pictures are; BD-rate and
BD-PSNR summarise the x264 curves of the learned model against the plain resampler.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from gopflow.errors import InputError
from gopflow.precoders.resample import scaled_size
from gopflow.training.common import EVAL_QPS, psnr_from_mse
from gopflow.training.x264 import x264_roundtrip

DEFAULT_EVAL_CLIPS: tuple[str, ...] = (
    "white_flower_1280x720.264",
    "red_trees_drive_1920x1080.264",
    "flower_960x540.mp4",
    "car_traffic_768x432.mp4",
    "foreman_cif_352x288.264",
)
"""File names (in ``../shared/media``) of the default held-out clips for precoder evaluation."""


def _decode_frames(path: str, count: int) -> tuple[list[Any], float]:
    import av

    from gopflow.precoders.inference import as_420

    frames = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        for frame in container.decode(stream):
            frames.append(as_420(frame))
            if len(frames) == count:
                break
    if not frames:
        raise InputError(f"{path}: no frames decoded")
    return frames, rate


def _packed(frame: Any) -> bytes:
    from gopflow.precoders.inference import plane_array

    return b"".join(plane_array(frame, i).tobytes() for i in range(3))


def _luma_mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def evaluate_model(
    name: str,
    clips: Sequence[str],
    frames: int = 16,
    crfs: Sequence[float] = (23, 28, 33, 38),
    qps: Sequence[int] = EVAL_QPS,
    preset: str = "medium",
    threads: int = 1,
    registry_dir: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Held-out comparison of a registered model against the plain resamplers.

    ``dvp-*``: learned vs Lanczos vs bicubic downscale, each followed by the codec proxy
    (luma, per QP) or a real x264 encode (per CRF, all planes) and a bicubic (swscale)
    upscale; PSNR-Y at source size, kbit/s, BD-rate/BD-PSNR of learned vs Lanczos.
    ``vistra-up-*``: Lanczos down, coded, then learned vs bicubic up.
    ``vistra-interp``: odd frames from coded even neighbours: learned vs average vs repeat.
    """
    import torch
    import torch.nn.functional as F

    from gopflow.precoders import inference
    from gopflow.precoders.dvp import DvpPrecoder
    from gopflow.precoders.proxy import CodecProxy
    from gopflow.precoders.vistra import LearnedRestorer
    from gopflow.quality.bd import bd_quality, bd_rate

    say = log or (lambda message: None)
    model = inference.MODEL_CACHE.get(name, registry_dir)
    proxy = CodecProxy().eval()
    report: dict[str, Any] = {"model": name, "frames": frames, "crfs": list(crfs),
                              "qps": list(qps), "preset": preset, "clips": {}}
    kind = "vistra-interp" if name == "vistra-interp" else name.rsplit("-", 1)[0]
    scale = None if kind == "vistra-interp" else Fraction(name.rsplit("-", 1)[1].replace("_", "/"))

    def t(plane: np.ndarray) -> Any:
        return torch.from_numpy(plane.astype(np.float32))[None, None] / 255.0

    def u8(tensor: Any) -> np.ndarray:
        return tensor[0, 0].mul(255).round().clamp(0, 255).to(torch.uint8).numpy()

    with inference.torch_settings(threads):
        for path in clips:
            source, fps = _decode_frames(path, frames)
            width, height = source[0].width, source[0].height
            ys = [inference.plane_array(f, 0) for f in source]
            entry: dict[str, Any] = {"size": f"{width}x{height}", "frames": len(source)}
            if kind in ("dvp", "vistra-up"):
                assert scale is not None
                sw, sh = scaled_size(width, height, scale)
                smalls: dict[str, list[Any]] = {
                    "lanczos": [f.reformat(width=sw, height=sh, interpolation="LANCZOS")
                                for f in source],
                }
                if kind == "dvp":
                    precoder = DvpPrecoder(scale, threads=threads, model=model)
                    smalls["bicubic"] = [
                        f.reformat(width=sw, height=sh, interpolation="BICUBIC") for f in source
                    ]
                    smalls["learned"] = [precoder.down(f) for f in source]
                    ups = {"bicubic-up": None}
                else:
                    ups = {"bicubic-up": None, "learned-up": model}
                # Codec proxy (luma).
                proxy_rows: dict[str, list[float]] = {}
                for method, pics in smalls.items():
                    if kind == "dvp":
                        planes = [
                            np.frombuffer(p, np.uint8)[: sw * sh].reshape(sh, sw)
                            if isinstance(p, bytes) else inference.plane_array(p, 0)
                            for p in pics
                        ]
                    else:
                        planes = [inference.plane_array(p, 0) for p in pics]
                    for up_name, up_model in ups.items():
                        label = method if kind == "dvp" else up_name
                        row = []
                        for qp in [None, *qps]:
                            mse = []
                            for plane, ref in zip(planes, ys, strict=True):
                                x = t(plane)
                                coded = x if qp is None else proxy(x, float(qp))
                                if up_model is None:
                                    big = F.interpolate(coded, size=(height, width),
                                                        mode="bicubic", align_corners=False)
                                else:
                                    big = up_model(coded, (height, width))
                                mse.append(_luma_mse(u8(big), ref))
                            row.append(round(psnr_from_mse(float(np.mean(mse))), 3))
                        proxy_rows[label] = row
                entry["proxy_psnr"] = {"qps": ["none", *qps], **proxy_rows}
                # Real x264 (all planes), swscale bicubic or learned luma up.
                x264: dict[str, dict[str, list[float]]] = {}
                restorer = LearnedRestorer(threads=threads, registry_dir=registry_dir)
                from gopflow.precoders.restore import RestoreTarget

                target = RestoreTarget(width, height, Fraction(fps).limit_denominator(1001),
                                       len(source))
                for method, pics in smalls.items():
                    packed = [p if isinstance(p, bytes) else _packed(p) for p in pics]
                    for crf in crfs:
                        decoded, size = x264_roundtrip(packed, sw, sh, fps, crf, preset)
                        kbps = size * 8 * fps / len(packed) / 1000
                        for up_name, up_model in ups.items():
                            label = method if kind == "dvp" else up_name
                            mse = []
                            for frame, ref in zip(decoded, ys, strict=True):
                                if up_model is None:
                                    big = frame.reformat(width=width, height=height,
                                                         interpolation="BICUBIC")
                                    plane = inference.plane_array(big, 0)
                                else:
                                    full = restorer.full_size_bytes(frame, target)
                                    plane = np.frombuffer(full, np.uint8)[: width * height]
                                    plane = plane.reshape(height, width)
                                mse.append(_luma_mse(plane, ref))
                            row = x264.setdefault(label, {"kbps": [], "psnr": []})
                            row["kbps"].append(round(kbps, 2))
                            row["psnr"].append(round(psnr_from_mse(float(np.mean(mse))), 3))
                entry["x264_psnr"] = x264
                anchor, test = ("lanczos", "learned") if kind == "dvp" else (
                    "bicubic-up", "learned-up")
                try:
                    entry["bd_rate_percent"] = round(bd_rate(
                        x264[anchor]["kbps"], x264[anchor]["psnr"],
                        x264[test]["kbps"], x264[test]["psnr"]), 2)
                    entry["bd_psnr_db"] = round(bd_quality(
                        x264[anchor]["kbps"], x264[anchor]["psnr"],
                        x264[test]["kbps"], x264[test]["psnr"]), 3)
                except ValueError as exc:
                    entry["bd_error"] = str(exc)
            else:
                entry.update(_evaluate_interp(model, source, ys, fps, qps, crfs, preset, proxy,
                                              threads, registry_dir))
            report["clips"][os.path.basename(path)] = entry
            say(f"evaluated {name} on {os.path.basename(path)}")
    return report


def _evaluate_interp(
    model: Any, source: Sequence[Any], ys: Sequence[np.ndarray], fps: float,
    qps: Sequence[int], crfs: Sequence[float], preset: str, proxy: Any,
    threads: int, registry_dir: str | None,
) -> dict[str, Any]:
    """Odd frames predicted from their (coded) even neighbours."""
    import torch

    from gopflow.precoders.inference import plane_array
    from gopflow.precoders.vistra import LearnedRestorer

    def t(plane: np.ndarray) -> Any:
        return torch.from_numpy(plane.astype(np.float32))[None, None] / 255.0

    def u8(tensor: Any) -> np.ndarray:
        return tensor[0, 0].mul(255).round().clamp(0, 255).to(torch.uint8).numpy()

    odd = range(1, len(ys) - 1, 2)
    out: dict[str, Any] = {"proxy_psnr": {"qps": ["none", *qps]}, "x264_psnr": {}}
    rows: dict[str, list[float]] = {"learned": [], "average": [], "repeat": []}
    for qp in [None, *qps]:
        mse: dict[str, list[float]] = {k: [] for k in rows}
        for i in odd:
            a, b = t(ys[i - 1]), t(ys[i + 1])
            if qp is not None:
                a, b = proxy(a, float(qp)), proxy(b, float(qp))
            mse["learned"].append(_luma_mse(u8(model(a, b)), ys[i]))
            mse["average"].append(_luma_mse(u8(0.5 * (a + b)), ys[i]))
            mse["repeat"].append(_luma_mse(u8(a), ys[i]))
        for k in rows:
            rows[k].append(round(psnr_from_mse(float(np.mean(mse[k]))), 3))
    out["proxy_psnr"].update(rows)
    width, height = source[0].width, source[0].height
    even = [_packed(f) for f in source[0::2]]
    restorer = LearnedRestorer(threads=threads, registry_dir=registry_dir)
    for crf in crfs:
        decoded, size = x264_roundtrip(even, width, height, fps / 2, crf, preset)
        kbps = size * 8 * (fps / 2) / len(even) / 1000
        packed = [_packed(f) for f in decoded]
        mse = {k: [] for k in rows}
        for i in odd:
            prev, nxt = packed[(i - 1) // 2], packed[(i + 1) // 2]
            mid = restorer.interpolate(prev, nxt, width, height)
            luma = np.frombuffer(mid, np.uint8)[: width * height].reshape(height, width)
            mse["learned"].append(_luma_mse(luma, ys[i]))
            pa = plane_array(decoded[(i - 1) // 2], 0).astype(np.uint16)
            pb = plane_array(decoded[(i + 1) // 2], 0)
            mse["average"].append(_luma_mse(((pa + pb + 1) // 2).astype(np.uint8), ys[i]))
            mse["repeat"].append(_luma_mse(plane_array(decoded[(i - 1) // 2], 0), ys[i]))
        for k in rows:
            row = out["x264_psnr"].setdefault(k, {"kbps": [], "psnr_odd_frames": []})
            row["kbps"].append(round(kbps, 2))
            row["psnr_odd_frames"].append(round(psnr_from_mse(float(np.mean(mse[k]))), 3))
    return out


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of :func:`evaluate_model`'s report."""
    lines = [f"model {report['model']}: {report['frames']} frames per clip, x264 "
             f"{report['preset']}, PSNR-Y dB at source size"]
    for clip, entry in report["clips"].items():
        lines.append(f"\n{clip} ({entry['size']}, {entry['frames']} frames)")
        proxy = entry["proxy_psnr"]
        lines.append("  proxy QP       " + " ".join(f"{q!s:>7}" for q in proxy["qps"]))
        for method, row in proxy.items():
            if method != "qps":
                lines.append(f"  {method:<14} " + " ".join(f"{v:7.2f}" for v in row))
        lines.append("  x264 CRF       " + " ".join(f"{c:>15g}" for c in report["crfs"]))
        for method, row in entry["x264_psnr"].items():
            values = row.get("psnr", row.get("psnr_odd_frames"))
            cells = " ".join(f"{q:6.2f}@{r:7.1f}k" for q, r in zip(values, row["kbps"],
                                                                  strict=True))
            lines.append(f"  {method:<14} {cells}")
        if "bd_rate_percent" in entry:
            lines.append(f"  BD-rate {entry['bd_rate_percent']:+.2f}%  "
                         f"BD-PSNR {entry['bd_psnr_db']:+.3f} dB (learned vs plain)")
    return "\n".join(lines)

