"""Per-frame bytes and PSNR of one learned-codec GOP: where a P chain loses quality or rate.

Codes the first ``--frames`` frames of a clip (source size, RGB24 from PyAV) as one GOP with
the shipped weights (or ``--registry``) at ``--level`` and prints, per frame, its type, the
bits per pixel of its real entropy-coded payload and its PSNR-RGB against the source, and
where the bits go: each latent's ``y`` and side-information ``z`` strings (intra: the image
latent; DVC: motion, residual, where a frame's motion is a 12-byte global motion model
only the residual; FVC: offsets, residual).

    .venv/bin/python bench/codec_frames.py fvc ../shared/media/white_flower_1280x720.264 --level 4
"""

from __future__ import annotations

import argparse
import math

import av
import numpy as np
import torch

from gopflow.codecs.dvc.global_motion import read_global_motion
from gopflow.codecs.learned.bitstream import UnitKind, unpack_strings
from gopflow.codecs.learned.engine import load_codec
from gopflow.pipeline.stages import rgb_frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("codec", choices=("dvc", "fvc", "intra"))
    parser.add_argument("clip")
    parser.add_argument("--level", type=int, default=2, help="quality level 1..levels (2)")
    parser.add_argument("--frames", type=int, default=8, help="GOP length (8)")
    parser.add_argument("--adaptive-intra", action="store_true",
                        help="let the encoder choose intra or inter per P frame")
    parser.add_argument("--rdo", action="store_true",
                        help="let the encoder choose each P frame's levels and residual dead zone")
    parser.add_argument("--intra-offset", type=int, default=0,
                        help="code intra frames this many levels above --level (0)")
    parser.add_argument("--registry", help="weights registry (default: shipped weights)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with av.open(args.clip) as container:
        stream = container.streams.video[0]
        frames = []
        for frame in container.decode(stream):
            frames.append(frame)
            if len(frames) == args.frames:
                break
    sources = rgb_frames(frames)
    codec = load_codec(args.codec, args.registry, adaptive_intra=args.adaptive_intra,
                       rdo=args.rdo)
    gop = codec.encode_gop(sources, args.level, args.intra_offset)
    height, width = sources[0].shape[:2]
    padded = (-(-height // codec.multiple) * codec.multiple,
              -(-width // codec.multiple) * codec.multiple)
    print(f"{args.codec} level {args.level}, {width}x{height}, {len(sources)} frames")
    total, mse_sum = 0, 0.0
    for index, (source, recon, coded) in enumerate(
            zip(sources, gop.recon, gop.frames, strict=True)):
        mse = float(np.mean((source.astype(np.float64) - recon) ** 2))
        total, mse_sum = total + len(coded.payload), mse_sum + mse
        psnr = 10 * math.log10(255.0**2 / mse) if mse else float("inf")
        bpp = 8 * len(coded.payload) / (width * height)
        strings, levels = coded.payload, ""
        if coded.kind in (UnitKind.LEVELED_INTER, UnitKind.SKIP):  # P: the stream's level
            unit = codec.inter_levels(coded, args.level - 1)
            strings = unit.payload
            if unit.lead_global:
                used = read_global_motion(unit.payload, unit.lead_grid, *padded)[1]
                strings = unit.payload[used:]
            residual = "-" if unit.residual is None else unit.residual + 1
            lead = ("grid" if unit.lead_grid else "global" if unit.lead_global
                    else f"{unit.lead + 1}")
            levels = (f", levels {lead}{'p' if unit.lead_predicted else ''}/{residual}")
        groups, _ = unpack_strings(strings)
        parts = " + ".join(
            "/".join(f"{8 * len(string) / (width * height):.4f}" for string in group)
            for group in groups)
        print(f"frame {index} {chr(coded.kind)}: {len(coded.payload)} bytes, {bpp:.3f} bpp, "
              f"{psnr:.2f} dB PSNR-RGB "
              f"(latents y/z bpp: {parts}{levels})")
    mean_mse = mse_sum / len(sources)
    gop_psnr = 10 * math.log10(255.0**2 / mean_mse) if mean_mse else float("inf")
    print(f"GOP: {total} payload bytes, {gop_psnr:.3f} dB "
          f"PSNR-RGB of the mean MSE")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
