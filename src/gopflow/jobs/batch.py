"""The batch job: many videos, one cluster, one manifest, nothing redone.

``gopflow batch videos/ -o out/`` finds the videos (a folder, searched recursively; a glob;
files; or ``--list jobs.csv`` with per-row options), names each output from
``--name-template`` under ``-o`` (the input tree mirrored), refuses collisions before any
work, and hands every video to :func:`~gopflow.pipeline.driver.run_gop_jobs`: one Ray
cluster and one bounded window for all of them, the next video planned while the current
one encodes. A video that fails (bad input, a GOP that failed after its retries) is marked
failed with its one-line reason and the batch goes on.

The manifest (``gopflow-batch.jsonl`` in ``-o``) is an append-only JSON-lines log: one line
per event, each flushed and fsynced as it happens, so a crash loses at most the line being
written (a torn last line is ignored when the log is read back). Events: ``batch`` (start),
``file`` (status ``pending``, ``running``, ``done``, ``failed``: with the input's size and
mtime, the settings hash, and for ``done`` the output's SHA-256), ``gop`` (each GOP stored:
index, frames, bytes, SHA-256). ``--resume`` skips every file whose last status is ``done``
with the same input, settings and output bytes, and the work dirs keep every finished GOP
of the others.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import glob
import hashlib
import json
import os
import string
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from gopflow.errors import GopflowError, UsageError
from gopflow.jobs.config import LEARNED_CODECS, BatchOptions, TranscodeConfig, TranscodeOptions
from gopflow.jobs.transcode import make_job, settle
from gopflow.pipeline.driver import GopRequest, JobOutcome, run_gop_jobs
from gopflow.pipeline.runner import RayRunner
from gopflow.pipeline.workdir import claimed, file_sha256, input_identity
from gopflow.types import GopRecord, TranscodeReport

MANIFEST_NAME = "gopflow-batch.jsonl"
# What a folder search picks up; a file named on the command line or in a list is taken as
# it is, whatever its extension.
VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg",
    ".flv", ".wmv", ".y4m", ".264", ".h264", ".265", ".h265", ".hevc", ".ivf", ".gif",
})
TEMPLATE_FIELDS = ("stem", "ext", "name", "dir", "codec", "crf", "preset", "quality")


@dataclass(frozen=True)
class BatchItem:
    """One video of a batch: where it comes from, where it goes, and how it is coded."""

    input: str
    output: str
    relative_dir: str
    config: TranscodeConfig
    settings_hash: str


@dataclass(frozen=True)
class FileResult:
    """How one video of a batch ended."""

    input: str
    output: str
    status: str  # done, failed, skipped (done by an earlier run)
    reason: str = ""
    input_bytes: int = 0
    output_bytes: int = 0
    frames: int = 0
    wall_seconds: float = 0.0
    """From the file's probe to its output in place (files overlap in a batch)."""
    report: TranscodeReport | None = None

    @property
    def ratio(self) -> float:
        return self.input_bytes / self.output_bytes if self.output_bytes else 0.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "input": self.input, "output": self.output, "status": self.status,
            "reason": self.reason, "input_bytes": self.input_bytes,
            "output_bytes": self.output_bytes, "frames": self.frames,
            "ratio": round(self.ratio, 3),
        }
        if self.report is not None:
            out["transcode"] = self.report.to_dict()
        return out


