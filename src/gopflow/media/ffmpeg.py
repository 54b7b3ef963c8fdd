"""Find the ffmpeg binary, check once that it has what gopflow needs, and build every ffmpeg
command line gopflow runs.

Order: ``$GOPFLOW_FFMPEG``, then imageio-ffmpeg's static build (libx264, libx265, libvmaf),
then ``ffmpeg`` on ``PATH``. Capabilities are parsed from ``-encoders``/``-filters`` once per
binary and cached.

Command lines are assembled here and nowhere else, with ffmpeg-python (``import ffmpeg``):
callers ask for a command by intent (:func:`encode_raw_command`, :func:`cut_command`, ...)
with plain values and run it themselves (:func:`feed_process`, :mod:`subprocess`).
ffmpeg-python writes keyword options sorted by name, filters as a ``-filter_complex`` graph
and the global options after the output; ffmpeg's result depends on none of that (the
outputs were checked byte for byte against the hand-written commands this replaced).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import ffmpeg

from gopflow.errors import ToolMissingError

ENV_VAR = "GOPFLOW_FFMPEG"


@dataclass(frozen=True)
class FfmpegTool:
    """A located ffmpeg binary and what it can do."""

    path: str
    version: str
    encoders: frozenset[str]
    filters: frozenset[str]

    def require(self, encoders: Iterable[str] = (), filters: Iterable[str] = ()) -> None:
        """Raise :class:`ToolMissingError` naming every missing encoder and filter."""
        missing = [f"encoder {e}" for e in encoders if e not in self.encoders]
        missing += [f"filter {f}" for f in filters if f not in self.filters]
        if missing:
            raise ToolMissingError(
                f"ffmpeg at {self.path} lacks {', '.join(missing)}; "
                f"point {ENV_VAR} at a build that has them (imageio-ffmpeg's does)"
            )


def _candidate_path() -> str:
    env = os.environ.get(ENV_VAR)
    if env:
        if not (os.path.isfile(env) and os.access(env, os.X_OK)):
            raise ToolMissingError(f"{ENV_VAR}={env} is not an executable file")
        return env
    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError):
        pass
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    raise ToolMissingError(
        f"no ffmpeg found: set {ENV_VAR}, install imageio-ffmpeg, or put ffmpeg on PATH"
    )


def _names(listing: str) -> frozenset[str]:
    """Second column of ``ffmpeg -encoders``/``-filters`` rows after the ``---`` divider."""
    names: set[str] = set()
    body = listing.split("------", 1)[-1]
    for line in body.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            names.add(parts[1])
    return frozenset(names)


@functools.lru_cache(maxsize=4)
def _inspect(path: str) -> FfmpegTool:
    def run(flag: str) -> str:
        try:
            done = subprocess.run(
                [path, "-hide_banner", flag], capture_output=True, text=True, timeout=60
            )
        except OSError as exc:
            raise ToolMissingError(f"cannot run ffmpeg at {path}: {exc}") from exc
        return done.stdout

    version_line = run("-version").splitlines()
    version = version_line[0] if version_line else "unknown"
    return FfmpegTool(path, version, _names(run("-encoders")), _names(run("-filters")))


def find_ffmpeg() -> FfmpegTool:
    """The ffmpeg gopflow uses, with its encoders and filters."""
    return _inspect(_candidate_path())


def feed_process(
    command: list[str], chunks: Iterable[bytes], log_path: str, cwd: str | None = None
) -> tuple[int, str]:
    """Run ``command`` with ``chunks`` written to its stdin; return (exit code, last log line).

    stderr goes to ``log_path`` (a file, so a chatty process never blocks on a full pipe).
    A process that exits early just stops the feeding (its exit code tells why); any other
    error kills it before re-raising.
    """
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=log, cwd=cwd)
        assert process.stdin is not None
        try:
            for chunk in chunks:
                process.stdin.write(chunk)
            process.stdin.close()
        except BrokenPipeError:
            pass
        except BaseException:
            process.kill()
            process.wait()
            raise
        code = process.wait()
    with open(log_path, "rb") as log:
        lines = log.read().decode("utf-8", "replace").strip().splitlines()
    return code, (lines[-1] if lines else f"exit code {code}")


# Log lines of an ffmpeg that refused its options or could not open its encoder: it exits
# before encoding a frame, and would again (a retry cannot help).
_REFUSED = (
    "Unable to parse", "Error setting option", "Error applying encoder options",
    "Error while opening encoder", "Could not open encoder",
    "Error opening output files: Invalid argument",
)
# The encoder's own words, where it gives them (x265: "x265 [error]: ... must be ...").
_REFUSAL_CAUSES = ("Unable to parse", "[error]", "Error setting option")
# Failures of the machine, not of the arguments: worth a retry elsewhere or later.
_TRANSIENT = ("No space left on device", "Cannot allocate memory", "Input/output error")
_LOG_PREFIX = re.compile(r"^(?:\[[^\]]*@ 0x[0-9a-f]+\] )+")


def refusal(log_text: str) -> str | None:
    """Why ffmpeg refused to start encoding (deterministic: bad options or a format the
    encoder does not take), as one log line without its ``[component @ 0x...]`` prefixes;
    ``None`` when ``log_text`` shows no such refusal (a crash, a full disk)."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    if any(word in line for line in lines for word in _TRANSIENT):
        return None
    refused = [line for line in lines if any(word in line for word in _REFUSED)]
    if not refused:
        return None
    causes = [line for line in lines if any(word in line for word in _REFUSAL_CAUSES)]
    return _LOG_PREFIX.sub("", (causes or refused)[0])


