"""Packaging a ladder for real: per-GOP x264 encodes of two rungs (and single-rung x265 and
SVT-AV1 ladders) -> CMAF + HLS + DASH, checked with the m3u8 and mpegdash parsers, the
bundled ffmpeg reading the playlists over HTTP on 127.0.0.1, and PyAV on the segments."""

from __future__ import annotations

import functools
import hashlib
import http.server
import math
import os
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import m3u8
import numpy as np
import pytest
from mpegdash.parser import MPEGDASHParser

from conftest import ffmpeg_exe
from gopflow.errors import CorruptInputError, InputError, OutputError
from gopflow.packaging.cmaf import fragment_bytes, read_track
from gopflow.packaging.package import (
    AudioSource,
    PackagedLadder,
    RungSource,
    package_ladder,
    plan_segments,
)
from integration.ladder_media import RungSpec, encode_rungs, make_source

pytestmark = pytest.mark.slow

FPS = 30
GOP_FRAMES = (60, 45, 75, 60, 60)
FRAMES = sum(GOP_FRAMES)
RUNGS = (RungSpec("180p", 320, 180, kbps=250), RungSpec("360p", 640, 360, kbps=900))


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[RungSource]]:
    root = tmp_path_factory.mktemp("packaging")
    source = make_source(root / "source.mp4", seconds=FRAMES / FPS)
    return root, source, encode_rungs(source, GOP_FRAMES, RUNGS, root / "gops")


@pytest.fixture(scope="module")
def ladder(made) -> PackagedLadder:
    root, source, rungs = made
    return package_ladder(rungs, str(root / "ladder"), gop_frames=GOP_FRAMES,
                          fps=Fraction(FPS), audio=AudioSource(source, 1), segment_seconds=2.0)


@pytest.fixture(scope="module")
def served(ladder) -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=ladder.output_dir)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _inside(folder: str, uri: str, base: str = "") -> Path:
    assert "://" not in uri and not uri.startswith("/"), f"not a relative URI: {uri}"
    path = Path(os.path.normpath(os.path.join(folder, base, uri)))
    assert os.path.commonpath([path, folder]) == folder, f"{uri} leaves the output folder"
    assert path.is_file(), f"{uri} missing"
    return path


def _media(folder: str, uri: str) -> tuple[list[float], list[int]]:
    """A media playlist's EXTINF durations and its segment files' sizes."""
    playlist = m3u8.load(os.path.join(folder, uri))
    base = os.path.dirname(uri)
    assert playlist.version == 7 and playlist.is_endlist and playlist.is_independent_segments
    assert playlist.playlist_type == "vod"
    _inside(folder, playlist.segments[0].init_section.uri, base)
    durations = [s.duration for s in playlist.segments]
    assert playlist.target_duration >= max(round(d) for d in durations)
    sizes = [_inside(folder, s.uri, base).stat().st_size for s in playlist.segments]
    return durations, sizes


def _expected_avc(path: str) -> str:
    """avc1.PPCCLL from the stream's SPS as PyAV's decoder reads it."""
    with av.open(path) as container:
        ctx = container.streams.video[0].codec_context
        assert ctx.profile == "High"
        return f"avc1.6400{ctx.level:02x}"


def test_hls_master_and_media_playlists(ladder, made):
    folder = ladder.output_dir
    master = m3u8.load(os.path.join(folder, "master.m3u8"))
    assert master.version == 7 and master.is_independent_segments
    assert [m.type for m in master.media] == ["AUDIO"]
    audio_durations, audio_sizes = _media(folder, master.media[0].uri)
    audio_peak = max(s * 8 / d for s, d in zip(audio_sizes, audio_durations, strict=True))
    audio_average = sum(audio_sizes) * 8 / sum(audio_durations)
    assert sum(audio_durations) == pytest.approx(FRAMES / FPS + ladder.video[0].start
                                                 / ladder.video[0].timescale, abs=0.05)
    assert len(master.playlists) == len(RUNGS)
    _, _, rungs = made
    for playlist, spec, rung in zip(master.playlists, RUNGS, rungs, strict=True):
        info = playlist.stream_info
        durations, sizes = _media(folder, playlist.uri)
        assert sum(durations) == pytest.approx(FRAMES / FPS, abs=1e-6)
        assert durations == [f / FPS for f in plan_segments(GOP_FRAMES, Fraction(FPS), 2.0)]
        peak = max(s * 8 / d for s, d in zip(sizes, durations, strict=True))
        average = sum(sizes) * 8 / sum(durations)
        # within 2 bit/s: EXTINF durations are rounded to microseconds
        assert info.bandwidth == pytest.approx(math.ceil(peak + audio_peak), abs=2)
        assert info.average_bandwidth == pytest.approx(math.ceil(average + audio_average), abs=2)
        assert info.bandwidth > info.average_bandwidth
        # capped VBR: the measured average is near the rung's target
        assert average / 1000 == pytest.approx(spec.kbps, rel=0.35)
        assert info.resolution == (spec.width, spec.height)
        assert info.frame_rate == FPS
        assert info.codecs == f"{_expected_avc(rung.gop_files[0])},mp4a.40.2"
        assert info.audio == "audio"


