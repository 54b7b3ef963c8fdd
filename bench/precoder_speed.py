"""Speed of the learned precoders on this CPU, at 720p (frames per second).

Rows: the DVP downscalers (encoder side, 1280x720 -> the scaled size), the ViSTRA
up-samplers (decoder side, scaled size -> 1280x720 output) and the frame interpolator
(two 1280x720 frames -> the middle one). For each: the network alone on a luma tensor
(``torch.inference_mode``) and the full wrapper the pipeline calls (PyAV frame in, packed
yuv420p bytes out: plane copies, uint8 conversion, swscale chroma), at 1 and 2 torch
threads. Shipped (registered) weights are used where present, else untrained networks of
the same architecture (same cost).

The issue's targets: downscalers >= 25 fps, up-sampler and interpolator >= 5 fps.
Timings on a shared machine are noisy: each cell is the median of ``--repeats`` runs
(after a warm-up), with the best run in brackets.

Usage::

    .venv/bin/python bench/precoder_speed.py [--repeats 15] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from fractions import Fraction

import av
import numpy as np
import torch

from gopflow.precoders.dvp import DvpDownscaler, DvpPrecoder
from gopflow.precoders.inference import MODEL_CACHE, plane_array, torch_settings
from gopflow.precoders.resample import scaled_size
from gopflow.precoders.restore import RestoreTarget
from gopflow.precoders.vistra import FrameInterpolator, LearnedRestorer, Upsampler
from gopflow.zoo.registry import (
    INTERPOLATOR_NAME,
    dvp_name,
    has_model,
    upsampler_name,
)

WIDTH, HEIGHT = 1280, 720
SCALES = (Fraction(3, 4), Fraction(2, 3), Fraction(1, 2))
TARGETS = {"dvp": 25.0, "up": 5.0, "interp": 5.0}


def _model(name: str, fallback: Callable[[], torch.nn.Module]) -> tuple[torch.nn.Module, str]:
    if has_model(name):
        return MODEL_CACHE.get(name, None), "shipped"
    return fallback().eval(), "untrained"


def _frame(width: int, height: int, seed: int) -> av.VideoFrame:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    luma = 128 + 70 * np.sin(xx / 9.0 + seed) * np.cos(yy / 13.0) + rng.normal(0, 6, xx.shape)
    frame = av.VideoFrame(width, height, "yuv420p")
    data = [np.clip(luma, 0, 255).astype(np.uint8),
            rng.integers(90, 166, ((height + 1) // 2, (width + 1) // 2), dtype=np.uint8),
            rng.integers(90, 166, ((height + 1) // 2, (width + 1) // 2), dtype=np.uint8)]
    for plane, values in zip(frame.planes, data, strict=True):
        rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        rows[:, : values.shape[1]] = values
    return frame


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1.0 / statistics.median(times), 1.0 / min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    source = _frame(WIDTH, HEIGHT, 0)
    other = _frame(WIDTH, HEIGHT, 1)
    y = torch.from_numpy(np.random.default_rng(2).random((1, 1, HEIGHT, WIDTH), np.float32))
    y2 = torch.roll(y, 3, dims=3)
    target = RestoreTarget(WIDTH, HEIGHT, Fraction(25), 2)
    prev, nxt = (b"".join(plane_array(f, i).tobytes() for i in range(3)) for f in (source, other))

    def cell(fps: tuple[float, float]) -> str:
        return f"{fps[0]:6.1f} ({fps[1]:.1f})"

    rows: list[tuple[str, str, str, int, str, str, str]] = []
    for threads in args.threads:
        for scale in SCALES:
            model, origin = _model(dvp_name(scale), lambda s=scale: DvpDownscaler(s))
            precoder = DvpPrecoder(scale, threads=threads, model=model)
            w, h = scaled_size(WIDTH, HEIGHT, scale)

            def dvp_net(model=model, threads=threads) -> object:
                with torch_settings(threads):
                    return model(y)

            rows.append((
                "dvp", f"dvp-{scale}", f"{WIDTH}x{HEIGHT} -> {w}x{h}", threads, origin,
                cell(_time(dvp_net, args.repeats)),
                cell(_time(lambda p=precoder: p.down(source), args.repeats)),
            ))
        for scale in SCALES:
            model, origin = _model(upsampler_name(scale), lambda s=scale: Upsampler(s))
            w, h = scaled_size(WIDTH, HEIGHT, scale)
            small_t = torch.rand(1, 1, h, w)
            small = source.reformat(width=w, height=h)
            restorer = LearnedRestorer(threads=threads)
            if origin == "untrained":  # time the network's cost even without shipped weights
                restorer.upsampler = lambda _s, m=model: m  # type: ignore[method-assign]

            def up_net(model=model, small_t=small_t, threads=threads) -> object:
                with torch_settings(threads):
                    return model(small_t, (HEIGHT, WIDTH))

            rows.append((
                "up", f"vistra-up-{scale}", f"{w}x{h} -> {WIDTH}x{HEIGHT}", threads, origin,
                cell(_time(up_net, args.repeats)),
                cell(_time(lambda r=restorer, s=small: r.full_size_bytes(s, target),
                           args.repeats)),
            ))
        model, origin = _model(INTERPOLATOR_NAME, FrameInterpolator)
        restorer = LearnedRestorer(threads=threads)
        if origin == "untrained":
            restorer.interpolator = lambda m=model: m  # type: ignore[method-assign]

        def interp_net(model=model, threads=threads) -> object:
            with torch_settings(threads):
                return model(y, y2)

        rows.append((
            "interp", "vistra-interp", f"2 x {WIDTH}x{HEIGHT} -> 1", threads, origin,
            cell(_time(interp_net, args.repeats)),
            cell(_time(lambda r=restorer: r.interpolate(prev, nxt, WIDTH, HEIGHT),
                       args.repeats)),
        ))

    print(f"learned precoder speed, fps (median of {args.repeats}; best in brackets)")
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}")
    header = ("model", "size", "threads", "weights", "net fps", "wrapper fps", "target")
    print(f"{header[0]:<16} {header[1]:<22} {header[2]:>7} {header[3]:>9} {header[4]:>16} "
          f"{header[5]:>16} {header[6]:>7}")
    for kind, name, size, threads, origin, net_fps, wrap_fps in rows:
        print(f"{name:<16} {size:<22} {threads:>7} {origin:>9} {net_fps:>16} {wrap_fps:>16} "
              f"{'>= ' + format(TARGETS[kind], 'g'):>7}")


if __name__ == "__main__":
    main()
