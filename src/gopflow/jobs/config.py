"""Every option of a job, its default and its checks, in one place.

A request arrives as :class:`TranscodeOptions`: flat, with the command line's names (``--crf``
is ``crf``, ``--no-audio`` is ``audio=False``); ``None`` means "not given". The command line
fills it from its flags and ``gopflow.transcode(input, output, **options)`` from keyword
arguments, so both resolve the same request the same way: :meth:`TranscodeOptions.resolve`
applies the defaults (each codec's own CRF among them), refuses options that cannot apply
together, and returns the :class:`TranscodeConfig` the job runs. Value checks live with the
value types they guard (:class:`~gopflow.codecs.x26x.EncodeSettings`,
:class:`~gopflow.pipeline.plan.PlanOptions`, :class:`~gopflow.pipeline.driver.RunOptions`,
:class:`~gopflow.qro.target.QroTarget`, :class:`LearnedSettings`), so a library caller who
builds those directly is checked the same way.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from gopflow.codecs.learned.api import CODEC_NAMES, DEFAULT_INTRA_OFFSETS
from gopflow.codecs.x26x import ENCODER_NAMES, LOSSLESS_CODECS, EncodeSettings
from gopflow.errors import UsageError
from gopflow.pipeline.assemble import container_for
from gopflow.pipeline.driver import RunOptions
from gopflow.pipeline.plan import DEFAULT_SCENE_THRESHOLD, PlanOptions
from gopflow.pipeline.stages import LearnedCodecRef
from gopflow.qro.target import QroSettings, QroTarget, parse_scale

LEARNED_CODECS = CODEC_NAMES
"""Learned codecs (``--codec dvc|fvc|intra``): they write a .gflv stream."""
PLAYBACK_ENCODERS = tuple(name for name in ENCODER_NAMES if name not in LOSSLESS_CODECS)
"""x264, x265, SVT-AV1: what a transcode, a batch and a ladder code with."""
CODECS = (*PLAYBACK_ENCODERS, *LEARNED_CODECS)
"""``gopflow transcode`` / ``batch`` codecs."""
DATASET_CODECS = (*PLAYBACK_ENCODERS, *LOSSLESS_CODECS, *LEARNED_CODECS)
"""``gopflow dataset compress`` codecs: FFV1 (lossless) is for dataset archives only; a
learned codec's payloads are its .gflv units."""
DATASET_PER_FILE_ONLY = ("report", "plot", "decisions", "save_decisions", "target_vmaf",
                         "target_vmaf_neg", "target_psnr", "max_bitrate")
"""Transcode options a dataset refuses (per-file outputs, QRO)."""
LEARNED_EXTENSION = ".gflv"
PRECODERS = ("none", "dvp", "vistra")
MODE_SELECTS = ("probe", "predict")


def _known(cls: Any, options: dict[str, Any], what: str) -> dict[str, Any]:
    """``options`` if every name is a field of ``cls``; else a one-line error."""
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise UsageError(f"unknown {what} option(s): {', '.join(unknown)}")
    return options


def _run_options(options: Any) -> RunOptions:
    """The execution flags every job shares (same names on every command)."""
    return RunOptions(options.ray_address, options.workers, options.retries,
                      options.work_dir, options.resume, options.keep_work, options.progress)


def parse_bitrate(value: int | float | str, flag: str = "--bitrate") -> int:
    """kbit/s from ``3000``, ``"3000"``, ``"3000k"`` or ``"3M"``; one-line error otherwise."""
    if isinstance(value, bool):
        raise UsageError(f"{flag}: not a bitrate: {value!r} (e.g. 3000k or 3M)")
    if isinstance(value, (int, float)):
        kbps = float(value)
    else:
        raw, scale = value.strip().lower(), 1.0
        if raw.endswith("k"):
            raw = raw[:-1]
        elif raw.endswith("m"):
            raw, scale = raw[:-1], 1000.0
        try:
            kbps = float(raw) * scale
        except ValueError:
            raise UsageError(f"{flag}: not a bitrate: {value!r} (e.g. 3000k or 3M)") from None
    if not kbps > 0 or kbps != kbps or kbps == float("inf"):
        raise UsageError(f"{flag} must be a positive bitrate, got {value!r}")
    return round(kbps)