def test_dash_mpd_matches_the_segments(ladder):
    folder = ladder.output_dir
    text = Path(folder, "manifest.mpd").read_text()
    mpd = MPEGDASHParser.parse(text)
    assert mpd.type == "static" and mpd.profiles == "urn:mpeg:dash:profile:isoff-live:2011"
    # The presentation lasts to the end of the longest track, from the first video frame.
    start = ladder.video[0].start / ladder.video[0].timescale
    ends = [t.start / t.timescale + t.duration_seconds for t in (*ladder.video, ladder.audio)]
    declared = float(mpd.media_presentation_duration.removeprefix("PT").removesuffix("S"))
    assert max(ends) - start <= declared < max(ends) - start + 0.001  # never short
    assert max(ends) - start >= FRAMES / FPS
    video_set, audio_set = mpd.periods[0].adaptation_sets
    assert video_set.mime_type == "video/mp4" and audio_set.mime_type == "audio/mp4"
    for rep, track in zip(video_set.representations + audio_set.representations,
                          (*ladder.video, ladder.audio), strict=True):
        template = rep.segment_templates[0]
        _inside(folder, template.initialization)
        starts = []
        for entry in template.segment_timelines[0].Ss:
            time = entry.t if entry.t is not None else starts[-1][0] + starts[-1][1]
            for _ in range((entry.r or 0) + 1):
                starts.append((time, entry.d))
                time += entry.d
        files = [_inside(folder, template.media.replace("$Number%05d$", f"{n:05d}"))
                 for n in range(1, len(starts) + 1)]
        assert not Path(folder, template.media.replace("$Number%05d$",
                                                       f"{len(starts) + 1:05d}")).exists()
        peak = max(f.stat().st_size * 8 * template.timescale / d
                   for f, (_, d) in zip(files, starts, strict=True))
        assert rep.bandwidth == math.ceil(peak)
        assert rep.codecs == track.codecs
        if track.kind == "video":
            assert sum(d for _, d in starts) == FRAMES * template.timescale // FPS
            assert template.presentation_time_offset == starts[0][0]


