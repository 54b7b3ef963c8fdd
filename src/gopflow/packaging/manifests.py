"""HLS v7 playlists (with the ``m3u8`` library) and a static DASH MPD (with ``mpegdash``)
over the same CMAF segments.

Bandwidths come from the segment files: HLS ``BANDWIDTH`` is the peak segment bitrate of
the rung plus that of the audio rendition (the largest sum any playable combination
reaches), ``AVERAGE-BANDWIDTH`` the sum of the averages; a DASH ``@bandwidth`` is the
representation's own peak segment bitrate, which with ``minBufferTime`` set to the longest
segment is enough to play each segment as it arrives.
"""

from __future__ import annotations

import itertools
import math
import os
from typing import TYPE_CHECKING

import m3u8
from m3u8 import model
from mpegdash import nodes
from mpegdash.parser import MPEGDASHParser

from gopflow.fileio import atomic_write_bytes

if TYPE_CHECKING:
    from gopflow.packaging.model import PackagedLadder, Track

AUDIO_GROUP = "audio"


def _ceil_bps(kbps: float) -> int:
    return math.ceil(kbps * 1000 - 1e-6)


def _media_playlist(track: Track) -> str:
    playlist = m3u8.M3U8()
    playlist.version = 7
    playlist.is_independent_segments = True
    playlist.playlist_type = "vod"
    playlist.is_endlist = True
    durations = [s.duration / track.timescale for s in track.segments]
    playlist.target_duration = max(1, math.floor(max(durations) + 0.5))
    init = {"uri": os.path.basename(track.init_uri)}
    for segment, seconds in zip(track.segments, durations, strict=True):
        playlist.add_segment(model.Segment(
            uri=os.path.basename(segment.uri), duration=round(seconds, 6), init_section=init,
        ))
    return playlist.dumps()


def hls_master(ladder: PackagedLadder) -> str:
    """The multivariant playlist: every rung, with the audio group when there is audio."""
    master = m3u8.M3U8()
    master.version = 7
    master.is_independent_segments = True
    media: list[model.Media] = []
    audio = ladder.audio
    if audio is not None:
        rendition = model.Media(
            uri=audio.playlist_uri, type="AUDIO", group_id=AUDIO_GROUP, name="audio",
            language="und", default="YES", autoselect="YES", channels=str(audio.channels),
        )
        master.add_media(rendition)
        media.append(rendition)
    rate = ladder.fps
    for track in ladder.video:
        peak, average = track.peak_kbps, track.average_kbps
        codecs = track.codecs
        if audio is not None:
            peak, average = peak + audio.peak_kbps, average + audio.average_kbps
            codecs = f"{codecs},{audio.codecs}"
        info = {
            "bandwidth": _ceil_bps(peak), "average_bandwidth": _ceil_bps(average),
            "resolution": f"{track.width}x{track.height}", "codecs": codecs,
            "frame_rate": f"{rate.numerator / rate.denominator:.3f}",
        }
        if audio is not None:
            info["audio"] = AUDIO_GROUP
        master.add_playlist(model.Playlist(track.playlist_uri, info, media, None))
    return master.dumps()


def write_hls(ladder: PackagedLadder, folder: str) -> None:
    """``master.m3u8`` and each rendition's ``index.m3u8`` under ``folder``."""
    tracks = list(ladder.video) + ([ladder.audio] if ladder.audio else [])
    for track in tracks:
        text = _media_playlist(track)
        atomic_write_bytes(os.path.join(folder, track.playlist_uri), text.encode())
    atomic_write_bytes(os.path.join(folder, ladder.master), hls_master(ladder).encode())


def _duration(seconds: float) -> str:
    """An xs:duration in whole milliseconds, rounded up (never shorter than the media)."""
    return f"PT{math.ceil(seconds * 1000 - 1e-6) / 1000:.3f}S"


