"""How much motion DVC's motion path carries: one frame pair of a clip, warped four ways.

Takes frames ``--frame - 1`` (reference) and ``--frame`` (current) of a clip, RGB24 from PyAV,
cropped to ``--crop TOP,LEFT,HEIGHT,WIDTH`` (multiples of 64 in size), and prints the MSE of
the current frame against the reference unwarped and warped with: OpenCV's DIS flow, the
shipped DVC's estimated (uncoded) flow, and its decoded flow at levels 1, middle and top,
with the bits per pixel of the real motion strings (``y``/``z``) and the mean |flow|.

    .venv/bin/python bench/motion_check.py ../shared/media/red_trees_drive_1920x1080.264
"""

from __future__ import annotations

import argparse
import itertools

import av
import numpy as np
import torch

from gopflow.codecs.dvc.model import backward_warp, dis_flow
from gopflow.codecs.learned.engine import load_codec
from gopflow.pipeline.stages import rgb_frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clip")
    parser.add_argument("--frame", type=int, default=2, help="current frame index (2)")
    parser.add_argument("--crop", default="256,512,256,384", help="TOP,LEFT,HEIGHT,WIDTH")
    parser.add_argument("--registry", help="weights registry (default: shipped weights)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    top, left, height, width = (int(part) for part in args.crop.split(","))
    with av.open(args.clip) as container:
        frames = list(itertools.islice(container.decode(video=0), args.frame + 1))
    pair = torch.from_numpy(np.stack(rgb_frames(frames[-2:]))).permute(0, 3, 1, 2) / 255.0
    crop = pair[:, :, top:top + height, left:left + width]
    reference, current = crop[:1], crop[1:]
    model = load_codec("dvc", args.registry).inter

    def report(label: str, flow: torch.Tensor) -> str:
        mse = float(((backward_warp(reference, flow) - current) ** 2).mean())
        return f"{label}: warp MSE {mse:.5f}, mean |flow| {float(flow.abs().mean()):.3f} px"

    pixels = height * width
    with torch.no_grad():
        print(f"no warp: MSE {float(((reference - current) ** 2).mean()):.5f}")
        print(report("DIS", dis_flow(current, reference)))
        estimate = model.estimate_flow(current, reference)
        print(report("DVC estimate (uncoded)", estimate))
        for level in sorted({0, model.levels // 2, model.levels - 1}):
            code, m_hat = model.motion_prior.compress(model.m_a(estimate), level)
            bits = "/".join(f"{8 * len(s) / pixels:.4f}" for s in (code.y_string, code.z_string))
            print(report(f"DVC decoded, level {level + 1} (motion y/z {bits} bpp)",
                         model.m_s(m_hat)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