def test_every_rendition_decodes_with_the_source_frames_and_aligned_idrs(ladder, served):
    # The bundled ffmpeg reads the master playlist over HTTP: every variant and the audio.
    command = [ffmpeg_exe(), "-nostdin", "-v", "error", "-i", f"{served}/master.m3u8",
               "-map", "0:v", "-map", "0:a", "-f", "framecrc", "-"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    counts = Counter(line.split(",")[0] for line in done.stdout.splitlines()
                     if line and not line.startswith("#"))
    # output streams: the variants' video first (-map 0:v), then the audio
    assert [counts[str(i)] for i in range(len(RUNGS))] == [FRAMES] * len(RUNGS), counts
    assert counts[str(len(RUNGS))] >= FRAMES / FPS * 48000 / 1024, counts
    segments = plan_segments(GOP_FRAMES, Fraction(FPS), 2.0)
    for track in ladder.video:
        init = Path(ladder.output_dir, track.init_uri).read_bytes()
        for number, (segment, frames) in enumerate(zip(track.segments, segments,
                                                       strict=True)):
            joined = Path(ladder.output_dir, f"check_{track.name}_{number}.mp4")
            joined.write_bytes(init + Path(ladder.output_dir, segment.uri).read_bytes())
            try:
                with av.open(str(joined)) as container:
                    packets = [p for p in container.demux(video=0) if p.size]
            finally:
                joined.unlink()
            assert len(packets) == frames == segment.samples
            assert packets[0].is_keyframe, f"{segment.uri} does not start with an IDR"


def _tree(folder: str) -> dict[str, str]:
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            out[os.path.relpath(path, folder)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return out


def test_packaging_is_deterministic_atomic_and_checks_idrs(ladder, made):
    root, source, rungs = made
    seen: list[tuple[bool, int]] = []

    def describe(packaged):
        # Called before the rename: the folder is not there yet; its file lands with it.
        seen.append((Path(packaged.output_dir).exists(), len(packaged.video)))
        return {"ladder.json": b"{}\n"}

    again = package_ladder(rungs, str(root / "again"), gop_frames=GOP_FRAMES, fps=Fraction(FPS),
                           audio=AudioSource(source, 1), segment_seconds=2.0,
                           extra_files={"notes.txt": b"x"}, describe=describe)
    assert seen == [(False, len(rungs))]
    first, second = _tree(ladder.output_dir), _tree(again.output_dir)
    assert second.pop("ladder.json") and second.pop("notes.txt")
    assert first == second
    # GOP files out of order: no IDR where the plan puts a segment start; nothing written.
    shuffled = RungSource("bad", (rungs[0].gop_files[1], rungs[0].gop_files[0],
                                  *rungs[0].gop_files[2:]))
    with pytest.raises(InputError, match="no IDR at frame 60"):
        package_ladder([shuffled], str(root / "bad"), gop_frames=GOP_FRAMES, fps=Fraction(FPS),
                       segment_seconds=2.0)
    assert not (root / "bad").exists()
    assert not [p for p in os.listdir(root) if p.endswith((".partial", ".scratch"))]
    # An existing ladder is replaced only when asked.
    with pytest.raises(OutputError, match="not empty"):
        package_ladder(rungs[:1], str(root / "again"), gop_frames=GOP_FRAMES,
                       fps=Fraction(FPS), segment_seconds=2.0)
    assert _tree(again.output_dir).keys() == {*first, "ladder.json", "notes.txt"}
    package_ladder(rungs[:1], str(root / "again"), gop_frames=GOP_FRAMES, fps=Fraction(FPS),
                   segment_seconds=4.0, overwrite=True)
    assert not Path(root, "again", "360p").exists() and not Path(root, "again", "audio").exists()
    assert not [p for p in os.listdir(root) if p.endswith((".partial", ".old", ".scratch"))]


@pytest.mark.parametrize("codec, prefix", [("x265", "hvc1.1.6.L"), ("svtav1", "av01.0.")])
def test_hevc_and_av1_ladders(made, codec, prefix, tmp_path):
    _, source, _ = made
    gops = (30, 30, 30)
    rungs = encode_rungs(source, gops, [RungSpec("180p", 320, 180, crf=35)], tmp_path / "gops",
                         codec=codec, preset="veryfast" if codec == "x265" else "10")
    ladder = package_ladder(rungs, str(tmp_path / "ladder"), gop_frames=gops,
                            fps=Fraction(FPS), segment_seconds=1.0)
    assert ladder.video[0].codecs.startswith(prefix), ladder.video[0].codecs
    playlist = os.path.join(ladder.output_dir, ladder.video[0].playlist_uri)
    command = [ffmpeg_exe(), "-nostdin", "-v", "error", "-allowed_extensions", "ALL", "-i",
               playlist, "-map", "0:v", "-f", "framecrc", "-"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    frames = [line for line in done.stdout.splitlines() if line and not line.startswith("#")]
    assert len(frames) == sum(gops)
    assert [s.samples for s in ladder.video[0].segments] == [30, 30, 30]


def test_read_track_takes_apart_a_cmaf_file_and_refuses_a_cut_one(ladder, tmp_path):
    track = ladder.video[0]
    folder = Path(ladder.output_dir)
    parts = [Path(folder, track.init_uri).read_bytes()]
    parts += [Path(folder, s.uri).read_bytes() for s in track.segments]
    whole = tmp_path / "whole.mp4"
    whole.write_bytes(b"".join(parts))
    read = read_track(str(whole))
    assert read.init == parts[0] and read.kind == "video" and read.codecs == track.codecs
    assert read.samples == FRAMES and read.timescale == track.timescale
    assert fragment_bytes(read, 0, len(read.fragments) - 1) == b"".join(parts[1:])
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(b"".join(parts)[:-1000])
    with pytest.raises(CorruptInputError):
        read_track(str(cut))


def test_audio_keeps_the_sources_av_sync(ladder, tmp_path):
    """The tone starts with the picture in the source; it must in the ladder too (the
    rendition is delayed to the first frame's presentation time, less AAC's priming)."""
    audio = ladder.audio
    folder = Path(ladder.output_dir)
    joined = tmp_path / "audio.mp4"
    joined.write_bytes(Path(folder, audio.init_uri).read_bytes()
                       + b"".join(Path(folder, s.uri).read_bytes() for s in audio.segments))
    with av.open(str(joined)) as container:
        stream = container.streams.audio[0]
        frames = list(container.decode(stream))
        first = float(frames[0].pts * stream.time_base)
        samples = np.concatenate([f.to_ndarray()[0] for f in frames])
        onset = first + int(np.argmax(np.abs(samples) > 0.02)) / stream.sample_rate
    video_start = ladder.video[0].start / ladder.video[0].timescale
    assert video_start > 0  # x264's B-frame delay: the first frame is presented late
    assert onset == pytest.approx(video_start, abs=0.002)