def _template(track: Track, presentation_offset: int) -> nodes.SegmentTemplate:
    template = nodes.SegmentTemplate()
    template.timescale = track.timescale
    template.initialization = track.init_uri
    template.media = f"{track.name}/seg_$Number%05d$.m4s"
    template.start_number = 1
    template.presentation_time_offset = presentation_offset
    timeline = nodes.SegmentTimeline()
    timeline.Ss = []
    position = None
    for duration, run in itertools.groupby(track.segments, key=lambda s: s.duration):
        run_list = list(run)
        entry = nodes.S()
        if position is None or run_list[0].start != position:
            entry.t = run_list[0].start
        entry.d = duration
        if len(run_list) > 1:
            entry.r = len(run_list) - 1
        timeline.Ss.append(entry)
        position = run_list[-1].start + duration
    template.segment_timelines = [timeline]
    return template


def dash_mpd(ladder: PackagedLadder) -> str:
    """A static MPD (isoff-live profile): one video adaptation set with every rung, one
    audio adaptation set; the presentation starts at the first video frame."""
    start = min(t.start / t.timescale for t in ladder.video)
    tracks = list(ladder.video) + ([ladder.audio] if ladder.audio else [])
    # Up to the end of the longest track (AAC's last frame overhangs the video by up to
    # ~21 ms), rounded up: with a shorter duration dash.js reaches "the end" before the
    # media element does, declares playback ended itself, seeks back 0.5 s and pauses.
    duration = max(t.duration_seconds + t.start / t.timescale for t in tracks) - start
    longest = max(s.duration / t.timescale for t in tracks for s in t.segments)
    mpd = nodes.MPEGDASH()
    mpd.xmlns = "urn:mpeg:dash:schema:mpd:2011"
    mpd.profiles = "urn:mpeg:dash:profile:isoff-live:2011"
    mpd.type = "static"
    mpd.media_presentation_duration = _duration(duration)
    mpd.min_buffer_time = _duration(longest)
    period = nodes.Period()
    period.id = "0"
    period.start = "PT0S"
    rate = ladder.fps
    video_set = nodes.AdaptationSet()
    video_set.id = 0
    video_set.content_type = "video"
    video_set.mime_type = "video/mp4"
    video_set.segment_alignment = "true"
    video_set.start_with_sap = 1
    video_set.frame_rate = f"{rate.numerator}/{rate.denominator}"
    video_set.max_width = max(t.width for t in ladder.video)
    video_set.max_height = max(t.height for t in ladder.video)
    video_set.representations = []
    for track in ladder.video:
        rep = nodes.Representation()
        rep.id = track.name
        rep.bandwidth = _ceil_bps(track.peak_kbps)
        rep.codecs = track.codecs
        rep.width = track.width
        rep.height = track.height
        rep.segment_templates = [_template(track, round(start * track.timescale))]
        video_set.representations.append(rep)
    period.adaptation_sets = [video_set]
    if ladder.audio is not None:
        audio = ladder.audio
        audio_set = nodes.AdaptationSet()
        audio_set.id = 1
        audio_set.content_type = "audio"
        audio_set.mime_type = "audio/mp4"
        audio_set.lang = "und"
        audio_set.segment_alignment = "true"
        audio_set.start_with_sap = 1
        rep = nodes.Representation()
        rep.id = audio.name
        rep.bandwidth = _ceil_bps(audio.peak_kbps)
        rep.codecs = audio.codecs
        rep.audio_sampling_rate = str(audio.sample_rate)
        channels = nodes.Descriptor()
        channels.scheme_id_uri = "urn:mpeg:dash:23003:3:audio_channel_configuration:2011"
        channels.value = str(audio.channels)
        rep.audio_channel_configurations = [channels]
        rep.segment_templates = [_template(audio, round(start * audio.timescale))]
        audio_set.representations = [rep]
        period.adaptation_sets.append(audio_set)
    mpd.periods = [period]
    return MPEGDASHParser.get_as_doc(mpd).toprettyxml(indent="  ", encoding="UTF-8").decode()


def write_dash(ladder: PackagedLadder, folder: str) -> None:
    """``manifest.mpd`` under ``folder``."""
    atomic_write_bytes(os.path.join(folder, ladder.mpd), dash_mpd(ladder).encode())