# -- command lines -----------------------------------------------------------------------

QUIET = ("-nostdin", "-hide_banner", "-loglevel", "error")
"""Global options of every command: no console interaction, errors only."""

Options = Mapping[str, Any]
"""ffmpeg options by name without the dash (``{"c:v": "libx264"}``); ``None``: a bare flag."""

RESTORE_WRITERS: Mapping[str, Options] = {
    ".y4m": {"c:v": "rawvideo", "format": "yuv4mpegpipe"},
    ".mkv": {"c:v": "ffv1", "level": 3, "format": "matroska"},
    ".mp4": {"c:v": "libx264", "preset": "ultrafast", "qp": 0, "format": "mp4"},
}
"""``gopflow restore`` output extension -> encoder and muxer (Y4M raw, FFV1, x264 lossless)."""

RGB_WRITERS: Mapping[str, str] = {".mp4": "mp4", ".mkv": "matroska"}
"""``gopflow decode`` output extension -> muxer of the lossless RGB (libx264rgb) stream."""

_WHITESPACE = " \n\t\r"
_OPTION_KEY = re.compile(r"[ \n\t\r]*([A-Za-z0-9_\-/.]+)[ \n\t\r]*=")
# ffmpeg-python escapes a filter's positional values twice: these must not occur in them.
_UNSAFE_POSITIONAL = frozenset("\\'=:")


def _finish(stream: Any, exe: str | None, overwrite: bool = True, *extra: str) -> list[str]:
    """The argument list of an ffmpeg-python output: quiet, ``-y`` unless told otherwise."""
    stream = stream.global_args(*QUIET, *extra)
    if overwrite:
        stream = stream.overwrite_output()
    return list(stream.compile(cmd=exe or find_ffmpeg().path))


def _rate(fps: Fraction) -> str:
    return f"{fps.numerator}/{fps.denominator}"


def _token(text: str, pos: int, term: str) -> tuple[str, int]:
    """ffmpeg's ``av_get_token``: read from ``pos`` up to an unquoted, unescaped character
    of ``term``; quotes and escaping backslashes are removed, as are outer blanks."""
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    out: list[str] = []
    kept = 0  # characters that escaping or quoting protects from the blank strip
    while pos < len(text) and text[pos] not in term:
        char = text[pos]
        pos += 1
        if char == "\\" and pos < len(text):
            out.append(text[pos])
            pos += 1
            kept = len(out)
        elif char == "'":
            while pos < len(text) and text[pos] != "'":
                out.append(text[pos])
                pos += 1
            if pos < len(text):
                pos += 1
                kept = len(out)
        else:
            out.append(char)
    while len(out) > kept and out[-1] in _WHITESPACE:
        out.pop()
    return "".join(out), pos


def split_chain(chain: str) -> list[str]:
    """A filter chain (``a=1,b``) split into its filters at unquoted, unescaped commas."""
    filters, start, pos, quoted = [], 0, 0, False
    while pos < len(chain):
        char = chain[pos]
        if char == "\\" and not quoted:
            pos += 1
        elif char == "'":
            quoted = not quoted
        elif char == "," and not quoted:
            filters.append(chain[start:pos])
            start = pos + 1
        pos += 1
    filters.append(chain[start:])
    return [f for f in filters if f.strip()]


