"""The bad-input corpus: hostile and unusual inputs, each made at test time with the bundled
ffmpeg (nothing copied in), and what gopflow must do with it: transcode it correctly, or
refuse it with one line that says why."""

from __future__ import annotations

import random
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conftest import ffmpeg_exe


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Path], str]
    """Writes the input under the given directory; returns its path."""
    words: str | None = None
    """None: the transcode must succeed; else: its one error line contains these words."""


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
                   check=True, timeout=120)


_SRC = "testsrc2=size={size}:rate=25:duration={seconds}"
_X264 = ("-c:v", "libx264", "-preset", "ultrafast")


def clip(name: str, *options: str, size: str = "64x48", seconds: float = 0.4,
         source: str | None = None) -> Callable[[Path], str]:
    """A testsrc2 clip (``size``, 25 fps, ``seconds``) encoded with ``options``."""

    def make(root: Path) -> str:
        _ffmpeg("-f", "lavfi", "-i", source or _SRC.format(size=size, seconds=seconds),
                *options, str(root / name))
        return str(root / name)

    return make


def _written(name: str, data: Callable[[Path], bytes]) -> Callable[[Path], str]:
    def make(root: Path) -> str:
        (root / name).write_bytes(data(root))
        return str(root / name)

    return make


def _cut(name: str, base: Callable[[Path], str], fraction: float) -> Callable[[Path], str]:
    """The first ``fraction`` of what ``base`` writes (a truncated download)."""

    def data(root: Path) -> bytes:
        whole = Path(base(root)).read_bytes()
        return whole[: int(len(whole) * fraction)]

    return _written(name, data)


def _damaged(name: str, base: Callable[[Path], str], at: float, size: int,
             noise: bool) -> Callable[[Path], str]:
    """``base``'s file with ``size`` bytes at ``at`` (a fraction) zeroed or overwritten."""

    def data(root: Path) -> bytes:
        blob = bytearray(Path(base(root)).read_bytes())
        start = int(len(blob) * at)
        fill = random.Random(20261206).randbytes(size) if noise else bytes(size)
        blob[start:start + size] = fill
        return bytes(blob)

    return _written(name, data)


def _missing(root: Path) -> str:
    return str(root / "no_such_file.mp4")


def _directory(root: Path) -> str:
    (root / "a_directory.mp4").mkdir()
    return str(root / "a_directory.mp4")


def _zero_frames(root: Path) -> str:
    # A video track that never got a frame (ffmpeg exits non-zero but writes the file).
    path = root / "zero_frames.mkv"
    subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-loglevel", "quiet", "-y", "-f", "lavfi", "-i",
         "testsrc=size=64x48:rate=25:duration=1", "-f", "lavfi", "-i", "sine=duration=1",
         "-map", "0:v", "-map", "1:a", "-frames:v", "0", *_X264, "-c:a", "aac", str(path)],
        check=False, timeout=120,
    )
    return str(path)


def _rotated(root: Path) -> str:
    upright = clip("upright.mp4", *_X264)(root)
    _ffmpeg("-display_rotation", "90", "-i", upright, "-c", "copy", str(root / "rotated.mp4"))
    return str(root / "rotated.mp4")


def _size_change(root: Path) -> bytes:
    small = clip("small.264", *_X264, "-f", "h264", size="64x48")(root)
    large = clip("large.264", *_X264, "-f", "h264", size="96x64")(root)
    return Path(small).read_bytes() + Path(large).read_bytes()


_MOOV_LAST = clip("moov_last.mp4", *_X264, size="96x64", seconds=1)
_FASTSTART = clip("faststart.mp4", *_X264, "-movflags", "+faststart", size="96x64", seconds=1)
_MKV = clip("whole.mkv", *_X264, size="96x64", seconds=1)
_IMAGE = "testsrc2=size=64x48"