@dataclass(frozen=True)
class LearnedSettings:
    """The learned codec of a transcode: name, quality, weights and encoder decisions."""

    codec: str
    quality: int | None = None
    """1 (lowest rate) .. the model's quality count; None: the one above the middle."""
    registry: str | None = None
    """Weights registry directory; None: the shipped weights."""
    adaptive_intra: bool | None = None
    """dvc/fvc: code each P frame as intra too and keep the cheaper (R + lambda D); None:
    on for dvc and fvc (intra has no P frames)."""
    rdo: bool | None = None
    """dvc/fvc: choose each P frame's levels and residual dead zone by R + lambda D; None:
    on for dvc and fvc."""
    intra_offset: int | None = None
    """dvc/fvc: key frames this many quality steps above ``quality``; None: the codec's
    :data:`~gopflow.codecs.learned.api.DEFAULT_INTRA_OFFSETS` entry."""
    motion_refinement: int | None = None
    """dvc/fvc: Adam steps refining each P frame's motion latent; None: the codec's default
    with ``rdo``."""

    def __post_init__(self) -> None:
        if self.codec not in LEARNED_CODECS:
            raise UsageError(
                f"unknown learned codec {self.codec!r}; choose from {', '.join(LEARNED_CODECS)}"
            )
        if self.codec == "intra" and (self.adaptive_intra or self.rdo or self.intra_offset
                                      or self.motion_refinement):
            raise UsageError("--adaptive-intra, --rdo, --intra-offset and --motion-refinement "
                             "are for dvc and fvc; --codec intra codes every frame as intra "
                             "already")
        if self.intra_offset is not None and not 0 <= self.intra_offset < 256:
            raise UsageError(f"--intra-offset must be 0 to 255, got {self.intra_offset}")
        if self.motion_refinement is not None and self.motion_refinement < 0:
            raise UsageError(f"--motion-refinement must be 0 or more, got "
                             f"{self.motion_refinement}")
        if self.quality is not None and self.quality < 1:
            raise UsageError(f"--quality must be 1 or more, got {self.quality}")

    @property
    def adaptive(self) -> bool:
        """Whether the encoder decides intra or inter per P frame."""
        return self.codec != "intra" if self.adaptive_intra is None else self.adaptive_intra

    @property
    def rdo_on(self) -> bool:
        """Whether the encoder makes its per-P-frame rate-distortion choices."""
        return self.codec != "intra" if self.rdo is None else self.rdo

    @property
    def offset(self) -> int:
        """Quality steps between the key frames and the P frames."""
        if self.intra_offset is not None:
            return self.intra_offset
        return DEFAULT_INTRA_OFFSETS.get(self.codec, 0)

    def ref(self) -> LearnedCodecRef:
        """What a worker loads."""
        registry = os.path.abspath(self.registry) if self.registry else None
        return LearnedCodecRef(self.codec, registry, self.adaptive, self.rdo_on,
                               self.motion_refinement)


@dataclass(frozen=True)
class TranscodeConfig:
    """A resolved, checked transcode: what the job runs."""

    input: str
    output: str
    settings: EncodeSettings = field(default_factory=EncodeSettings)
    plan: PlanOptions = field(default_factory=PlanOptions)
    run: RunOptions = field(default_factory=RunOptions)
    copy_audio: bool = True
    report: str | None = None
    plot: str | None = None
    qro: QroSettings | None = None
    decisions_in: str | None = None
    decisions_out: str | None = None
    learned: LearnedSettings | None = None
    """A learned codec instead of x264/x265: a .gflv output."""

    def __post_init__(self) -> None:
        if os.path.abspath(self.input) == os.path.abspath(self.output):
            raise UsageError("the output must not overwrite the input")
        if self.learned is not None:
            if self.qro is not None or self.decisions_in or self.decisions_out or self.plot:
                raise UsageError("QRO, --decisions, --save-decisions and --plot work with "
                                 "x264/x265, not a learned codec")
            if not self.output.lower().endswith(LEARNED_EXTENSION):
                raise UsageError(f"a learned codec writes a {LEARNED_EXTENSION} file; name the "
                                 f"output *{LEARNED_EXTENSION}")
            return
        container = container_for(self.output)
        if self.qro is not None and container != "matroska":
            raise UsageError(
                "QRO may change resolution and frame rate from GOP to GOP: write .mkv "
                "(in-band parameter sets), then `gopflow restore` for full size and rate"
            )
        if self.qro is None and (self.decisions_in or self.decisions_out):
            raise UsageError("--decisions/--save-decisions need a QRO target (--target-vmaf, "
                             "--target-vmaf-neg, --target-psnr or --max-bitrate)")