def parse_filter(spec: str) -> tuple[str, list[str], dict[str, str]]:
    """One filter as ffmpeg reads it (``scale=640:360:flags=lanczos``, quoting and escaping
    included): its name, positional values and named values, unescaped (ffmpeg-python
    escapes them again)."""
    name, pos = _token(spec, 0, "=,;[")
    options = ""
    if pos < len(spec) and spec[pos] == "=":
        options, pos = _token(spec, pos + 1, "[],;")
    if not name or pos != len(spec):
        raise ValueError(f"not one filter: {spec!r}")
    positional: list[str] = []
    named: dict[str, str] = {}
    pos = 0
    while pos < len(options):
        key = _OPTION_KEY.match(options, pos)
        if key:
            named[key.group(1)], pos = _token(options, key.end(), ":")
        elif named:
            raise ValueError(f"a positional value after named ones in {spec!r}")
        else:
            value, pos = _token(options, pos, ":")
            if _UNSAFE_POSITIONAL & set(value):
                raise ValueError(f"name the option holding {value!r} in {spec!r}")
            positional.append(value)
        pos += 1  # the ':' separator
    return name, positional, named


def _filtered(stream: Any, filters: Iterable[str]) -> Any:
    for spec in filters:
        name, positional, named = parse_filter(spec)
        stream = stream.filter(name, *positional, **named)
    return stream


def _filter_threads(encoder: Options) -> tuple[str, ...]:
    # -vf ran on the encoder's -threads; a -filter_complex graph needs the count given.
    threads = encoder.get("threads")
    return () if threads is None else ("-filter_complex_threads", str(threads))


def colour_options(
    color_range: str, color_space: str, color_primaries: str, color_trc: str
) -> dict[str, str]:
    """ffmpeg's colour options of a YUV stream, for the properties that are known (not
    ``unknown``). An RGB matrix (``gbr``) is left out: it is no YUV matrix, and libx264
    refuses it ("Error opening output files"); RGB sources are converted and tagged with a
    YUV one first (:func:`gopflow.media.reader.yuv_colour`)."""
    pairs = (
        ("color_range", color_range),
        ("colorspace", "unknown" if color_space in ("gbr", "rgb") else color_space),
        ("color_primaries", color_primaries),
        ("color_trc", color_trc),
    )
    return {option: value for option, value in pairs if value and value != "unknown"}


def ffv1_options(threads: int = 1) -> Options:
    """FFV1 (lossless, intra-only) for :func:`encode_raw_command`: version 3, the range
    coder with its tuned state table and the large context model (about 10% smaller than
    the defaults on natural video), fixed slices and threads (byte-identical output
    wherever it runs), CRCs per slice; every frame a key frame (``-g 1``: the coder state
    is reset on each, 11-12% more bytes than one reset per GOP on bench/dataset.py's
    clips), so a read seeks straight to the first frame it wants inside a GOP payload and
    decodes only the frames asked. FFV1 has no colour fields: the MP4 ``colr`` box carries
    the range (a full-range source read back as limited range would be off by ~8 per RGB
    sample)."""
    return {"c:v": "ffv1", "level": "3", "coder": "range_tab", "context": "1",
            "slices": "4", "slicecrc": "1", "g": "1", "threads": str(threads),
            "movflags": "+write_colr"}


