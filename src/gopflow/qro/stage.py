"""The QRO stage: choose and verify each GOP's scale, frame rate and CRF, then encode it.

After ViSTRA's QRO (Afonso, Zhang, Bull, TCSVT 2019) and the target-quality search of
Av1an / ab-av1, run per GOP inside a worker (no knowledge of Ray). Data flow::

    GOP frames (GopReader, decoded once) -> raw source file (scratch, one GOP)
      -> probes: fast-preset encode of a candidate (down-sampled: precoders.resample)
                 -> decode -> restore (precoders.restore) -> score vs source (libvmaf / psnr)
      -> decide (quality.qro: interpolated CRF search per mode, cheapest mode meeting target)
      -> final encode at the user's preset -> the same restore + score (the check)
      -> below target: re-encode stricter (bounded); still below: flagged, never hidden

Probe results are cached per GOP in the work dir (``probes/gop_NNNNN.json``) so a resumed
job re-probes nothing it already measured.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import av
import numpy as np

from gopflow.codecs.x26x import GopTask, build_command, encoder_failure
from gopflow.fileio import atomic_write_json
from gopflow.media.ffmpeg import feed_process, find_ffmpeg
from gopflow.media.reader import ReaderCache, check_frame_size, feed_format, frame_bytes
from gopflow.precoders.dvp import DvpPrecoder
from gopflow.precoders.resample import ResampleMode, down_filters
from gopflow.precoders.restore import RestoreTarget, restore_frames
from gopflow.precoders.vistra import LearnedRestorer
from gopflow.qro.mode_predictor import (
    ModePredictor,
    gop_features,
    luma_planes,
    shipped_sha256,
)
from gopflow.qro.search import decide
from gopflow.qro.search import stricter as stricter_candidate
from gopflow.qro.target import Candidate, Decision, ProbeResult, QroSettings
from gopflow.quality.gop_score import GopScore, score_restored
from gopflow.types import EncodedGop, GopSpec


@dataclass(frozen=True)
class QroGopTask:
    """One GOP for the QRO stage; ``forced`` skips the search (a re-applied decision)."""

    base: GopTask
    qro: QroSettings
    probe_cache: str | None = None
    forced: Candidate | None = None
    measure_threads: int = 1

    @property
    def gop(self) -> GopSpec:
        return self.base.gop


@functools.lru_cache(maxsize=1)
def _predictor() -> ModePredictor:
    return ModePredictor.load(sha256=shipped_sha256())


def _learned_down(task: QroGopTask, candidate: Candidate, raw_fmt: str) -> bool:
    """DVP applies to down-scaled, 8-bit 4:2:0, even-sized GOPs; anything else is Lanczos."""
    source = task.base.source
    return (
        task.qro.precoder == "dvp"
        and candidate.scale != 1
        and not candidate.half_rate
        and raw_fmt == "yuv420p"
        and source.width % 2 == 0
        and source.height % 2 == 0
    )


def _dvp_frames(raw: str, width: int, height: int, precoder: DvpPrecoder) -> Iterator[bytes]:
    """Learned-downscaled frames of a raw yuv420p GOP file, one at a time."""
    frame_size = width * height * 3 // 2
    with open(raw, "rb") as handle:
        while True:
            data = handle.read(frame_size)
            if len(data) < frame_size:
                return
            planes = np.frombuffer(data, np.uint8).reshape(height * 3 // 2, width)
            yield precoder.down(av.VideoFrame.from_ndarray(planes, format="yuv420p"))


class _ProbeCache:
    """Probe results of one GOP, persisted atomically after every new probe."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.results: dict[str, ProbeResult] = {}
        if path and os.path.exists(path):
            with (
                contextlib.suppress(OSError, ValueError, KeyError, TypeError),
                open(path, encoding="utf-8") as handle,
            ):
                for item in json.load(handle)["probes"]:
                    result = ProbeResult.from_dict(item)
                    self.results[result.candidate.key] = result

    def get(self, candidate: Candidate) -> ProbeResult | None:
        return self.results.get(candidate.key)

    def put(self, result: ProbeResult) -> None:
        self.results[result.candidate.key] = result
        if self.path:
            with contextlib.suppress(OSError):
                atomic_write_json(
                    self.path, {"probes": [r.to_dict() for r in self.results.values()]}
                )