@dataclass(frozen=True)
class TranscodeOptions:
    """A transcode request with the command line's names; ``None``: not given (default).

    Defaults: codec x264; CRF 23 for x264 and 28 for x265 unless ``bitrate``; preset medium;
    pixel format yuv420p; one encoder thread per GOP; no look-ahead tail; GOPs of at
    most 2 s, at least 0.5 s, cut at scene changes (scdet threshold 10); two retries per GOP;
    the source's audio copied. QRO (``target_vmaf``, ``target_vmaf_neg``, ``target_psnr`` or
    ``max_bitrate``) tries scales 1, 3/4, 2/3, 1/2 and half rate with veryfast probes and
    passes a GOP at 0.5 below target, with up to 3 stricter re-encodes.
    """

    codec: str = "x264"
    crf: float | None = None
    bitrate: int | float | str | None = None
    maxrate: int | float | str | None = None
    bufsize: int | float | str | None = None
    preset: str | None = None
    pix_fmt: str | None = None
    encoder_threads: int = 1
    lookahead_tail: int | None = None
    height: int | None = None
    quality: int | None = None
    registry: str | None = None
    adaptive_intra: bool | None = None
    rdo: bool | None = None
    motion_refinement: int | None = None
    intra_offset: int | None = None
    gop_seconds: float = 2.0
    min_gop_seconds: float = 0.5
    scene_threshold: float = DEFAULT_SCENE_THRESHOLD
    scene_detect: bool = True
    ray_address: str | None = None
    workers: int | None = None
    retries: int = 2
    work_dir: str | None = None
    resume: bool = False
    keep_work: bool = False
    audio: bool = True
    target_vmaf: float | None = None
    target_vmaf_neg: float | None = None
    target_psnr: float | None = None
    max_bitrate: int | float | str | None = None
    qro_scales: str = "1,3/4,2/3,1/2"
    half_rate: bool = True
    precoder: str = "none"
    probe_preset: str = "veryfast"
    mode_select: str = "probe"
    qro_tolerance: float = 0.5
    max_reencodes: int = 3
    decisions: str | None = None
    save_decisions: str | None = None
    report: str | None = None
    progress: bool | None = None
    plot: str | None = None

    @classmethod
    def from_kwargs(cls, **options: Any) -> TranscodeOptions:
        """Options from keyword arguments; an unknown name is a one-line error."""
        return cls(**_known(cls, options, "transcode"))

    def resolve(self, input_path: str, output: str, job: str = "transcode") -> TranscodeConfig:
        """The checked :class:`TranscodeConfig` of this request (defaults applied); ``job``
        ``"dataset"`` applies a dataset's checks (its codecs, no per-file options)."""
        if job == "dataset":
            given = [name for name in DATASET_PER_FILE_ONLY if getattr(self, name) is not None]
            if given:
                raise UsageError(f"--{given[0].replace('_', '-')} does not apply to a dataset")
            if self.codec not in DATASET_CODECS:
                raise UsageError(f"a dataset is coded with {', '.join(DATASET_CODECS)}, not "
                                 f"{self.codec!r}")
            if self.codec in LOSSLESS_CODECS and self.preset is not None:
                raise UsageError(f"--preset does not apply to {self.codec} (lossless)")
            if self.codec in LEARNED_CODECS and self.registry is not None:
                raise UsageError("--registry does not apply to a dataset: its readers load "
                                 "the shipped weights")
        elif self.codec in LOSSLESS_CODECS:
            raise UsageError(f"--codec {self.codec} (lossless) is only for gopflow dataset "
                             f"compress; choose from {', '.join(CODECS)}")
        elif self.codec not in CODECS:
            raise UsageError(f"unknown codec {self.codec!r}; choose from {', '.join(CODECS)}")
        learned = self._learned()
        qro = self._qro()
        if qro is not None and self.crf is not None:
            raise UsageError("--crf and a QRO target cannot both apply: QRO chooses each GOP's "
                             "CRF; drop --crf")
        if qro is not None and self.codec not in ("x264", "x265"):
            raise UsageError("QRO works with x264 and x265")
        if qro is not None and self.height is not None:
            raise UsageError("--height and a QRO target cannot both apply: QRO chooses each "
                             "GOP's scale")
        if qro is not None and self.bitrate is not None:
            raise UsageError("--bitrate and a QRO target cannot both apply; for a rate budget "
                             "use --max-bitrate")
        settings = EncodeSettings()
        if learned is None:
            settings = EncodeSettings(
                codec=self.codec,  # type: ignore[arg-type]
                preset=self.preset or "medium",
                crf=self.crf,
                bitrate_kbps=None if self.bitrate is None else parse_bitrate(self.bitrate),
                maxrate_kbps=None if self.maxrate is None else parse_bitrate(self.maxrate,
                                                                              "--maxrate"),
                bufsize_kbps=None if self.bufsize is None else parse_bitrate(self.bufsize,
                                                                              "--bufsize"),
                pix_fmt=self.pix_fmt or "yuv420p",
                threads=self.encoder_threads,
                lookahead_tail=0 if self.lookahead_tail is None else self.lookahead_tail,
                height=self.height,
            )
        return TranscodeConfig(
            input=input_path,
            output=output,
            settings=settings,
            plan=PlanOptions(self.gop_seconds, self.min_gop_seconds, self.scene_detect,
                             self.scene_threshold),
            run=self.run_options(),
            copy_audio=self.audio,
            report=self.report,
            plot=self.plot,
            qro=qro,
            decisions_in=self.decisions,
            decisions_out=self.save_decisions,
            learned=learned,
        )

    def run_options(self) -> RunOptions:
        """How the job runs (cluster, workers, retries, work dir, resume, progress)."""
        return _run_options(self)

    def _learned(self) -> LearnedSettings | None:
        learned_only = {
            "--quality": self.quality, "--registry": self.registry,
            "--adaptive-intra": self.adaptive_intra, "--rdo": self.rdo,
            "--intra-offset": self.intra_offset, "--motion-refinement": self.motion_refinement,
        }
        if self.codec not in LEARNED_CODECS:
            given = [flag for flag, value in learned_only.items() if value is not None]
            if given:
                verb = "is" if len(given) == 1 else "are"
                raise UsageError(f"{', '.join(given)} {verb} for the learned codecs (dvc, fvc, "
                                 f"intra), not {self.codec}; use --crf or --bitrate")
            return None
        encoder_only = {
            "--crf": self.crf, "--bitrate": self.bitrate, "--maxrate": self.maxrate,
            "--bufsize": self.bufsize, "--preset": self.preset, "--pix-fmt": self.pix_fmt,
            "--lookahead-tail": self.lookahead_tail, "--height": self.height,
            "--target-vmaf": self.target_vmaf,
            "--target-vmaf-neg": self.target_vmaf_neg, "--target-psnr": self.target_psnr,
            "--max-bitrate": self.max_bitrate, "--decisions": self.decisions,
            "--save-decisions": self.save_decisions, "--plot": self.plot,
        }
        given = [flag for flag, value in encoder_only.items() if value is not None]
        if self.precoder != "none":
            given.append("--precoder")
        if self.encoder_threads != 1:
            given.append("--encoder-threads")
        if given:
            raise UsageError(f"{', '.join(given)} apply to x264/x265, not --codec {self.codec}; "
                             "use --quality Q (learned codecs run one thread per GOP)")
        return LearnedSettings(self.codec, self.quality, self.registry, self.adaptive_intra,
                               self.rdo, self.intra_offset, self.motion_refinement)

    def _qro(self) -> QroSettings | None:
        goals = {
            "--target-vmaf": self.target_vmaf, "--target-vmaf-neg": self.target_vmaf_neg,
            "--target-psnr": self.target_psnr, "--max-bitrate": self.max_bitrate,
        }
        given = [flag for flag, value in goals.items() if value is not None]
        if len(given) > 1:
            raise UsageError(f"{' and '.join(given)} are alternatives: give one QRO goal")
        if self.precoder not in PRECODERS:
            raise UsageError(f"unknown precoder {self.precoder!r}; choose from "
                             f"{', '.join(PRECODERS)}")
        if self.mode_select not in MODE_SELECTS:
            raise UsageError(f"unknown mode selection {self.mode_select!r}; choose from "
                             f"{', '.join(MODE_SELECTS)}")
        if self.mode_select == "predict" and self.target_vmaf is None and (
            self.target_vmaf_neg is None
        ):
            raise UsageError("--mode-select predict needs --target-vmaf or --target-vmaf-neg")
        if self.target_vmaf is not None:
            target = QroTarget("vmaf", target=self.target_vmaf)
        elif self.target_vmaf_neg is not None:
            target = QroTarget("vmaf_neg", target=self.target_vmaf_neg)
        elif self.target_psnr is not None:
            target = QroTarget("psnr_y", target=self.target_psnr)
        elif self.max_bitrate is not None:
            kbps = parse_bitrate(self.max_bitrate, "--max-bitrate")
            target = QroTarget("vmaf", max_bitrate_kbps=float(kbps))
        else:
            if self.precoder != "none":
                raise UsageError("--precoder needs a QRO target or --max-bitrate")
            return None
        if self.mode_select == "predict":
            from gopflow.qro.mode_predictor import ModePredictor, shipped_sha256

            trained_for = ModePredictor.load(sha256=shipped_sha256()).metric
            if trained_for != target.metric:
                option = "--target-" + trained_for.replace("_", "-")
                raise UsageError(f"the shipped mode predictor was trained on {trained_for} "
                                 f"targets: use {option}, or --mode-select probe")
        scales = tuple(sorted({parse_scale(part.strip()) for part in self.qro_scales.split(",")},
                              reverse=True))
        if Fraction(1) not in scales:
            scales = (Fraction(1), *scales)
        if self.qro_tolerance < 0:
            raise UsageError(f"--qro-tolerance must be 0 or more, got {self.qro_tolerance:g}")
        if self.max_reencodes < 0:
            raise UsageError(f"--max-reencodes must be 0 or more, got {self.max_reencodes}")
        return QroSettings(
            target=target,
            probe_preset=self.probe_preset,
            scales=scales,
            half_rate=self.half_rate,
            tolerance=self.qro_tolerance,
            max_reencodes=self.max_reencodes,
            precoder=self.precoder,
            mode_select=self.mode_select,
        )