def encode_raw_command(
    output: str,
    *,
    width: int,
    height: int,
    fps: Fraction,
    pix_fmt: str,
    out_pix_fmt: str,
    encoder: Options,
    colour: Options | None = None,
    input_path: str = "pipe:0",
    filters: Sequence[str] = (),
    pad_to: tuple[int, int] | None = None,
    keyframe_at: int | None = None,
    exe: str | None = None,
) -> list[str]:
    """Raw ``pix_fmt`` frames (``input_path``: stdin or a raw file) -> ``filters`` -> [padded
    to ``pad_to``, edge pixels replicated] -> [``out_pix_fmt``] -> ``encoder`` (codec and
    rate options) -> an MP4 segment at ``output``.

    Timestamps pass through untouched (dropped frames leave gaps the decoder fills);
    ``colour`` tags input and output alike; metadata is dropped and the muxer bit-exact.
    """
    colour = dict(colour or {})
    source = ffmpeg.input(
        input_path, f="rawvideo", pix_fmt=pix_fmt, s=f"{width}x{height}",
        framerate=_rate(fps), **colour,
    )
    video = _filtered(source, filters)
    if pad_to is not None and pad_to != (width, height):
        pad_width, pad_height = pad_to
        video = video.filter("pad", pad_width, pad_height, 0, 0).filter(
            "fillborders", right=pad_width - width, bottom=pad_height - height, mode="smear"
        )
    if pix_fmt != out_pix_fmt:
        video = video.filter("format", out_pix_fmt)
    options: dict[str, Any] = {"an": None, "sn": None, "dn": None, "fps_mode": "passthrough"}
    if keyframe_at is not None:
        # An IDR where the GOP ends: frames after it (look-ahead context) never become
        # references for the GOP's own frames, so the stream can be cut there.
        options["force_key_frames"] = f"expr:eq(n,{keyframe_at})"
    options.update(encoder)
    options.update(pix_fmt=out_pix_fmt, **colour)
    options.update({"map_metadata": -1, "fflags": "+bitexact", "flags:v": "+bitexact"})
    threads = _filter_threads(encoder) if video is not source else ()
    return _finish(ffmpeg.output(video, output, format="mp4", **options), exe, True, *threads)


def cut_command(source: str, frames: int, output: str, exe: str | None = None) -> list[str]:
    """The first ``frames`` frames (decode order) of ``source``'s video, stream-copied to a
    bit-exact MP4 without metadata."""
    video = ffmpeg.input(source)["v:0"]
    options = {"c": "copy", "frames:v": frames, "map_metadata": -1, "fflags": "+bitexact",
               "flags:v": "+bitexact"}
    return _finish(ffmpeg.output(video, output, format="mp4", **options), exe)


def concat_command(
    list_path: str,
    output: str,
    muxer: str,
    *,
    video_offset: float = 0.0,
    audio_source: str | None = None,
    audio: Sequence[tuple[int, bool]] = (),
    rotation: int = 0,
    tags: Mapping[str, str] | None = None,
    exe: str | None = None,
) -> list[str]:
    """The segments of an ffconcat list joined by stream copy (video delayed by
    ``video_offset`` seconds) plus ``audio``: (stream index in ``audio_source``, copy as it
    is) pairs, the others encoded to AAC at 192 kbit/s; ``tags`` become container metadata
    (MP4/MOV: as metadata tags), ``rotation`` the video's display rotation."""
    concat: dict[str, Any] = {"f": "concat", "safe": 0}
    if video_offset > 0:
        concat["itsoffset"] = f"{video_offset:.6f}"
    streams = [ffmpeg.input(list_path, **concat)["v:0"]]
    options: dict[str, Any] = {"c:v": "copy"}
    if audio:
        source = ffmpeg.input(audio_source)
        for position, (index, copy) in enumerate(audio):
            streams.append(source[str(index)])
            options[f"c:a:{position}"] = "copy" if copy else "aac"
            if not copy:
                options[f"b:a:{position}"] = "192k"
    if rotation:
        options["metadata:s:v:0"] = f"rotate={rotation}"
    options.update(map_metadata=-1, fflags="+bitexact", flags="+bitexact")
    if muxer in ("mp4", "mov"):
        options["movflags"] = "+faststart+use_metadata_tags" if tags else "+faststart"
    command = _finish(ffmpeg.output(*streams, output, format=muxer, **options), exe)
    # ffmpeg-python takes an option once: the -metadata pairs go in by hand, sorted by key.
    at = len(command) - 1 - command[::-1].index(output)
    pairs = sorted((tags or {}).items())
    command[at:at] = [arg for key, value in pairs for arg in ("-metadata", f"{key}={value}")]
    return command


def scene_detect_command(
    path: str, stream_index: int, threshold: float, listing: str, width: int = 320,
    exe: str | None = None,
) -> list[str]:
    """Decode stream ``stream_index`` of ``path``, scale it to at most ``width`` pixels wide,
    run ``scdet`` at ``threshold`` and print every frame's number and scores to ``listing``
    (a cut's frame has a ``lavfi.scd.time`` line); ``pipe:1`` streams them on stdout."""
    # Cut detection needs no deblocked, bit-exact pictures: skip the loop filter.
    source = ffmpeg.input(path, skip_loop_filter="all", flags2="+fast")
    video = (
        source[str(stream_index)]
        .filter("scale", w=f"min({width},iw)", h=-2, flags="fast_bilinear")
        .filter("scdet", threshold=f"{threshold:g}")
        .filter("metadata", mode="print", file=listing)
    )
    return _finish(ffmpeg.output(video, "-", format="null", an=None, sn=None), exe, False)


