"""Package a streaming ladder: per-GOP encodes of every rung -> CMAF segments, an AAC audio
rendition, HLS v7 playlists and a static DASH MPD, written atomically into one folder.

Data flow: the GOP plan (frames per GOP, shared by every rung) -> :func:`plan_segments`:
whole GOPs grouped into segments of about ``segment_seconds`` -> per rung: its GOP files
joined by stream copy into one fragmented MP4 (a fragment at every IDR;
:func:`gopflow.media.ffmpeg.cmaf_video_command`) -> cut into ``init.mp4`` and
``seg_NNNNN.m4s`` at the planned frames (:mod:`gopflow.packaging.cmaf`; a segment that
would not start on a fragment boundary means a GOP without its IDR, and is refused) ->
the source's audio as AAC in segments of about ``segment_seconds``, delayed to the video's
first presentation time -> bitrates from the segment files' bytes -> playlists and MPD
(:mod:`gopflow.packaging.manifests`) -> the folder renamed into place.

Layout of ``output_dir``: ``master.m3u8``, ``manifest.mpd``, ``<rung>/init.mp4``,
``<rung>/seg_00001.m4s``..., ``<rung>/index.m3u8``, the same under ``audio/``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

import av

from gopflow.errors import (
    CorruptInputError,
    GopflowError,
    InputError,
    OutputError,
    UsageError,
)
from gopflow.fileio import atomic_write_bytes
from gopflow.media.ffmpeg import cmaf_audio_command, cmaf_video_command, find_ffmpeg
from gopflow.packaging.cmaf import FragmentedTrack, fragment_bytes, read_track
from gopflow.packaging.manifests import write_dash, write_hls
from gopflow.packaging.model import PackagedLadder, Segment, Track

INIT_NAME = "init.mp4"
PLAYLIST_NAME = "index.m3u8"
MASTER_NAME = "master.m3u8"
MPD_NAME = "manifest.mpd"
AUDIO_NAME = "audio"
AAC_PRIMING = 1024
"""Samples ffmpeg's AAC encoder puts ahead of the first input sample."""
_RUNG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def segment_name(number: int) -> str:
    """The file name of media segment ``number`` (from 1)."""
    return f"seg_{number:05d}.m4s"


@dataclass(frozen=True)
class RungSource:
    """One rung to package: its folder name and its per-GOP encoded files, in GOP order
    (each a closed GOP starting with an IDR, as the transcode stages write them)."""

    name: str
    gop_files: tuple[str, ...]


@dataclass(frozen=True)
class AudioSource:
    """Where the audio rendition comes from: stream ``stream_index`` of ``path``, which
    starts ``offset_seconds`` after the source's first video frame (negative: before; from
    a probe: ``info.audio[i].start_seconds - info.start_seconds``)."""

    path: str
    stream_index: int
    offset_seconds: float = 0.0
    bitrate_kbps: int = 128
    channels: int = 2


def plan_segments(
    gop_frames: Sequence[int], fps: Fraction, segment_seconds: float
) -> tuple[int, ...]:
    """Whole GOPs grouped into segments (frames per segment), each as close to
    ``segment_seconds`` as whole GOPs allow: a segment closes when adding the next GOP would
    take it further from the target than stopping. The same for every rung."""
    if segment_seconds <= 0:
        raise UsageError(f"--segment-seconds must be positive, got {segment_seconds:g}")
    if not gop_frames or any(n < 1 for n in gop_frames):
        raise UsageError("the GOP plan needs at least one GOP, each with frames")
    target = segment_seconds * fps
    segments: list[int] = []
    current = 0
    for frames in gop_frames:
        if current and abs(current - target) <= abs(current + frames - target):
            segments.append(current)
            current = 0
        current += frames
    segments.append(current)
    return tuple(segments)


def _concat_list(paths: Sequence[str], list_path: str) -> None:
    with open(list_path, "w", encoding="utf-8") as handle:
        handle.write("ffconcat version 1.0\n")
        for path in paths:
            quoted = os.path.abspath(path).replace("'", "'\\''")
            handle.write(f"file '{quoted}'\n")


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise OutputError(f"{what} failed: {last}")


def _write_segments(
    track: FragmentedTrack, groups: Sequence[tuple[int, int]], folder: str, name: str,
) -> tuple[Segment, ...]:
    """Write fragments ``first..last`` of each group as one media segment file."""
    out: list[Segment] = []
    for number, (first, last) in enumerate(groups, start=1):
        data = fragment_bytes(track, first, last)
        atomic_write_bytes(os.path.join(folder, segment_name(number)), data)
        start = track.fragments[first].start
        end = (track.fragments[last + 1].start if last + 1 < len(track.fragments)
               else max(f.end for f in track.fragments[first:last + 1]))
        samples = sum(f.samples for f in track.fragments[first:last + 1])
        out.append(Segment(f"{name}/{segment_name(number)}", start, end - start, len(data),
                           samples))
    return tuple(out)


