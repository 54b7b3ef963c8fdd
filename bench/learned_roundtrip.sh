#!/bin/bash
# Issue 5 check with the SHIPPED weights: an unseen clip (flower, never trained on) cropped to
# odd 353x287, 12 frames, coded by `gopflow transcode --codec dvc|fvc` and decoded by
# `gopflow decode` in a fresh process; the decoded frames' digest per GOP must equal the
# encoder's recon digest in the report. Then a truncated and a bit-flipped copy must fail.
# Each codec runs twice: with adaptive intra (the default, which may keep intra frames) and
# with --no-adaptive-intra (every GOP one intra frame then P frames), so the P path is used.
set -e
cd "$(dirname "$0")/.."
W=${1:-$(mktemp -d)}
mkdir -p "$W"
FF=$(.venv/bin/python -c "from gopflow.media.ffmpeg import find_ffmpeg; print(find_ffmpeg().path)")
$FF -nostdin -loglevel error -y -i ../shared/media/flower_960x540.mp4 -frames:v 12 -vf format=yuv444p,crop=353:287:100:60 -c:v libx264 -qp 0 -pix_fmt yuv444p $W/flower_353x287.mkv
for run in dvc fvc dvc-fixed fvc-fixed; do
  codec=$run
  options=""
  case $run in *-fixed) codec=${run%-fixed}; options=--no-adaptive-intra;; esac
  .venv/bin/gopflow transcode $W/flower_353x287.mkv -o $W/$run.gflv --codec $codec --quality 2 --gop-seconds 0.2 --min-gop-seconds 0.1 --report $W/$run.json --no-progress $options
  .venv/bin/gopflow decode $W/$run.gflv -o $W/$run.y4m
  .venv/bin/python - $W/$run.json $W/$run.y4m <<'PY'
import json, sys
from gopflow.media.y4m import read_y4m_rgb
from gopflow.pipeline.stages import frames_digest
report = json.load(open(sys.argv[1]))
with open(sys.argv[2], "rb") as handle:
    width, height, fps, frames = read_y4m_rgb(handle)
    decoded = list(frames)
for gop in report["gops"]:
    part = decoded[gop["start_frame"] : gop["start_frame"] + gop["frames"]]
    assert frames_digest(part) == gop["details"]["recon_sha256"], gop["index"]
print(f"{sys.argv[2]}: {width}x{height}, {len(decoded)} frames, {len(report['gops'])} GOPs, "
      f"{report['totals']['bytes']} bytes: every GOP decodes to the encoder's recon; PSNR-RGB per GOP "
      + ", ".join(str(round(g["details"]["psnr_rgb"], 2)) for g in report["gops"])
      + "; frame types " + " ".join(g["details"]["kinds"] for g in report["gops"]))
PY
  head -c $(( $(stat -c %s $W/$run.gflv) - 100 )) $W/$run.gflv > $W/trunc.gflv
  .venv/bin/gopflow decode $W/trunc.gflv -o $W/t.y4m 2>&1 | tail -1; echo "exit ${PIPESTATUS[0]}"
  .venv/bin/python -c "import sys;d=bytearray(open('$W/$run.gflv','rb').read());d[len(d)//2]^=4;open('$W/flip.gflv','wb').write(d)"
  .venv/bin/gopflow decode $W/flip.gflv -o $W/f.y4m 2>&1 | tail -1; echo "exit ${PIPESTATUS[0]}"
  ls $W/t.y4m $W/f.y4m 2>/dev/null || echo "no partial outputs"
done