@dataclass(frozen=True)
class BatchReport:
    """A finished batch: one :class:`FileResult` per video, in input order."""

    output_dir: str
    files: tuple[FileResult, ...]
    wall_seconds: float
    frames: int = 0
    manifest: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def failed(self) -> tuple[FileResult, ...]:
        return tuple(f for f in self.files if f.status == "failed")

    def to_dict(self) -> dict[str, Any]:
        return {
            "output_dir": self.output_dir,
            "manifest": self.manifest,
            "wall_seconds": round(self.wall_seconds, 3),
            "frames": self.frames,
            "fps": round(self.frames / self.wall_seconds, 2) if self.wall_seconds else 0.0,
            "totals": {status: sum(f.status == status for f in self.files)
                       for status in ("done", "skipped", "failed")},
            "files": [f.to_dict() for f in self.files],
        }

    def table(self) -> str:
        """The summary a user reads at the end of a batch: one row per file."""
        rows = [("file", "status", "in MB", "out MB", "ratio", "fps", "note")]
        for f in self.files:
            fps = f"{f.frames / f.wall_seconds:.1f}" if f.wall_seconds > 0 else ""
            rows.append((
                os.path.relpath(f.input), f.status, f"{f.input_bytes / 1e6:.2f}",
                f"{f.output_bytes / 1e6:.2f}" if f.output_bytes else "",
                f"{f.ratio:.1f}x" if f.output_bytes else "", fps, f.reason,
            ))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
                 + "  " + row[-1] for row in rows]
        return "\n".join(line.rstrip() for line in lines)


def batch(inputs: Sequence[str] | str, output_dir: str, log: Callable[[str], None] | None = None,
          **options: Any) -> BatchReport:
    """Transcode many videos into ``output_dir``; ``options`` are ``gopflow batch``'s and
    ``gopflow transcode``'s, by name (``codec="x265"``, ``crf=24``, ``name_template=...``,
    ``list_file=...``, ``resume=True``)."""
    batch_fields = {f.name for f in dataclasses.fields(BatchOptions)} - {
        "inputs", "output_dir", "transcode"}
    own = {name: options.pop(name) for name in list(options) if name in batch_fields}
    paths = (inputs,) if isinstance(inputs, str) else tuple(inputs)
    request = BatchOptions(inputs=paths, output_dir=output_dir,
                           transcode=TranscodeOptions.from_kwargs(**options), **own)
    return run_batch(request, log)


# -- finding inputs and naming outputs ----------------------------------------------------


def _walk(folder: str) -> Iterator[tuple[str, str]]:
    """(path, directory relative to ``folder``) of every video under ``folder``, sorted."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS and not name.startswith("."):
                yield os.path.join(root, name), os.path.relpath(root, folder)


def find_inputs(inputs: Sequence[str]) -> list[tuple[str, str]]:
    """Every input's (path, relative directory): folders searched, globs expanded."""
    found: list[tuple[str, str]] = []
    for spec in inputs:
        if os.path.isdir(spec):
            videos = list(_walk(spec))
            if not videos:
                raise UsageError(f"no videos found in {spec}")
            found.extend(videos)
        elif glob.has_magic(spec):
            base = spec.split("*")[0].split("?")[0].split("[")[0]
            base = base if base.endswith(os.sep) else os.path.dirname(base)
            matches = sorted(m for m in glob.glob(spec, recursive=True) if os.path.isfile(m))
            if not matches:
                raise UsageError(f"no files match {spec}")
            found.extend((m, os.path.relpath(os.path.dirname(m), base or ".")) for m in matches)
        else:
            found.append((spec, "."))
    return found


def _value(field_type: Any, text: str, name: str) -> Any:
    """A CSV cell as the option's type (its annotation, e.g. ``"float | None"``)."""
    kinds = {kind.strip() for kind in str(field_type).split("|")}
    try:
        if "str" in kinds:
            return text
        if "bool" in kinds:
            lowered = text.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(text)
            return lowered in ("1", "true", "yes", "on")
        if "float" in kinds:
            return float(text)
        if "int" in kinds:
            return int(text)
    except ValueError:
        raise UsageError(f"bad value {text!r} for {name}") from None
    return text


# Options that name one file's side outputs or how the whole batch runs: not per row.
BATCH_ONLY_FILE_OPTIONS = frozenset({"report", "plot", "decisions", "save_decisions",
                                     "ray_address", "workers", "retries", "work_dir", "resume",
                                     "keep_work", "progress"})