def _video_groups(
    track: FragmentedTrack, segment_frames: Sequence[int], rung: str
) -> list[tuple[int, int]]:
    """Fragments per planned segment; refused unless every segment starts a fragment."""
    total = sum(segment_frames)
    if track.samples != total:
        raise InputError(f"rung {rung}: its GOPs hold {track.samples} frames, the plan {total}")
    starts: dict[int, int] = {}
    position = 0
    for index, fragment in enumerate(track.fragments):
        starts[position] = index
        position += fragment.samples
    groups: list[tuple[int, int]] = []
    frame = 0
    for frames in segment_frames:
        if frame not in starts:
            raise InputError(
                f"rung {rung}: no IDR at frame {frame}, where a segment must start "
                "(every GOP must be closed and start with an IDR)"
            )
        nxt = frame + frames
        if nxt < total and nxt not in starts:
            raise InputError(
                f"rung {rung}: no IDR at frame {nxt}, where a segment must start "
                "(every GOP must be closed and start with an IDR)"
            )
        last = starts[nxt] - 1 if nxt < total else len(track.fragments) - 1
        groups.append((starts[frame], last))
        frame = nxt
    return groups


def _package_video(
    rung: RungSource, segment_frames: Sequence[int], folder: str, scratch: str, exe: str,
) -> Track:
    list_path = os.path.join(scratch, f"{rung.name}.ffconcat")
    joined = os.path.join(scratch, f"{rung.name}.mp4")
    _concat_list(rung.gop_files, list_path)
    _run(cmaf_video_command(list_path, joined, exe=exe), f"joining the GOPs of rung {rung.name}")
    track = read_track(joined)
    if track.kind != "video":
        raise CorruptInputError(f"rung {rung.name}: the joined GOPs hold no video")
    groups = _video_groups(track, segment_frames, rung.name)
    target = os.path.join(folder, rung.name)
    os.makedirs(target)
    atomic_write_bytes(os.path.join(target, INIT_NAME), track.init)
    segments = _write_segments(track, groups, target, rung.name)
    os.unlink(joined)  # one rung's joined copy on disk at a time
    return Track(rung.name, "video", track.codecs, track.timescale, f"{rung.name}/{INIT_NAME}",
                 f"{rung.name}/{PLAYLIST_NAME}", segments, width=track.width,
                 height=track.height)


def _package_audio(
    audio: AudioSource, start_seconds: float, duration_seconds: float,
    segment_seconds: float, folder: str, scratch: str, exe: str,
) -> Track:
    joined = os.path.join(scratch, "audio.mp4")
    # Keep the source's A/V sync: the audio starts where the video's first frame is
    # presented plus the audio's own offset, less the AAC encoder's priming (1024 samples
    # that players of fragmented MP4 present as they are); a lead before it is cut off.
    with av.open(audio.path) as container:
        rate = container.streams[audio.stream_index].codec_context.sample_rate
    if not rate:
        raise InputError(f"stream {audio.stream_index} of {audio.path} is not audio")
    delay = start_seconds + audio.offset_seconds - AAC_PRIMING / rate
    command = cmaf_audio_command(
        audio.path, audio.stream_index, joined, trim_seconds=max(0.0, -delay),
        delay_seconds=max(0.0, delay), duration_seconds=duration_seconds - max(0.0, delay)
        + start_seconds, bitrate_kbps=audio.bitrate_kbps, channels=audio.channels,
        fragment_seconds=segment_seconds, exe=exe,
    )
    _run(command, "encoding the audio rendition")
    track = read_track(joined)
    if track.kind != "audio" or not track.fragments:
        raise CorruptInputError(f"the audio rendition of {audio.path} holds no audio")
    target = os.path.join(folder, AUDIO_NAME)
    os.makedirs(target)
    atomic_write_bytes(os.path.join(target, INIT_NAME), track.init)
    groups = [(i, i) for i in range(len(track.fragments))]
    segments = _write_segments(track, groups, target, AUDIO_NAME)
    return Track(AUDIO_NAME, "audio", track.codecs, track.timescale,
                 f"{AUDIO_NAME}/{INIT_NAME}", f"{AUDIO_NAME}/{PLAYLIST_NAME}", segments,
                 sample_rate=track.sample_rate, channels=track.channels)


