"""The dataset job: compress many videos into a GOP-indexed archive on the one driver.

``gopflow dataset compress clips/ -o clips.gfd/`` finds the videos as ``gopflow batch``
does, runs every video's GOPs through one cluster (:func:`run_gop_jobs`), and as each video
finishes appends its GOP payloads to the run's shard and keeps its index rows; at the end
the run's index part is written, then the card (atomically) that makes it part of the
archive. A video already in the archive (same path, size and SHA-256) is skipped, so a
second run appends only new videos; a run with other coding settings is refused, so an
archive never mixes them. A crash leaves the card as it was: the next run with
``--resume`` reuses every finished GOP from the work dirs.

Each GOP's worker also measures its quality as it codes it (:class:`DatasetGopStage`): the
PSNR of the luma of the decoded payload against the frames it was given, kept in the index's
``quality`` column (``inf``: lossless). A learned codec (``--codec dvc|fvc|intra``,
:class:`LearnedDatasetJob`) codes each GOP as ``gopflow transcode`` does; its payload is the
GOP's .gflv units, its quality the PSNR of the luma of the codec's reconstruction (which a
read returns exactly) against the RGB frames it coded (:class:`DatasetLearnedStage`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import hashlib
import io
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from gopflow.codecs.x26x import FfmpegEncoder, GopTask, output_size, scaled_size
from gopflow.dataset.archive import (
    FORMAT,
    VERSION,
    GopRow,
    ShardWriter,
    read_card,
    write_card,
    write_part,
)
from gopflow.errors import CorruptInputError, FrameCountError, InputError, UsageError
from gopflow.jobs.batch import find_inputs, settings_hash
from gopflow.jobs.config import LEARNED_CODECS, LEARNED_EXTENSION, TranscodeConfig, TranscodeOptions
from gopflow.jobs.transcode import EncoderJob, LearnedJob
from gopflow.media.reader import ReaderCache, feed_format, frame_bytes
from gopflow.pipeline.driver import Finished, GopRequest, JobResult, make_record, run_gop_jobs
from gopflow.pipeline.stages import LearnedCodecRef, LearnedEncodeStage, LearnedGopTask
from gopflow.pipeline.workdir import WorkDir, claimed, file_sha256
from gopflow.types import EncodedGop, GopRecord, GopSpec, VideoInfo

Luma = tuple[np.ndarray, int]
"""A Y plane (uint8 or uint16 samples) and its bit depth."""


def _luma(frame: Any) -> Luma:
    """The Y plane of a planar YUV PyAV frame."""
    plane = frame.planes[0]
    bits = frame.format.components[0].bits
    deep = bits > 8
    rows = np.frombuffer(plane, np.uint16 if deep else np.uint8).reshape(
        plane.height, plane.line_size // (2 if deep else 1))[:, : plane.width]
    return rows.copy(), bits


def _fed_luma(frame: Any, pix_fmt: str) -> Luma:
    """The Y plane the encoder is given for ``frame``: the bytes :func:`frame_bytes` feeds
    it in ``pix_fmt`` (``pix_fmt`` is :func:`feed_format`'s choice for the source)."""
    import av

    if feed_format(frame.format.name, "") == pix_fmt:
        # A planar frame of that layout: fed as it is (feed_format gives "" for others).
        return _luma(frame)
    bits = av.VideoFormat(pix_fmt).components[0].bits
    size = frame.width * frame.height
    rows = np.frombuffer(frame_bytes(frame, pix_fmt), np.uint16 if bits > 8 else np.uint8,
                         count=size).reshape(frame.height, frame.width)
    return rows.copy(), bits


def psnr_y(sources: Sequence[Luma], decoded: Sequence[Luma]) -> float:
    """PSNR of the luma planes over a GOP (peak: the bit depth's), the squared error pooled
    over its frames and summed in integers (the same value on every machine); ``inf`` when
    they are equal. Planes of other bit depths are compared on a 0..1 scale."""
    if len(sources) != len(decoded):
        raise FrameCountError(f"a GOP payload decodes to {len(decoded)} frames, not "
                              f"{len(sources)}")
    total = 0.0
    for (source, bits), (out, out_bits) in zip(sources, decoded, strict=True):
        height, width = source.shape
        out = out[:height, :width]
        if bits == out_bits:
            diff = source.astype(np.int32) - out
            error = int((diff * diff).sum(dtype=np.int64)) / ((1 << bits) - 1) ** 2
        else:
            scaled = (source / ((1 << bits) - 1)) - (out / ((1 << out_bits) - 1))
            error = float((scaled * scaled).sum())
        total += error / (height * width)
    mse = total / max(1, len(sources))
    return round(10.0 * math.log10(1.0 / mse), 4) if mse > 0 else math.inf


def _quality_details(psnr: float) -> dict[str, Any]:
    # The work dir's JSON has no infinity: an exact GOP is recorded as such.
    return {"psnr_y": None, "exact": True} if math.isinf(psnr) else {"psnr_y": psnr}


def _quality(record: GopRecord) -> float | None:
    """The index's ``quality`` of a GOP: its PSNR-Y (``inf``: exact), None if unmeasured."""
    details = record.details or {}
    return math.inf if details.get("exact") else details.get("psnr_y")


class DatasetGopStage:
    """A dataset's per-GOP stage: a GOP coded as a transcode codes it (frame-exact decode,
    then the encoder), and its PSNR-Y measured on the worker: the decoded payload against
    the frames the encoder was given (the source's, converted to ``pix_fmt``; scaled with
    Lanczos first under ``--height``)."""

    def __init__(self) -> None:
        self._readers = ReaderCache()

    def __call__(self, task: GopTask) -> EncodedGop:
        import av

        started = time.perf_counter()
        settings, gop, source = task.settings, task.gop, task.source
        tail = settings.lookahead_tail
        reader = self._readers.reader(task.input_path, task.stream_index, task.read_mode,
                                      settings.threads)
        scaled = scaled_size(source.width, source.height, settings.height)
        fed = feed_format(source.pix_fmt, settings.pix_fmt)
        lumas: list[Luma] = []
        count = 0

        def frames() -> Iterator[Any]:
            nonlocal count
            for frame in reader.read(gop, tail=tail):
                count += 1
                if count <= gop.frame_count:
                    if scaled is not None:
                        lumas.append(_luma(frame.reformat(
                            width=scaled[0], height=scaled[1], format=settings.pix_fmt,
                            interpolation="LANCZOS")))
                    else:
                        lumas.append(_fed_luma(frame, fed))
                yield frame

        data = FfmpegEncoder(settings).encode_gop(frames(), source,
                                                  keep=gop.frame_count if tail else None)
        if not gop.frame_count <= count <= gop.frame_count + tail:
            raise FrameCountError(f"encoded {count} frames, planned {gop.frame_count}")
        try:
            with av.open(io.BytesIO(data), mode="r") as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                decoded = [_luma(f) for f in container.decode(stream)]
        except av.FFmpegError as exc:
            raise CorruptInputError(f"the coded GOP does not decode: {exc}") from exc
        return EncodedGop(index=gop.index, data=data, frames=gop.frame_count,
                          encode_seconds=time.perf_counter() - started,
                          details=_quality_details(psnr_y(lumas, decoded)))

    def close(self) -> None:
        self._readers.close()


class DatasetJob(EncoderJob):
    """One video of a dataset: its GOPs coded as a transcode would; nothing to join (the
    run appends every video's GOPs to its shard, in input order, once all are coded)."""

    def __init__(self, config: TranscodeConfig, video_id: str) -> None:
        super().__init__(config)
        self.video_id = video_id
        self.label = "dataset"

    def stage_factory(self) -> Callable[[], Callable[[Any], EncodedGop]]:
        return DatasetGopStage

    def record(self, gop: GopSpec, encoded: EncodedGop, node: str) -> GopRecord:
        return make_record(gop, encoded, node, details=encoded.details)

    def finish(
        self, info: VideoInfo, gops: list[GopSpec], records: list[GopRecord], workdir: WorkDir
    ) -> Finished:
        coded_w, coded_h = output_size(info.width, info.height, self.config.settings)
        return Finished(sum(g.frame_count for g in gops), sum(r.bytes for r in records),
                        coded_w, coded_h)

    def rows(self, result: JobResult, shards: ShardWriter) -> list[GopRow]:
        """Append this video's GOP payloads to ``shards``; its index rows."""
        return archive_rows(self.video_id, self.config.settings.codec, result, shards)


def archive_rows(video_id: str, codec: str, result: JobResult,
                 shards: ShardWriter) -> list[GopRow]:
    """Append one finished video's GOP payloads (its work dir's segments) to ``shards``; its
    index rows."""
    info = result.info
    coded_w, coded_h = result.finished.width, result.finished.height
    source_sha = file_sha256(info.path)
    rows = []
    for gop, record in zip(result.gops, result.records, strict=True):
        with open(result.workdir.segment_path(gop.index), "rb") as handle:
            data = handle.read()
        ((shard, offset, length),) = shards.append([data])
        rows.append(GopRow(
            video_id=video_id, source_path=info.path, source_sha256=source_sha,
            source_bytes=os.path.getsize(info.path), gop_index=gop.index,
            first_frame=gop.start_frame, frame_count=gop.frame_count, shard=shard,
            offset=offset, length=length, sha256=hashlib.sha256(data).hexdigest(),
            codec=codec, width=min(info.width, coded_w),
            height=min(info.height, coded_h), coded_width=coded_w, coded_height=coded_h,
            fps_num=info.fps.numerator, fps_den=info.fps.denominator,
            quality=_quality(record),
        ))
    return rows


LUMA_WEIGHTS = (54, 183, 19)
"""BT.709's luma weights (0.2126, 0.7152, 0.0722) in 256ths, summing to 256: the luma of a
learned codec's RGB frames for its PSNR-Y, in integers (the same value on every machine)."""


def rgb_psnr_y(sources: Sequence[np.ndarray], recon: Sequence[np.ndarray]) -> float:
    """PSNR (peak 255) of the luma of RGB frames (:data:`LUMA_WEIGHTS`), the squared error
    pooled over the GOP's frames and summed in integers; ``inf`` when they are equal."""
    if len(sources) != len(recon):
        raise FrameCountError(f"{len(recon)} reconstructed frames for {len(sources)} coded")
    weights = np.array(LUMA_WEIGHTS, np.int64)
    total = 0.0
    for source, out in zip(sources, recon, strict=True):
        diff = (source.astype(np.int64) - out.astype(np.int64)) @ weights  # luma x 256
        error = int((diff * diff).sum(dtype=np.int64))
        total += error / (256 * 256 * 255 * 255) / (source.shape[0] * source.shape[1])
    mse = total / max(1, len(sources))
    return round(10.0 * math.log10(1.0 / mse), 4) if mse > 0 else math.inf


class _KeptGop:
    """A learned codec that keeps the frames and reconstruction of the last GOP it coded."""

    def __init__(self, codec: Any) -> None:
        self.codec = codec
        self.last: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] = ((), ())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.codec, name)

    def encode_gop(self, frames: Sequence[np.ndarray], quality: int,
                   intra_offset: int = 0) -> Any:
        coded = self.codec.encode_gop(frames, quality, intra_offset)
        self.last = (frames, coded.recon)
        return coded