CASES: tuple[Case, ...] = (
    # -- not a video at all ----------------------------------------------------------------
    Case("empty file", _written("empty.mp4", lambda _: b""), "empty"),
    Case("random bytes", _written("random.mp4", lambda _: random.Random(7).randbytes(65536)),
         "not a readable video"),
    Case("text file", _written("notes.mkv", lambda _: b"not a video at all\n" * 50),
         "not a readable video"),
    Case("missing file", _missing, "not found"),
    Case("directory", _directory, "is a directory"),
    Case("audio only", clip("audio.m4a", "-c:a", "aac", source="sine=duration=0.5"),
         "no video stream"),
    Case("video track without frames", _zero_frames, "not a readable video"),
    # -- damaged files ---------------------------------------------------------------------
    Case("mp4, moov last, cut at 30%", _cut("moov_last_30.mp4", _MOOV_LAST, 0.3),
         "not a readable video"),
    Case("mp4, moov last, cut at 97%", _cut("moov_last_97.mp4", _MOOV_LAST, 0.97),
         "(it has: data; truncated or corrupt?)"),
    Case("faststart mp4 cut at 10%", _cut("faststart_10.mp4", _FASTSTART, 0.1), "truncated"),
    Case("faststart mp4 cut at 70%", _cut("faststart_70.mp4", _FASTSTART, 0.7), "truncated"),
    Case("mkv cut at 60%", _cut("cut_60.mkv", _MKV, 0.6)),
    Case("mp4, first 1 KiB zeroed", _damaged("zeroed.mp4", _FASTSTART, 0.0, 1024, False),
         "not a readable video"),
    Case("mp4, 2 KiB of noise mid-file", _damaged("noisy.mp4", _FASTSTART, 0.5, 2048, True),
         "decoding frames"),
    Case("raw H.264 changing size mid-stream", _written("size_change.264", _size_change),
         "changes frame size"),
    Case("y4m header claiming 60000x60000", _written(
        "huge.y4m",
        lambda _: b"YUV4MPEG2 W60000 H60000 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(4096)),
        "unknown format, corrupt or truncated"),
    # -- images ----------------------------------------------------------------------------
    Case("PNG image (rgb24)", clip("image.png", "-frames:v", "1", source=_IMAGE)),
    Case("JPEG image (yuvj420p)", clip("image.jpg", "-frames:v", "1", source=_IMAGE)),
    Case("GIF (pal8)", clip("anim.gif", seconds=0.2)),
    # -- sizes (testsrc2 draws 4:2:0 at even sizes only: smaller and odd ones are scaled) --
    Case("1x1 video", clip("one_by_one.mkv", "-vf", "scale=1:1", "-c:v", "ffv1")),
    Case("2x2 video", clip("two_by_two.mp4", "-vf", "scale=2:2", *_X264)),
    Case("33x17 video", clip("odd_33x17.mkv", "-vf", "scale=33:17", "-c:v", "ffv1")),
    # -- pixel formats -----------------------------------------------------------------------
    Case("4:2:2 H.264", clip("yuv422p.mp4", *_X264, "-pix_fmt", "yuv422p")),
    Case("4:4:4 H.264", clip("yuv444p.mp4", *_X264, "-pix_fmt", "yuv444p")),
    Case("10-bit 4:2:0 H.264", clip("yuv420p10.mkv", *_X264, "-pix_fmt", "yuv420p10le")),
    Case("12-bit 4:4:4 FFV1", clip("yuv444p12.mkv", "-c:v", "ffv1", "-pix_fmt", "yuv444p12le")),
    Case("RGB planar (gbrp FFV1)", clip("gbrp.mkv", "-c:v", "ffv1", "-pix_fmt", "gbrp")),
    Case("RGB H.264 (libx264rgb)", clip("rgb.mkv", "-c:v", "libx264rgb", "-preset",
                                        "ultrafast", "-pix_fmt", "rgb24")),
    Case("RGBA (QuickTime RLE argb)", clip("argb.mov", "-c:v", "qtrle", "-pix_fmt", "argb")),
    Case("grey (gray FFV1)", clip("gray.mkv", "-c:v", "ffv1", "-pix_fmt", "gray")),
    Case("full-range MJPEG (yuvj420p)", clip("mjpeg.avi", "-c:v", "mjpeg", "-pix_fmt",
                                             "yuvj420p")),
    # -- timing and layout -----------------------------------------------------------------
    Case("one frame", clip("one_frame.mp4", *_X264, "-frames:v", "1")),
    Case("rotated 90 (display matrix)", _rotated),
    Case("variable frame rate", clip(
        "vfr.mkv", "-vf", r"select='not(between(n\,3\,5)+eq(n\,11))'", "-fps_mode", "vfr",
        *_X264, seconds=0.8)),
    Case("interlaced H.264 (top field first)", clip(
        "interlaced.mp4", *_X264, "-flags", "+ilme+ildct", "-field_order", "tt")),
    Case("raw H.264 elementary stream", clip("raw.264", *_X264, "-f", "h264")),
    Case("video with audio", clip(
        "with_audio.mp4", "-f", "lavfi", "-i", "sine=duration=0.4", *_X264, "-c:a", "aac",
        "-shortest")),
)