def _place(temp: str, output_dir: str, overwrite: bool) -> None:
    """Rename the finished folder into place (replacing an empty or, with ``overwrite``,
    an earlier folder)."""
    if os.path.lexists(output_dir):
        if not os.path.isdir(output_dir) or os.path.islink(output_dir):
            raise OutputError(f"{output_dir} exists and is not a folder")
        if os.listdir(output_dir):
            if not overwrite:
                raise OutputError(f"{output_dir} exists and is not empty (overwrite it?)")
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.", suffix=".old",
                                   dir=os.path.dirname(output_dir))
            os.rmdir(old)
            os.replace(output_dir, old)
            os.replace(temp, output_dir)
            shutil.rmtree(old, ignore_errors=True)
            return
    os.replace(temp, output_dir)


def package_ladder(
    rungs: Sequence[RungSource],
    output_dir: str,
    *,
    gop_frames: Sequence[int],
    fps: Fraction,
    audio: AudioSource | None = None,
    segment_seconds: float = 4.0,
    extra_files: Mapping[str, bytes] | None = None,
    describe: Callable[[PackagedLadder], Mapping[str, bytes]] | None = None,
    overwrite: bool = False,
) -> PackagedLadder:
    """Write the ladder of ``rungs`` (lowest first; each with one file per GOP of
    ``gop_frames``, all rungs on that same plan at ``fps``) into ``output_dir``: CMAF init
    and media segments of whole GOPs (about ``segment_seconds`` each), the ``audio``
    rendition, ``master.m3u8`` (HLS v7) and ``manifest.mpd`` (static DASH), plus
    ``extra_files`` (relative name -> bytes) and the files ``describe`` makes from what was
    packaged (e.g. ``ladder.json`` with the measured rates). Everything is written in a
    temporary folder beside ``output_dir`` and renamed into place at the end."""
    if not rungs:
        raise UsageError("a ladder needs at least one rung")
    names = [r.name for r in rungs]
    for name in names:
        if not _RUNG_NAME.match(name) or name == AUDIO_NAME:
            raise UsageError(f"bad rung name {name!r}: letters, digits, '_', '-', '.' only")
    if len(set(names)) != len(names):
        raise UsageError(f"rung names repeat: {', '.join(names)}")
    for rung in rungs:
        if len(rung.gop_files) != len(gop_frames):
            raise UsageError(
                f"rung {rung.name} has {len(rung.gop_files)} GOP files, the plan "
                f"{len(gop_frames)} GOPs"
            )
        for path in rung.gop_files:
            if not os.path.isfile(path):
                raise InputError(f"rung {rung.name}: GOP file {path} does not exist")
    if audio is not None and not os.path.isfile(audio.path):
        raise InputError(f"audio source {audio.path} does not exist")
    segment_frames = plan_segments(gop_frames, Fraction(fps), segment_seconds)
    output_dir = os.path.abspath(output_dir)
    parent = os.path.dirname(output_dir)
    try:
        os.makedirs(parent, exist_ok=True)
        temp = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.", suffix=".partial",
                                dir=parent)
    except OSError as exc:
        raise OutputError(f"cannot write {output_dir}: {exc.strerror or exc}") from exc
    exe = find_ffmpeg().path
    try:
        # Scratch beside the output, on its file system (not a small /tmp).
        with tempfile.TemporaryDirectory(prefix=f".{os.path.basename(output_dir)}.",
                                         suffix=".scratch", dir=parent) as scratch:
            video = tuple(
                _package_video(rung, segment_frames, temp, scratch, exe) for rung in rungs
            )
            start = min(t.start / t.timescale for t in video)
            duration = sum(segment_frames) / Fraction(fps)
            audio_track = None
            if audio is not None:
                audio_track = _package_audio(audio, start, float(duration), segment_seconds,
                                             temp, scratch, exe)
        ladder = PackagedLadder(output_dir, MASTER_NAME, MPD_NAME, Fraction(fps),
                                segment_frames, video, audio_track)
        write_hls(ladder, temp)
        write_dash(ladder, temp)
        files = dict(extra_files or {})
        if describe is not None:
            files.update(describe(ladder))
        for name, data in files.items():
            path = os.path.normpath(os.path.join(temp, name))
            if os.path.commonpath([path, temp]) != temp or path == temp:
                raise UsageError(f"extra file {name!r} would land outside the output folder")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write_bytes(path, data)
        os.chmod(temp, 0o755)
        _place(temp, output_dir, overwrite)
        return ladder
    except OSError as exc:
        if isinstance(exc, GopflowError):
            raise
        raise OutputError(f"cannot write {output_dir}: {exc.strerror or exc}") from exc
    finally:
        if os.path.isdir(temp):
            with contextlib.suppress(OSError):
                shutil.rmtree(temp)