# Frame n of each input gets timestamp n/25 s: libvmaf pairs frames in order.
_BY_ORDER = "settb=1/25,setpts=N"


def vmaf_command(
    distorted: str,
    reference: str,
    *,
    distorted_stream: int,
    reference_stream: int,
    size: tuple[int, int],
    resize: str,
    pix_fmt: str,
    models: Mapping[str, str],
    threads: int,
    log_name: str,
    subsample: int = 1,
    exe: str | None = None,
) -> list[str]:
    """libvmaf of ``distorted`` against ``reference`` (each one video stream) with every one
    of ``models`` (name -> libvmaf model version) at once; the JSON log goes to ``log_name``
    in the working directory. Frames are paired in order; the distorted ones are cropped
    (``resize="crop"``) or bicubic-scaled (``"scale"``) to the reference ``size``; both
    sides go to limited range and ``pix_fmt``. ``subsample`` N scores frames 0, N, 2N...
    only (libvmaf's ``n_subsample``; every frame is still decoded)."""
    width, height = size
    # VMAF's models expect limited range: full-range inputs (yuvj*, or tagged pc) are
    # converted on both sides alike; limited-range inputs pass unchanged.
    dist_chain = f"{_BY_ORDER},scale=out_range=tv"
    if resize == "crop":
        dist_chain += f",crop={width}:{height}:0:0"
    elif resize == "scale":
        dist_chain += f",scale={width}:{height}:flags=bicubic"
    # In a libvmaf option, models are separated by '|' and their own ':' escaped.
    model = "|".join(rf"version={version}\:name={name}" for name, version in models.items())
    graph = (
        f"[0:{distorted_stream}]{dist_chain},format={pix_fmt}[dist];"
        f"[1:{reference_stream}]{_BY_ORDER},scale=out_range=tv,format={pix_fmt}[ref];"
        f"[dist][ref]libvmaf=model='{model}':log_fmt=json:log_path={log_name}"
        f":n_threads={threads}:shortest=1" + (f":n_subsample={subsample}" if subsample > 1 else "")
    )
    # By hand: ffmpeg-python merges equal inputs (a file compared with itself would lose
    # its second -i) and a two-input graph with named pads is clearer written out.
    return [
        exe or find_ffmpeg().path, *QUIET,
        "-threads", str(threads), "-i", distorted,
        "-threads", str(threads), "-i", reference,
        "-filter_complex", graph, "-an", "-sn", "-dn", "-f", "null", "-",
    ]


def _raw_pair(
    source_raw: str, width: int, height: int, fps: Fraction, pix_fmt: str, threads: int,
    full_range: bool,
) -> tuple[Any, Any]:
    """Frames on stdin and the same layout from ``source_raw``: the video of each."""
    options: dict[str, Any] = {"threads": threads, "f": "rawvideo", "pix_fmt": pix_fmt,
                               "s": f"{width}x{height}", "framerate": _rate(fps)}
    if full_range:
        options["color_range"] = "pc"
    return ffmpeg.input("pipe:0", **options)["v"], ffmpeg.input(source_raw, **options)["v"]


def raw_vmaf_command(
    source_raw: str,
    *,
    width: int,
    height: int,
    fps: Fraction,
    pix_fmt: str,
    model_name: str,
    model_version: str,
    log_name: str,
    threads: int = 1,
    full_range: bool = False,
    exe: str | None = None,
) -> list[str]:
    """libvmaf (one model) of raw frames on stdin against ``source_raw`` (the same layout);
    the JSON log goes to ``log_name`` in the working directory."""
    distorted, reference = _raw_pair(source_raw, width, height, fps, pix_fmt, threads,
                                     full_range)
    if full_range:
        # VMAF's models expect limited ("tv") range: both sides are converted alike, as
        # `gopflow compare` does.
        distorted = distorted.filter("setparams", range="pc").filter("scale", out_range="tv")
        reference = reference.filter("setparams", range="pc").filter("scale", out_range="tv")
    sink = ffmpeg.filter(
        [distorted, reference], "libvmaf", model=f"version={model_version}:name={model_name}",
        log_fmt="json", log_path=log_name, n_threads=threads,
    )
    return _finish(ffmpeg.output(sink, "-", format="null"), exe, False)


