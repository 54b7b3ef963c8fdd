"""gopflow: GOP-parallel video preprocessing and transcoding on Ray.

A video is cut into closed, scene-aligned GOPs; Ray workers decode their own GOP and hand it
to x264/x265 through ffmpeg, or code it with a learned codec; the GOPs are joined, in order,
into one file. The public API mirrors the command line, option for option::

    import gopflow
    info = gopflow.probe("in.mp4")
    report = gopflow.transcode("in.mp4", "out.mp4", codec="x265", crf=24)
    report = gopflow.transcode("in.mp4", "out.mkv", target_vmaf=93)
    batch = gopflow.batch(["a.mp4", "videos/"], "out/", codec="x264", crf=23)
    ladder = gopflow.ladder("in.mp4", "ladder/", codec="x264")
    gopflow.transcode("in.mp4", "out.gflv", codec="dvc", quality=4)
    gopflow.decode("out.gflv", "decoded.y4m")
    gopflow.restore("out.mkv", "viewer.mkv")
    scores = gopflow.compare("in.mp4", "out.mp4", metrics=("psnr", "ssim", "vmaf"))

Every error raised on purpose is a :class:`GopflowError`. Heavy modules (PyAV, torch, Ray)
are imported when a function runs, not by ``import gopflow``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gopflow.errors import GopflowError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gopflow.jobs.batch import BatchReport
    from gopflow.jobs.decode import DecodeResult
    from gopflow.jobs.ladder import LadderReport
    from gopflow.jobs.restore import RestoreResult
    from gopflow.types import TranscodeReport, VideoInfo

__version__ = "0.1.0"
__all__ = [
    "GopflowError", "__version__", "batch", "compare", "decode", "ladder", "probe", "restore",
    "transcode",
]


def __getattr__(name: str) -> Any:
    # ``gopflow.dataset`` (``gopflow.dataset.open(root)``) is imported on first use.
    if name == "dataset":
        import gopflow.dataset

        return gopflow.dataset
    raise AttributeError(f"module 'gopflow' has no attribute {name!r}")


def probe(path: str) -> VideoInfo:
    """What gopflow knows of ``path``'s video stream (and its audio streams)."""
    from gopflow.media.probe import probe as probe_video

    return probe_video(path)


def transcode(input: str, output: str, **options: Any) -> TranscodeReport:
    """Transcode ``input`` to ``output`` with ``gopflow transcode``'s options, by name
    (``codec="x265"``, ``crf=24``, ``target_vmaf=93``, ``audio=False``, ...)."""
    from gopflow.jobs.transcode import transcode as run

    return run(input, output, **options)


def batch(inputs: str | Sequence[str], output_dir: str, **options: Any) -> BatchReport:
    """Transcode many videos (files, folders, globs) into ``output_dir`` on one cluster, with
    ``gopflow batch``'s options by name (``name_template=``, ``list_file=``, ``resume=``,
    ``report=``) and every transcode option (``codec=``, ``crf=``...). A file that fails is
    in the report (``report.failed``), not raised."""
    from gopflow.jobs.batch import batch as run

    return run(inputs, output_dir, **options)


def ladder(input: str, output_dir: str, **options: Any) -> LadderReport:
    """A per-title streaming ladder of ``input`` in ``output_dir`` (HLS + DASH), with
    ``gopflow ladder``'s options by name (``codec="svtav1"``, ``rungs=6``, ...)."""
    from gopflow.jobs.ladder import ladder as run

    return run(input, output_dir, **options)


def decode(input: str, output: str, **options: Any) -> DecodeResult:
    """Decode a .gflv stream to .y4m, .mp4 or .mkv (``registry``, ``workers``, ...)."""
    from gopflow.jobs.decode import decode as run

    return run(input, output, **options)


def restore(input: str, output: str) -> RestoreResult:
    """The full-size, full-rate video a viewer of a gopflow output gets."""
    from gopflow.jobs.restore import run_restore

    return run_restore(input, output)


def compare(reference: str, distorted: str, **options: Any) -> Any:
    """Per-frame and pooled quality of ``distorted`` against ``reference``
    (``metrics=("psnr", "ssim", "vmaf")``, ``json=``, ``csv=``, ``plot=``, ...)."""
    from gopflow.jobs.compare import CompareConfig, run_compare

    return run_compare(CompareConfig(reference, distorted, **options))