def read_list(path: str) -> list[tuple[str, str, dict[str, Any], str | None]]:
    """Rows of a ``--list`` CSV: (input, relative dir, options, output or None).

    Columns: ``input`` (required), ``output`` (optional, relative to ``-o``) and any
    transcode option by its flag name (``crf``, ``codec``, ``target-vmaf``...); an empty
    cell is "not given". Relative inputs are relative to the list's folder."""
    types = {f.name: f.type for f in dataclasses.fields(TranscodeOptions)}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = [(name or "").strip() for name in reader.fieldnames or []]
            if "input" not in header:
                raise UsageError(f"{path}: the first row must name the columns, one of them "
                                 "'input'")
            rows = list(reader)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"{path} is not a CSV file: {exc}") from exc
    folder = os.path.dirname(os.path.abspath(path))
    out = []
    for number, row in enumerate(rows, start=2):
        cells = {(k or "").strip().replace("-", "_"): (v or "").strip() for k, v in row.items()}
        source = cells.pop("input", "")
        if not source:
            raise UsageError(f"{path} line {number}: no input")
        output = cells.pop("output", "") or None
        options: dict[str, Any] = {}
        for name, text in cells.items():
            if not text:
                continue
            if name not in types or name in BATCH_ONLY_FILE_OPTIONS:
                raise UsageError(f"{path} line {number}: unknown column {name!r}")
            options[name] = _value(types[name], text, f"{name} ({path} line {number})")
        out.append((os.path.join(folder, source), ".", options, output))
    return out



def _extension(options: TranscodeOptions) -> str:
    if options.codec in LEARNED_CODECS:
        return "gflv"
    qro = (options.target_vmaf, options.target_vmaf_neg, options.target_psnr,
           options.max_bitrate)
    return "mkv" if any(v is not None for v in qro) else "mp4"