@dataclass(frozen=True)
class BatchOptions:
    """A batch request: many inputs, one output folder, the transcode options every file
    shares (a ``--list`` row may override them for its file)."""

    inputs: tuple[str, ...] = ()
    """Files, folders (searched recursively for videos) and globs."""
    output_dir: str = ""
    transcode: TranscodeOptions = field(default_factory=TranscodeOptions)
    list_file: str | None = None
    """A CSV with an ``input`` column, optional ``output`` and per-file option columns."""
    name_template: str = "{stem}.{ext}"
    """Each output's name under ``output_dir`` (the input's folder tree is mirrored)."""
    report: str | None = None
    """The batch's JSON report."""

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise UsageError("name the output folder with -o")
        if os.path.exists(self.output_dir) and not os.path.isdir(self.output_dir):
            raise UsageError(f"-o {self.output_dir} is a file; a batch writes into a folder")
        if self.inputs and self.list_file:
            raise UsageError("name inputs or --list FILE, not both")
        if not self.inputs and not self.list_file:
            raise UsageError("no inputs: name videos, a folder, a glob or --list FILE")
        per_file = {"report": "--report", "plot": "--plot", "decisions": "--decisions",
                    "save_decisions": "--save-decisions"}
        for name, flag in per_file.items():
            if getattr(self.transcode, name) is not None:
                raise UsageError(f"{flag} names one file's output; a batch has its own "
                                 "--report")
        if not self.name_template.strip() or self.name_template.endswith(os.sep):
            raise UsageError(f"--name-template {self.name_template!r} names no file")

    @property
    def resume(self) -> bool:
        return self.transcode.resume