class DatasetLearnedStage(LearnedEncodeStage):
    """A dataset's per-GOP stage for a learned codec: the transcode's stage (payload: the
    GOP's .gflv units; ``psnr_rgb`` and ``recon_sha256`` in its details), and the PSNR-Y of
    the reconstruction against the RGB frames coded (:func:`rgb_psnr_y`), the index's
    ``quality``."""

    def __init__(self, ref: LearnedCodecRef) -> None:
        super().__init__(ref)
        self._kept = _KeptGop(self.codec)
        self.codec = self._kept  # type: ignore[assignment]

    def __call__(self, task: LearnedGopTask) -> EncodedGop:
        encoded = super().__call__(task)
        psnr = rgb_psnr_y(*self._kept.last)
        self._kept.last = ((), ())
        return dataclasses.replace(encoded, details={**(encoded.details or {}),
                                                     **_quality_details(psnr)})


class LearnedDatasetJob(LearnedJob):
    """One video of a dataset coded by a learned codec, GOP by GOP as a transcode codes it;
    no .gflv stream is written (the run appends the GOPs' units to its shard)."""

    def __init__(self, config: TranscodeConfig, video_id: str) -> None:
        super().__init__(config)
        self.video_id = video_id
        self.label = f"dataset {self.learned.codec}"

    def stage_factory(self) -> Callable[[], Callable[[Any], EncodedGop]]:
        return functools.partial(DatasetLearnedStage, self._ref)

    def finish(
        self, info: VideoInfo, gops: list[GopSpec], records: list[GopRecord], workdir: WorkDir
    ) -> Finished:
        frames = sum(len(str((r.details or {}).get("kinds", ""))) for r in records)
        if frames != info.frame_count:
            raise FrameCountError(f"coded {frames} frames; the input has {info.frame_count}")
        return Finished(frames, sum(r.bytes for r in records), info.width, info.height)

    def rows(self, result: JobResult, shards: ShardWriter) -> list[GopRow]:
        """Append this video's GOP payloads (.gflv units) to ``shards``; its index rows."""
        return archive_rows(self.video_id, self.learned.codec, result, shards)