def raw_psnr_command(
    source_raw: str,
    *,
    width: int,
    height: int,
    fps: Fraction,
    pix_fmt: str,
    stats_name: str,
    threads: int = 1,
    full_range: bool = False,
    exe: str | None = None,
) -> list[str]:
    """ffmpeg's psnr of raw frames on stdin against ``source_raw`` (the same layout), per
    frame to ``stats_name`` in the working directory (``full_range`` only tags the inputs)."""
    distorted, reference = _raw_pair(source_raw, width, height, fps, pix_fmt, threads,
                                     full_range)
    sink = ffmpeg.filter([distorted, reference], "psnr", stats_file=stats_name)
    return _finish(ffmpeg.output(sink, "-", format="null"), exe, False)


def restore_writer_command(
    output: str,
    extension: str,
    *,
    width: int,
    height: int,
    fps: Fraction,
    pix_fmt: str,
    input_range: str | None = None,
    colour: Options | None = None,
    audio_source: str | None = None,
    exe: str | None = None,
) -> list[str]:
    """Raw frames on stdin written by the :data:`RESTORE_WRITERS` entry of ``extension``,
    tagged with ``colour``, plus ``audio_source``'s audio streams copied."""
    raw: dict[str, Any] = {"f": "rawvideo", "pix_fmt": pix_fmt, "s": f"{width}x{height}",
                           "framerate": _rate(fps)}
    if input_range:
        raw["color_range"] = input_range
    frames = ffmpeg.input("pipe:0", **raw)
    streams = [frames]
    options = dict(RESTORE_WRITERS[extension])
    if audio_source:
        streams = [frames["v"], ffmpeg.input(audio_source)["a"]]
        options["c:a"] = "copy"
    options.update(colour or {})
    options["fflags"] = "+bitexact"
    return _finish(ffmpeg.output(*streams, output, **options), exe)


def rgb_writer_command(
    output: str, extension: str, *, width: int, height: int, fps: Fraction,
    exe: str | None = None,
) -> list[str]:
    """Packed RGB24 frames on stdin -> lossless RGB H.264 (libx264rgb ``-qp 0``, one
    thread) in the :data:`RGB_WRITERS` container of ``extension``."""
    frames = ffmpeg.input("pipe:0", f="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}",
                          framerate=_rate(fps))
    options = {"c:v": "libx264rgb", "qp": 0, "preset": "veryfast", "threads": 1,
               "fflags": "+bitexact"}
    return _finish(ffmpeg.output(frames, output, format=RGB_WRITERS[extension], **options), exe)


def demo_clip_command(
    path: str, seconds: float = 10.0, size: str = "1280x720", fps: int = 30,
    exe: str | None = None,
) -> list[str]:
    """A synthetic clip: ``seconds`` of moving pattern with a scene change halfway (testsrc2,
    then mandelbrot) and a 440 Hz tone; x264 veryfast CRF 16 and AAC 128 kbit/s."""
    half = seconds / 2
    graph = (
        f"testsrc2=size={size}:rate={fps}:duration={half}[a];"
        f"mandelbrot=size={size}:rate={fps},trim=duration={half}[b];"
        "[a][b]concat=n=2:v=1:a=0,format=yuv420p[v]"
    )
    tone = ffmpeg.input(f"sine=frequency=440:sample_rate=48000:duration={seconds}", f="lavfi")
    options = {"c:v": "libx264", "preset": "veryfast", "crf": 16, "c:a": "aac", "b:a": "128k",
               "fflags": "+bitexact"}
    command = _finish(ffmpeg.output(tone["a"], path, **options), exe)
    # ffmpeg-python has no filter without an input stream: the source graph goes in by
    # hand, its video mapped first (output stream 0 is the video, as before).
    at = command.index("-map")
    command[at:at] = ["-filter_complex", graph, "-map", "[v]"]
    return command