class QroGopStage:
    """Decides, encodes and checks GOPs one after another (keeps its decoder open)."""

    def __init__(self) -> None:
        self._readers = ReaderCache()

    def close(self) -> None:
        self._readers.close()

    # -- building blocks -------------------------------------------------------------
    @staticmethod
    def _encode(task: QroGopTask, raw: str, candidate: Candidate, preset: str,
                scratch: str, final: bool) -> str:
        base = task.base
        settings = replace(
            base.settings, preset=preset, crf=candidate.crf, bitrate_kbps=None,
            maxrate_kbps=None, bufsize_kbps=None,
        )
        source = replace(base.source, pix_fmt=feed_format(base.source.pix_fmt,
                                                          base.settings.pix_fmt))
        mode = ResampleMode(candidate.scale, candidate.half_rate)
        output = os.path.join(scratch, "final.mp4" if final else "probe.mp4")
        log_path = os.path.join(scratch, "encode.log")
        if _learned_down(task, candidate, source.pix_fmt):
            # Deep Video Precoding: the learned downscaler runs here, in Python, and the
            # encoder gets the small frames (timestamps unchanged: DVP keeps the frame rate).
            precoder = DvpPrecoder(candidate.scale, threads=max(1, base.settings.threads))
            width, height = precoder.size(source.width, source.height)
            command = build_command(
                find_ffmpeg().path, replace(source, width=width, height=height), settings,
                output, in_band_headers=True,
            )
            code, reason = feed_process(
                command, _dvp_frames(raw, source.width, source.height, precoder), log_path
            )
        else:
            command = build_command(
                find_ffmpeg().path, source, settings, output,
                pre_filters=down_filters(source.width, source.height, mode),
                input_path=raw, in_band_headers=True,
            )
            code, reason = feed_process(command, (), log_path)
        if code != 0 or not os.path.exists(output):
            raise encoder_failure(f"{settings.codec} on candidate {candidate.key}", reason,
                                  log_path)
        return output

    @staticmethod
    def _score(task: QroGopTask, path: str, raw: str, target: RestoreTarget) -> GopScore:
        """Decode, restore and score the encoded GOP at ``path``."""
        restore = restore_frames
        if task.qro.precoder == "vistra":
            restore = LearnedRestorer(threads=max(1, task.base.settings.threads)).restore_frames
        with av.open(path) as container:
            return score_restored(
                restore(container.decode(video=0), target), raw, target, task.qro.target.metric,
                threads=task.measure_threads, full_range=task.base.source.color_range == "pc",
            )

    @staticmethod
    def _refine(
        final: Any, decision: Decision, candidate: Candidate, data: bytes, score: GopScore,
        qro: QroSettings,
    ) -> tuple[bytes, GopScore, Candidate]:
        """Spend the headroom the final preset gives over the probe preset.

        Probes run at a fast preset; the final, slower preset gives more quality at the same
        CRF, so a passing GOP often sits well above its target. Step the CRF up along the
        mode's measured quality-per-CRF slope while the GOP still passes (at most
        ``qro.refinements`` extra final encodes); keep the cheapest passing one.
        """
        assert qro.target.target is not None
        same_mode = sorted(
            (p.candidate.crf, p.quality) for p in decision.probes
            if p.candidate.mode == candidate.mode
        )
        slope = 0.8
        if len(same_mode) >= 2 and same_mode[-1][0] > same_mode[0][0]:
            (low_crf, low_q), (high_crf, high_q) = same_mode[0], same_mode[-1]
            slope = max(0.2, (low_q - high_q) / (high_crf - low_crf))
        best = (data, score, candidate)
        for _ in range(qro.refinements):
            headroom = best[1].mean - qro.target.target
            if headroom < 0.4:
                break
            step = max(0.5, round((headroom - 0.1) / slope * 2) / 2)
            crf = min(qro.crf_range[1], best[2].crf + step)
            if crf <= best[2].crf:
                break
            trial = Candidate(candidate.scale, candidate.half_rate, crf)
            trial_data, trial_score, passed = final(trial)
            if not passed or len(trial_data) >= len(best[0]):
                break
            best = (trial_data, trial_score, trial)
        return best

    # -- the stage -------------------------------------------------------------------
    def __call__(self, task: QroGopTask) -> EncodedGop:
        started = time.perf_counter()
        base, qro = task.base, task.qro
        gop = base.gop
        fps = float(base.source.fps)
        raw_fmt = feed_format(base.source.pix_fmt, base.settings.pix_fmt)
        target = RestoreTarget(
            base.source.width, base.source.height, base.source.fps, gop.frame_count, raw_fmt
        )
        reader = self._readers.reader(
            base.input_path, base.stream_index, base.read_mode, base.settings.threads
        )
        with tempfile.TemporaryDirectory(prefix="gopflow-qro-") as scratch:
            raw = os.path.join(scratch, "source.yuv")
            with open(raw, "wb") as handle:
                for frame in reader.read(gop):
                    check_frame_size(frame, base.source.width, base.source.height)
                    handle.write(frame_bytes(frame, raw_fmt))
            cache = _ProbeCache(task.probe_cache)

            def probe(candidate: Candidate) -> ProbeResult:
                known = cache.get(candidate)
                if known is not None:
                    return known
                path = self._encode(task, raw, candidate, qro.probe_preset, scratch, False)
                score = self._score(task, path, raw, target)
                bits = os.path.getsize(path) * 8
                result = ProbeResult(candidate, bits, score.mean, score.minimum)
                cache.put(result)
                return result

            if task.forced is not None:
                decision: Decision | None = None
                candidate = task.forced
            else:
                scales, rates = qro.scales, (
                    (False, True) if qro.half_rate and qro.precoder != "dvp" else (False,)
                )
                if qro.mode_select == "predict":
                    # Fast mode selection: content features -> one spatial mode; the CRF
                    # search then runs in that mode only.
                    features = gop_features(luma_planes(
                        raw, target.width, target.height, os.path.getsize(raw) // gop.frame_count
                    ))
                    assert qro.target.target is not None
                    scales = (_predictor().predict(features, qro.target.target),)
                    rates = (False,)
                decision = decide(
                    gop.index, probe, qro.target, gop.frame_count, fps,
                    scales=scales,
                    rates=rates,
                    crf_range=qro.crf_range, start_crf=qro.start_crf,
                    max_probes_per_mode=qro.max_probes_per_mode,
                )
                candidate = decision.candidate
            attempts: list[dict[str, Any]] = []
            budget = (
                qro.target.budget_bits(gop.frame_count, fps)
                if qro.target.max_bitrate_kbps is not None else None
            )

            def final(candidate: Candidate) -> tuple[bytes, GopScore, bool]:
                path = self._encode(task, raw, candidate, base.settings.preset, scratch, True)
                score = self._score(task, path, raw, target)
                with open(path, "rb") as handle:
                    data = handle.read()
                if budget is not None:
                    passed = len(data) * 8 <= budget
                else:
                    assert qro.target.target is not None
                    passed = score.mean >= qro.target.target - qro.tolerance
                attempts.append({
                    "candidate": candidate.to_dict(), "bits": len(data) * 8,
                    "quality": round(score.mean, 4), "min_quality": round(score.minimum, 4),
                    "passed": passed,
                })
                return data, score, passed

            data, score, passed = final(candidate)
            while not passed and len(attempts) <= qro.max_reencodes:
                following = (
                    Candidate(candidate.scale, candidate.half_rate,
                              min(qro.crf_range[1], candidate.crf + 2.0))
                    if budget is not None
                    else stricter_candidate(candidate, crf_min=qro.crf_range[0],
                                            scales=qro.scales)
                )
                if following is None or following == candidate:
                    break
                candidate = following
                data, score, passed = final(candidate)
            if passed and budget is None and decision is not None:
                data, score, candidate = self._refine(
                    final, decision, candidate, data, score, qro
                )
            chosen = next(a for a in reversed(attempts) if a["candidate"] == candidate.to_dict())
        details = {
            "scale": str(candidate.scale),
            "half_rate": candidate.half_rate,
            "crf": candidate.crf,
            "coded_frames": ResampleMode(candidate.scale, candidate.half_rate).coded_frames(
                gop.frame_count
            ),
            "metric": qro.target.metric,
            "quality": chosen["quality"],
            "min_quality": chosen["min_quality"],
            "bits": chosen["bits"],
            "passed": passed,
            "flagged": not passed,
            "forced": task.forced is not None,
            "probes": [p.to_dict() for p in (decision.probes if decision else ())],
            "attempts": attempts,
        }
        return EncodedGop(
            index=gop.index,
            data=data,
            frames=gop.frame_count,
            encode_seconds=time.perf_counter() - started,
            details=details,
        )