def _video_ids(paths: Sequence[tuple[str, str]], taken: set[str]) -> list[str]:
    """A unique id per video: its path below the searched folder, without extension."""
    ids = []
    for path, relative in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        base = stem if relative == "." else f"{relative}/{stem}"
        name, n = base, 2
        while name in taken:
            name, n = f"{base}~{n}", n + 1
        taken.add(name)
        ids.append(name)
    return ids


def compress(
    inputs: Sequence[str],
    output: str,
    options: TranscodeOptions,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compress ``inputs`` (files, folders, globs) into the archive ``output`` (created, or
    appended to); return the archive's card."""
    started = time.perf_counter()
    options = dataclasses.replace(options, audio=False)
    root = os.path.abspath(output)
    found = find_inputs(inputs)
    # The name is never written (work dirs are keyed by it); a learned job wants a .gflv.
    extension = LEARNED_EXTENSION if options.codec in LEARNED_CODECS else ".mp4"
    probe_config = options.resolve(found[0][0] if found else "x",
                                   os.path.join(root, f"x{extension}"), job="dataset")
    wanted = settings_hash(probe_config)
    learned = _learned_card(probe_config)
    card: dict[str, Any]
    if os.path.exists(os.path.join(root, "card.json")):
        card = read_card(root)
        if card["settings_hash"] != wanted:
            raise UsageError(f"{output} was compressed with other settings "
                             f"({settings_text(card)}); use a new archive")
        if learned is not None and card["settings"].get("learned") != learned:
            raise UsageError(f"{output} was coded by {card['settings']['learned']['model_id']}; "
                             f"the installed weights are {learned['model_id']}; use a new "
                             "archive")
    elif os.path.exists(root) and (not os.path.isdir(root) or set(os.listdir(root))
                                   - {"shards", "index", ".gopflow-work"}):
        raise UsageError(f"{output} exists and is not a gopflow dataset")
    else:
        # Version 1 still describes an archive without learned payloads: older readers
        # read it.
        card = {"format": FORMAT, "version": 1 if learned is None else VERSION,
                "settings_hash": wanted,
                "settings": {"encode": None if learned is not None
                             else dataclasses.asdict(probe_config.settings),
                             "plan": dataclasses.asdict(probe_config.plan),
                             **({"learned": learned} if learned is not None else {})},
                "parts": [], "videos": 0, "gops": 0, "frames": 0, "bytes": 0,
                "source_bytes": 0}
    os.makedirs(root, exist_ok=True)
    known = _known_sources(root, card)
    todo = []
    for path, relative in found:
        try:
            key = (os.path.abspath(path), os.path.getsize(path))
        except OSError:
            raise InputError(f"input not found: {path}") from None
        if key in known and known[key] == file_sha256(path):
            continue
        todo.append((path, relative))
    say = log or (lambda message: None)
    say(f"{len(found) - len(todo)} of {len(found)} videos already in {output}")
    if not todo:
        return card
    # Runs are numbered by the parts the card lists: a run that crashed before its card left
    # files under its number that nothing references; they are dropped, so a rerun writes
    # exactly what an uninterrupted run would have.
    run_id = f"{len(card['parts']):05d}"
    for stale in (*glob.glob(os.path.join(root, "shards", f"shard-{run_id}-*.bin")),
                  os.path.join(root, "index", f"part-{run_id}.parquet")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)
    shards = ShardWriter(root, f"shard-{run_id}")
    ids = _video_ids(todo, set(card.get("video_ids", [])))
    jobs: list[DatasetJob | LearnedDatasetJob] = []
    requests = []
    for (path, _), video_id in zip(todo, ids, strict=True):
        # The name is never written: it keys the video's work dir inside the archive.
        virtual = os.path.join(root, f".{video_id.replace('/', '__')}{extension}")
        config = options.resolve(path, virtual, job="dataset")
        config = dataclasses.replace(config, run=dataclasses.replace(
            config.run, work_dir=config.run.work_dir or os.path.join(root, ".gopflow-work")))
        job: DatasetJob | LearnedDatasetJob = (
            DatasetJob(config, video_id) if config.learned is None
            else LearnedDatasetJob(config, video_id))
        jobs.append(job)
        requests.append(GopRequest(job, path, virtual, config.plan, config.run.resume))
    failures: list[str] = []
    rows: list[GopRow] = []
    done: dict[int, JobResult] = {}
    run = jobs[0].config.run
    with claimed() as workdirs:
        try:
            outcomes = run_gop_jobs(requests, run, log, label="dataset")
            with contextlib.closing(outcomes):
                for outcome in outcomes:
                    if outcome.error is not None:
                        failures.append(f"{todo[outcome.index][0]}: {outcome.error}")
                        say(f"failed: {todo[outcome.index][0]}: {outcome.error}")
                        continue
                    assert outcome.result is not None
                    done[outcome.index] = outcome.result
            # In input order, whatever order the videos finished in: the same archive bytes
            # from every run.
            for index in sorted(done):
                rows.extend(jobs[index].rows(done[index], shards))
            if not run.keep_work:
                for result in done.values():
                    result.workdir.remove()
        finally:
            for workdir in workdirs:
                workdir.release()
    if rows:
        part = write_part(root, f"part-{run_id}", rows)
        card = {
            **card,
            "parts": [*card["parts"], part],
            "video_ids": sorted({*card.get("video_ids", []),
                                 *(r.video_id for r in rows)}),
            "videos": card["videos"] + len({r.video_id for r in rows}),
            "gops": card["gops"] + len(rows),
            "frames": card["frames"] + sum(r.frame_count for r in rows),
            "bytes": card["bytes"] + sum(r.length for r in rows),
            "source_bytes": card["source_bytes"] + sum(
                {r.video_id: r.source_bytes for r in rows}.values()),
        }
        write_card(root, card)
    say(f"compressed {len(todo) - len(failures)} videos in {time.perf_counter() - started:.1f} s")
    if failures:
        raise InputError(f"{len(failures)} of {len(todo)} videos failed (the others are in "
                         f"the archive): {failures[0]}")
    return card


def _learned_card(config: TranscodeConfig) -> dict[str, Any] | None:
    """A learned dataset's codec as its card records it (quality and model id resolved:
    what a reader decodes with); None for the other codecs."""
    if config.learned is None:
        return None
    job = LearnedJob(config)
    job.check_tools()
    return job.learned_settings()


def settings_text(card: dict[str, Any]) -> str:
    """An archive's codec and quality setting in a few words (``x265 CRF 22``)."""
    settings = card["settings"]
    learned = settings.get("learned")
    if learned:
        return f"{learned['codec']} quality {learned['quality']}"
    encode = settings["encode"]
    return f"{encode['codec']} " + ("lossless" if encode["crf"] is None
                                    else f"CRF {encode['crf']:g}")


def _known_sources(root: str, card: dict[str, Any]) -> dict[tuple[str, int], str]:
    """(path, size) -> SHA-256 of every source already in the archive."""
    if not card.get("parts"):
        return {}
    from gopflow.dataset.archive import Dataset

    return {(r.source_path, r.source_bytes): r.source_sha256 for r in Dataset(root).rows}