def output_name(template: str, path: str, relative_dir: str, options: TranscodeOptions) -> str:
    """``template`` filled in for one input (the fields are :data:`TEMPLATE_FIELDS`)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    crf = options.crf
    values = {
        "stem": stem, "name": os.path.basename(path), "ext": _extension(options),
        "dir": "" if relative_dir == "." else relative_dir, "codec": options.codec,
        "crf": "" if crf is None else (f"{crf:g}"), "preset": options.preset or "",
        "quality": "" if options.quality is None else str(options.quality),
    }
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    except ValueError as exc:
        raise UsageError(f"bad --name-template {template!r}: {exc}") from None
    unknown = sorted(set(names) - set(values))
    if unknown:
        raise UsageError(f"unknown field(s) {', '.join(unknown)} in --name-template; use "
                         f"{', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}")
    return template.format(**values)


def settings_hash(config: TranscodeConfig) -> str:
    """What identifies how a file is coded (not where from or to, nor how it is run)."""
    identity = {
        "settings": dataclasses.asdict(config.settings),
        "plan": dataclasses.asdict(config.plan),
        "copy_audio": config.copy_audio,
        "qro": dataclasses.asdict(config.qro) if config.qro else None,
        "learned": dataclasses.asdict(config.learned) if config.learned else None,
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_batch(request: BatchOptions) -> list[BatchItem]:
    """Every video of the batch with its output and config; refuses a bad option, a
    collision or an output that would overwrite an input before any work starts."""
    base = request.transcode
    if request.list_file:
        rows = read_list(request.list_file)
    else:
        rows = [(path, rel, {}, None) for path, rel in find_inputs(request.inputs)]
    if not rows:
        raise UsageError("no inputs: name videos, a folder, a glob or --list FILE")
    out_dir = os.path.abspath(request.output_dir)
    items: list[BatchItem] = []
    for path, relative_dir, overrides, named in rows:
        options = dataclasses.replace(base, **overrides)
        name = named or output_name(request.name_template, path, relative_dir, options)
        if not named and relative_dir != "." and "{dir}" not in request.name_template:
            name = os.path.join(relative_dir, name)
        output = os.path.normpath(os.path.join(out_dir, name))
        if os.path.commonpath([out_dir, output]) != out_dir or output == out_dir:
            raise UsageError(f"output {name!r} for {path} is not inside {request.output_dir}")
        try:
            config = options.resolve(path, output)
        except UsageError as exc:
            raise UsageError(f"{path}: {exc}") from None
        items.append(BatchItem(path, output, relative_dir, config, settings_hash(config)))
    seen: dict[str, str] = {}
    sources = {os.path.realpath(item.input) for item in items}
    for item in items:
        key = os.path.normcase(item.output)
        if key in seen:
            raise UsageError(f"{seen[key]} and {item.input} would both write {item.output}; "
                             "use --name-template with {dir}, {ext} or {name}")
        seen[key] = item.input
        if os.path.realpath(item.output) in sources:
            raise UsageError(f"{item.output} is an input of this batch; it is never overwritten")
    return items


# -- the manifest ---------------------------------------------------------------------------


class Manifest:
    """The append-only JSON-lines log of a batch (see the module's docstring)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._handle: IO[str] | None = None

    def read(self) -> list[dict[str, Any]]:
        """Every complete event of the log (a torn last line is ignored)."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                lines = handle.read().split("\n")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise UsageError(f"cannot read the manifest {self.path}: {exc.strerror}") from exc
        events = []
        for line in lines:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    events.append(event)
        return events

    def open(self, fresh: bool) -> None:
        if fresh:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        elif os.path.exists(self.path):
            with open(self.path, "rb+") as handle:  # drop a torn last line before appending
                data = handle.read()
                if data and not data.endswith(b"\n"):
                    handle.truncate(data.rfind(b"\n") + 1)
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close)

    def write(self, event: str, **fields: Any) -> None:
        assert self._handle is not None
        self._handle.write(json.dumps({"event": event, "time": round(time.time(), 3), **fields},
                                      sort_keys=True) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _finished_earlier(item: BatchItem, events: list[dict[str, Any]]) -> bool:
    """Whether the manifest's last word on ``item`` is ``done``, for this very input,
    settings and output (the output's bytes still what they were)."""
    last = None
    for event in events:
        if event.get("event") == "file" and event.get("output") == item.output:
            last = event
    if last is None or last.get("status") != "done":
        return False
    try:
        identity = input_identity(item.input)
    except OSError:
        return False
    return (
        last.get("settings") == item.settings_hash
        and last.get("size") == identity["size"]
        and last.get("mtime_ns") == identity["mtime_ns"]
        and os.path.isfile(item.output)
        and file_sha256(item.output) == last.get("output_sha256")
    )


def _identity(path: str) -> dict[str, Any]:
    try:
        identity = input_identity(path)
    except OSError:
        return {}
    return {"size": identity["size"], "mtime_ns": identity["mtime_ns"]}


# -- running ----------------------------------------------------------------------------------


def run_batch(request: BatchOptions, log: Callable[[str], None] | None = None) -> BatchReport:
    """Run a batch; return its report (a failed file is in it, not raised)."""
    started = time.perf_counter()
    items = plan_batch(request)
    out_dir = os.path.abspath(request.output_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
        for item in items:
            os.makedirs(os.path.dirname(item.output), exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {exc.filename}: {exc.strerror}") from exc
    manifest = Manifest(os.path.join(out_dir, MANIFEST_NAME))
    earlier = manifest.read() if request.resume else []
    results: dict[int, FileResult] = {}
    todo: list[int] = []
    for index, item in enumerate(items):
        if request.resume and _finished_earlier(item, earlier):
            size = os.path.getsize(item.output)
            results[index] = FileResult(item.input, item.output, "skipped", "done earlier",
                                        _identity(item.input).get("size", 0), size)
        else:
            todo.append(index)
    manifest.open(fresh=not request.resume)
    try:
        manifest.write("batch", files=len(items), todo=len(todo), resume=request.resume)
        for index in todo:
            item = items[index]
            manifest.write("file", status="pending", input=item.input, output=item.output,
                           settings=item.settings_hash, **_identity(item.input))
        frames = _run(items, todo, request, manifest, results, log)
    finally:
        manifest.close()
    report = BatchReport(
        output_dir=out_dir,
        files=tuple(results[i] for i in range(len(items))),
        wall_seconds=time.perf_counter() - started,
        frames=frames,
        manifest=manifest.path,
    )
    if request.report:
        from gopflow.fileio import atomic_write_json

        atomic_write_json(os.path.abspath(request.report), report.to_dict())
    return report


def _stage_key(item: BatchItem) -> tuple[str, ...]:
    """Videos whose jobs share a stage and its CPUs run through the same actors."""
    config = item.config
    kind = "learned" if config.learned else ("qro" if config.qro else "encode")
    learned = json.dumps(dataclasses.asdict(config.learned), default=str) if config.learned else ""
    return kind, str(config.settings.threads), learned


def _run(
    items: list[BatchItem],
    todo: list[int],
    request: BatchOptions,
    manifest: Manifest,
    results: dict[int, FileResult],
    log: Callable[[str], None] | None,
) -> int:
    """Run the videos in ``todo`` (grouped by stage, on one cluster); fill ``results``."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for index in todo:
        groups.setdefault(_stage_key(items[index]), []).append(index)
    run = request.transcode.run_options()
    frames = 0
    if not todo:
        return 0
    # More than one kind of stage: keep one cluster up across them (the driver reuses it).
    cluster = RayRunner(run.ray_address, run.workers) if len(groups) > 1 else None
    with claimed() as workdirs, cluster or contextlib.nullcontext():
        try:
            for indices in groups.values():
                requests = []
                for index in indices:
                    item = items[index]
                    requests.append(GopRequest(make_job(item.config), item.input, item.output,
                                               item.config.plan, request.resume))
                    manifest.write("file", status="running", input=item.input,
                                   output=item.output, settings=item.settings_hash)

                def on_gop(position: int, record: GopRecord, indices: list[int] = indices
                           ) -> None:
                    item = items[indices[position]]
                    manifest.write("gop", output=item.output, gop=record.index,
                                   frames=record.frames, bytes=record.bytes, sha256=record.sha256)

                outcomes = run_gop_jobs(requests, run, log, label="batch", on_gop=on_gop)
                with contextlib.closing(outcomes):
                    for outcome in outcomes:
                        index = indices[outcome.index]
                        results[index] = _settle(items[index], outcome, manifest)
                        frames += results[index].frames
        finally:
            for workdir in workdirs:
                workdir.release()
    return frames


def _settle(item: BatchItem, outcome: JobOutcome, manifest: Manifest) -> FileResult:
    identity = _identity(item.input)
    if outcome.error is not None:
        reason = str(outcome.error)
        manifest.write("file", status="failed", input=item.input, output=item.output,
                       settings=item.settings_hash, reason=reason, **identity)
        return FileResult(item.input, item.output, "failed", reason, identity.get("size", 0))
    assert outcome.result is not None
    try:
        report = settle(item.config, outcome.result)
    except GopflowError as exc:
        manifest.write("file", status="failed", input=item.input, output=item.output,
                       settings=item.settings_hash, reason=str(exc), **identity)
        return FileResult(item.input, item.output, "failed", str(exc), identity.get("size", 0))
    digest = file_sha256(item.output)
    manifest.write("file", status="done", input=item.input, output=item.output,
                   settings=item.settings_hash, output_sha256=digest, frames=report.frames,
                   bytes=report.bytes, **identity)
    phases = outcome.result.phases
    seconds = phases.get("assembled", 0.0) - phases.get("probed", 0.0)
    return FileResult(item.input, item.output, "done", "", identity.get("size", 0),
                      report.bytes, report.frames, seconds, report)