def x264_proxy_command(
    output: str,
    *,
    width: int,
    height: int,
    fps: float,
    crf: float,
    preset: str,
    threads: int,
    filters: str | None = None,
    exe: str | None = None,
) -> list[str]:
    """Packed yuv420p frames on stdin (at ``fps``, 6 decimals) -> [the filter chain
    ``filters``] -> libx264 at ``crf``/``preset`` with ``threads`` threads -> ``output``
    (container from its extension): the training's stand-in for a real encode."""
    frames = ffmpeg.input("-", f="rawvideo", pix_fmt="yuv420p", s=f"{width}x{height}",
                          r=f"{fps:.6f}")
    video = _filtered(frames, split_chain(filters or ""))
    encoder = {"c:v": "libx264", "preset": preset, "crf": f"{crf:g}", "threads": threads}
    extra = _filter_threads(encoder) if video is not frames else ()
    return _finish(ffmpeg.output(video, output, **encoder), exe, True, *extra)


# -- streaming ladders -------------------------------------------------------------------

CMAF_MOVFLAGS = "+empty_moov+default_base_moof+skip_trailer+cmaf"
"""Fragmented MP4 as CMAF wants it: an init segment without samples (``empty_moov``),
fragments addressed from their own ``moof`` (``default_base_moof``), no ``mfra`` index
(``skip_trailer``), ``cmaf`` brands and ``trun`` version 1."""


def cmaf_video_command(list_path: str, output: str, exe: str | None = None) -> list[str]:
    """The video of every file in the ffconcat list ``list_path`` joined by stream copy into
    one fragmented MP4 with a fragment starting at every keyframe (so at every GOP's IDR),
    bit-exact and without metadata: the packager cuts it into CMAF segments."""
    video = ffmpeg.input(list_path, f="concat", safe=0)["v:0"]
    options = {
        "c": "copy", "movflags": "+frag_keyframe" + CMAF_MOVFLAGS, "map_metadata": -1,
        "fflags": "+bitexact", "flags:v": "+bitexact",
    }
    return _finish(ffmpeg.output(video, output, format="mp4", **options), exe)


def cmaf_audio_command(
    source: str,
    stream_index: int,
    output: str,
    *,
    trim_seconds: float,
    delay_seconds: float,
    duration_seconds: float,
    bitrate_kbps: int,
    channels: int,
    fragment_seconds: float,
    exe: str | None = None,
) -> list[str]:
    """Stream ``stream_index`` of ``source`` -> its first ``trim_seconds`` dropped, at most
    ``duration_seconds`` kept -> ``delay_seconds`` of silence ahead -> AAC-LC at
    ``bitrate_kbps`` with ``channels`` channels -> a fragmented MP4, one fragment per
    ``fragment_seconds`` (each becomes one audio segment)."""
    audio = (
        ffmpeg.input(source)[str(stream_index)]
        .filter("atrim", start=f"{max(0.0, trim_seconds):.6f}",
                duration=f"{duration_seconds:.6f}")
        .filter("asetpts", "PTS-STARTPTS")
    )
    if delay_seconds > 0:
        # Silence before the first sample: the mp4 muxer puts a fragmented track's first
        # sample at time 0 whatever -output_ts_offset says.
        audio = audio.filter("adelay", delays=f"{delay_seconds * 1000:.3f}", all=1)
    options: dict[str, Any] = {
        "c:a": "aac", "b:a": f"{bitrate_kbps}k", "ac": channels, "vn": None, "sn": None,
        "dn": None, "movflags": CMAF_MOVFLAGS, "frag_duration": round(fragment_seconds * 1e6),
        "map_metadata": -1, "fflags": "+bitexact", "flags:a": "+bitexact",
    }
    return _finish(ffmpeg.output(audio, output, format="mp4", **options), exe)


def scaled_encode_command(
    source: str,
    output: str,
    *,
    width: int,
    height: int,
    scaler: str,
    encoder: Options,
    exe: str | None = None,
) -> list[str]:
    """The video of ``source`` scaled to ``width`` x ``height`` with ``scaler`` (``lanczos``,
    ``bicubic``...; no scaling at the source's own size) -> ``encoder`` (codec and rate
    options) -> a bit-exact MP4 without audio or metadata at ``output``: one probe encode
    of a streaming ladder's convex hull."""
    video = ffmpeg.input(source)["v:0"]
    if width and height:
        video = video.filter("scale", width, height, flags=scaler)
    options: dict[str, Any] = {"an": None, "sn": None, "dn": None, "map_metadata": -1,
                               "fflags": "+bitexact", "flags:v": "+bitexact"}
    options.update(encoder)
    threads = _filter_threads(encoder)
    return _finish(ffmpeg.output(video, output, format="mp4", **options), exe, True, *threads)
