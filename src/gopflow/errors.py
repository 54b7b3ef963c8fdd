"""The gopflow exception tree.

Every error gopflow raises on purpose is a :class:`GopflowError`. Each subclass also inherits
the built-in exception a caller would naturally catch (``ValueError`` for bad input,
``OSError`` for files and processes, ``RuntimeError`` for failed work), as PyAV does with
``InvalidDataError(ValueError)``. The CLI prints ``str(error)`` as one line and exits with
:attr:`GopflowError.exit_code`.
"""

from __future__ import annotations


class GopflowError(Exception):
    """Base class of every error gopflow raises on purpose."""

    exit_code: int = 1
    resumable: bool = True
    """Whether ``--resume`` can help: False for errors that would happen again the same way
    (bad options, bad input, an encoder refusing its settings); a transcode that fails with
    one removes its work dir instead of leaving it for a resume."""


class UsageError(GopflowError, ValueError):
    """Options that do not make sense together or are out of range."""

    exit_code = 2
    resumable = False


class InputError(GopflowError, ValueError):
    """The input cannot be used: missing, not a video, corrupt, truncated, empty."""

    resumable = False


class InputNotFoundError(InputError, FileNotFoundError):
    """The input path does not exist."""


class NoVideoStreamError(InputError):
    """The input has no video stream (for example an audio-only file)."""


class CorruptInputError(InputError):
    """The input's data cannot be demuxed or decoded (corrupt or truncated)."""


class OutputError(GopflowError, OSError):
    """The output (or work directory) cannot be written."""


class ToolMissingError(GopflowError, OSError):
    """ffmpeg, or an encoder/filter gopflow needs, is not available."""


class ModelMissingError(ToolMissingError):
    """A learned model is not in the registry, or its weights file is not installed."""


class ModelIntegrityError(InputError):
    """A weights file does not match the sha256 the registry records (tampered or corrupt),
    or cannot be loaded as a state dict of the registered architecture."""


class EncoderError(GopflowError, RuntimeError):
    """An external encoder process failed on a GOP (worth a retry)."""


class EncoderRejectedError(GopflowError, ValueError):
    """The encoder refused its settings or the frames' format before encoding anything
    (ffmpeg's "Error opening output files", an option it cannot parse): deterministic, so
    not an :class:`EncoderError` and never retried."""

    resumable = False


class GopFailedError(GopflowError, RuntimeError):
    """A GOP failed for good after its retries; the job cannot finish."""


class FrameCountError(GopflowError, RuntimeError):
    """A decoded or assembled stream does not have the frames it must have."""

    resumable = False


class WorkDirError(GopflowError, OSError):
    """The work directory is inconsistent with the job being resumed."""


class WorkDirLockedError(WorkDirError):
    """Another gopflow run holds the work directory (the same job, running now)."""


class ClusterError(GopflowError, RuntimeError):
    """The Ray cluster could not be started or reached."""


class MetricError(GopflowError, ValueError):
    """Two videos cannot be compared as asked (sizes differ, a frame is too small, ...)."""


class BdRateError(MetricError):
    """Rate-quality points unusable for a Bjontegaard delta (too few, unordered, disjoint)."""
