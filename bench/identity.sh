#!/bin/bash
# Byte-identity check: the same CLI commands must give the same bytes across code changes.
# Prints one "sha256  name" line per output: an x264 transcode, an x265 transcode (default CRF),
# a QRO transcode re-applied from a decisions file, and a dvc .gflv encode.
# Usage: bench/identity.sh [WORK_DIR]   (clips from ../shared/media)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-$(mktemp -d)}
mkdir -p "$W"
G=.venv/bin/gopflow
M=../shared/media
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
$G transcode $M/his_girl_friday_640x480.mp4 -o "$W/x264.mp4" --codec x264 --crf 24 --preset fast --no-progress
$G transcode $M/foreman_cif_352x288.264 -o "$W/x265.mkv" --codec x265 --preset fast --no-progress
$G transcode $M/asl_again_640x480.mkv -o "$W/qro1.mkv" --target-vmaf 90 --save-decisions "$W/decisions.json" --no-progress
$G transcode $M/asl_again_640x480.mkv -o "$W/qro.mkv" --target-vmaf 90 --decisions "$W/decisions.json" --no-progress
FF=$(.venv/bin/python -c "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())")
$FF -nostdin -loglevel error -y -i $M/flower_960x540.mp4 -frames:v 12 -vf format=yuv444p,crop=353:287:100:60 -c:v libx264 -qp 0 -pix_fmt yuv444p "$W/flower_353x287.mkv"
$G transcode "$W/flower_353x287.mkv" -o "$W/dvc.gflv" --codec dvc --quality 3 --gop-seconds 0.2 --min-gop-seconds 0.1 --no-progress 2>&1 | tail -1
cd "$W" && sha256sum x264.mp4 x265.mkv qro1.mkv qro.mkv dvc.gflv