LADDER_CODECS = PLAYBACK_ENCODERS


@dataclass(frozen=True)
class LadderConfig:
    """A resolved ladder request (defaults applied, values checked)."""

    input: str
    output_dir: str
    codec: str
    preset: str
    probe_preset: str
    rungs: int | None
    max_height: int | None
    top_vmaf: float
    floor_kbps: int
    max_kbps: int | None
    segment_seconds: float
    audio: bool
    plan: PlanOptions
    run: RunOptions
    report: str | None
    plot: str | None
    precoder: str = "none"
    """``dvp``: rungs below the source's height are downscaled by the learned DVP
    downscalers (probe encodes included); ``none``: Lanczos."""

    @property
    def hull_metric(self) -> str:
        """What the probes score and ``top_vmaf`` is measured in: VMAF NEG (no enhancement
        gain) for DVP rungs, whose learned sharpening plain VMAF rewards beyond what it
        is worth (a VMAF hull then ships only the smallest DVP heights); else VMAF."""
        return "vmaf_neg" if self.precoder == "dvp" else "vmaf"


LADDER_PRECODERS = ("none", "dvp")
"""A ladder's precoders: encoder-side only (standard players show the rungs)."""


@dataclass(frozen=True)
class LadderOptions:
    """``gopflow ladder``'s options by flag name; ``None`` means "not given"."""

    codec: str = "x264"
    preset: str | None = None
    probe_preset: str | None = None
    rungs: int | None = None
    max_height: int | None = None
    top_vmaf: float = 95.0
    floor_bitrate: int | float | str = "150k"
    max_bitrate: int | float | str | None = None
    segment_seconds: float = 4.0
    scene_threshold: float = DEFAULT_SCENE_THRESHOLD
    scene_detect: bool = True
    audio: bool = True
    ray_address: str | None = None
    workers: int | None = None
    retries: int = 2
    work_dir: str | None = None
    resume: bool = False
    keep_work: bool = False
    progress: bool | None = None
    report: str | None = None
    plot: str | None = None
    precoder: str = "none"

    @classmethod
    def from_kwargs(cls, **options: Any) -> LadderOptions:
        """Options from keyword arguments; an unknown name is a one-line error."""
        return cls(**_known(cls, options, "ladder"))

    def resolve(self, input_path: str, output_dir: str) -> LadderConfig:
        if self.codec not in LADDER_CODECS:
            raise UsageError(f"a ladder codec is one of {', '.join(LADDER_CODECS)}, "
                             f"not {self.codec!r}")
        if self.precoder == "vistra":
            raise UsageError("--precoder vistra does not apply to a ladder: ViSTRA needs "
                             "gopflow's restoring decoder and a ladder is played by standard "
                             "players; use --precoder dvp")
        if self.precoder not in LADDER_PRECODERS:
            raise UsageError(f"unknown ladder precoder {self.precoder!r}; choose from "
                             f"{', '.join(LADDER_PRECODERS)}")
        if self.rungs is not None and not 1 <= self.rungs <= 12:
            raise UsageError(f"--rungs must be 1 to 12, got {self.rungs}")
        if self.max_height is not None and self.max_height < 16:
            raise UsageError(f"--max-height must be at least 16, got {self.max_height}")
        if not 50 <= self.top_vmaf <= 100:
            raise UsageError(f"--top-vmaf must be 50 to 100, got {self.top_vmaf:g}")
        if not 1 <= self.segment_seconds <= 20:
            raise UsageError(f"--segment-seconds must be 1 to 20, got {self.segment_seconds:g}")
        floor = parse_bitrate(self.floor_bitrate, "--floor-bitrate")
        ceiling = None if self.max_bitrate is None else parse_bitrate(self.max_bitrate,
                                                                      "--max-bitrate")
        if ceiling is not None and ceiling <= floor:
            raise UsageError("--max-bitrate must be above --floor-bitrate")
        preset = self.preset or "medium"
        # Probe with the preset the rungs are encoded with: CRF -> bitrate depends on it.
        probe_preset = self.probe_preset or preset
        for name in (preset, probe_preset):
            EncodeSettings(codec=self.codec, preset=name)  # type: ignore[arg-type]
        if os.path.exists(output_dir) and not os.path.isdir(output_dir):
            raise UsageError(f"-o {output_dir} is a file; a ladder is written into a folder")
        if os.path.abspath(output_dir) in (os.path.abspath(input_path), os.sep):
            raise UsageError(f"-o {output_dir} cannot hold the ladder")
        # Segments hold whole GOPs: GOPs of at most half a segment keep them near its length.
        gop_seconds = self.segment_seconds / 2
        return LadderConfig(
            input=input_path, output_dir=output_dir, codec=self.codec, preset=preset,
            probe_preset=probe_preset, rungs=self.rungs, max_height=self.max_height,
            top_vmaf=self.top_vmaf, floor_kbps=floor, max_kbps=ceiling,
            segment_seconds=self.segment_seconds, audio=self.audio,
            plan=PlanOptions(gop_seconds, min(0.5, gop_seconds), self.scene_detect,
                             self.scene_threshold),
            run=_run_options(self),
            report=self.report, plot=self.plot, precoder=self.precoder,
        )


@dataclass(frozen=True)
class DecodeConfig:
    """A ``gopflow decode`` request: a .gflv file to Y4M, MP4 or MKV."""

    input: str
    output: str
    registry: str | None = None
    workers: int | None = None
    ray_address: str | None = None
    progress: bool | None = None

    def __post_init__(self) -> None:
        extension = os.path.splitext(self.output)[1].lower()
        if extension not in (".y4m", ".mp4", ".mkv"):
            raise UsageError(f"decode writes .y4m, .mp4 or .mkv, not {extension or '(none)'!r}")
        if self.workers is not None and self.workers < 1:
            raise UsageError("--workers must be at least 1")
        if os.path.abspath(self.input) == os.path.abspath(self.output):
            raise UsageError("the output must not overwrite the input")
