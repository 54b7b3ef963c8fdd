"""The job loop every GOP job runs: probe -> plan -> runner -> work dir -> finish.

Data flow::

    input --probe--> VideoInfo --scene cuts + plan--> [GopSpec] (job.json in the work dir)
          --RayRunner.map_lanes (bounded window)--> the job's stage per GOP (a worker decodes
          its own frames) --> segment + done record per GOP (atomic, resumable)
          --> GopJob.finish (concat, or a .gflv stream) --> JobResult

What differs between jobs (x264/x265, QRO, learned codecs) is a :class:`GopJob`: its
settings (the work-dir key), its stage and tasks, how it checks a result and how it joins
the GOPs. Planning runs in a thread while Ray starts. The driver holds at most the runner's
window of GOP payloads; everything else is on disk in the work dir.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from gopflow.errors import OutputError, UsageError
from gopflow.media.probe import probe_with_timestamps
from gopflow.pipeline.plan import PlanOptions, plan_video
from gopflow.pipeline.runner import RayRunner
from gopflow.pipeline.workdir import WorkDir
from gopflow.types import EncodedGop, GopRecord, GopSpec, VideoInfo


@dataclass(frozen=True)
class RunOptions:
    """Where and how GOPs run, and what happens to the work dir."""

    ray_address: str | None = None
    workers: int | None = None
    max_retries: int = 2
    work_dir: str | None = None
    resume: bool = False
    keep_work: bool = False
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise UsageError("--workers must be at least 1")
        if self.max_retries < 0:
            raise UsageError(f"--retries must be 0 or more, got {self.max_retries}")


@dataclass(frozen=True)
class Finished:
    """What a job's ``finish`` wrote: frames, size and coded picture size of the output."""

    frames: int
    bytes: int
    width: int
    height: int


@dataclass(frozen=True)
class JobResult:
    """A finished GOP job: the input, its plan and records (in GOP order), and the work dir."""

    info: VideoInfo
    gops: tuple[GopSpec, ...]
    records: tuple[GopRecord, ...]
    settings: dict[str, Any]
    finished: Finished
    workdir: WorkDir
    phases: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0


class GopJob(Protocol):
    """What one kind of GOP job adds to the loop."""

    label: str
    """Progress bar label."""
    cpus_per_task: int
    """CPUs one task occupies (encoder threads)."""

    def check_tools(self) -> None:
        """Refuse early when an encoder or model the job needs is missing."""

    def settings(self, info: VideoInfo) -> dict[str, Any]:
        """The job's settings for this input (the work-dir key beside the plan options)."""

    def stage_factory(self) -> Callable[[], Callable[[Any], EncodedGop]]:
        """Makes the stage inside each runner actor (pickled to the actor: keep it small)."""

    def task(self, info: VideoInfo, gop: GopSpec, workdir: WorkDir) -> Any:
        """The stage's task for one GOP."""

    def record(self, gop: GopSpec, encoded: EncodedGop, node: str) -> GopRecord:
        """The done record of one GOP (after checking the stage's result)."""

    def finish(
        self, info: VideoInfo, gops: list[GopSpec], records: list[GopRecord], workdir: WorkDir
    ) -> Finished:
        """Join the GOPs (in order) into the output; temp name, then rename."""


def work_root(output: str, work_dir: str | None) -> str:
    """The work directory root: ``work_dir``, else ``.gopflow-work`` next to the output."""
    return work_dir or os.path.join(os.path.dirname(os.path.abspath(output)), ".gopflow-work")


def check_output_writable(output: str) -> None:
    """Refuse an output whose directory is missing or read-only, or that is a directory."""
    directory = os.path.dirname(os.path.abspath(output)) or "."
    if not os.path.isdir(directory):
        raise OutputError(f"output directory does not exist: {directory}")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputError(f"output directory is not writable: {directory}")
    if os.path.isdir(output):
        raise OutputError(f"output is a directory: {output}")


def describe_gop(gop: GopSpec) -> str:
    """``GOP 3 (frames 120-179)``: how errors and logs name a GOP."""
    return f"GOP {gop.index} (frames {gop.start_frame}-{gop.end_frame - 1})"


def make_record(gop: GopSpec, encoded: EncodedGop, node: str, **extra: Any) -> GopRecord:
    """The done record of a GOP whose payload is ``encoded.data``."""
    return GopRecord(
        index=gop.index,
        start_frame=gop.start_frame,
        frames=encoded.frames,
        bytes=len(encoded.data),
        sha256=hashlib.sha256(encoded.data).hexdigest(),
        encode_seconds=round(encoded.encode_seconds, 4),
        node_id=node,
        **extra,
    )


def _say_nothing(message: str) -> None:
    return None


def run_gop_job(
    job: GopJob,
    input_path: str,
    output: str,
    plan: PlanOptions,
    run: RunOptions,
    log: Callable[[str], None] | None = None,
) -> JobResult:
    """Run ``job`` over every GOP of ``input_path`` and let it write ``output``.

    With ``run.resume`` the GOPs an earlier run of the same input and settings finished are
    reused; the caller removes the work dir (``result.workdir``) once it has what it needs.
    """
    say = log or _say_nothing
    started = time.perf_counter()
    phases: dict[str, float] = {}

    def mark(phase: str) -> None:
        phases[phase] = round(time.perf_counter() - started, 3)

    job.check_tools()
    info, stamps = probe_with_timestamps(input_path)
    mark("probed")
    check_output_writable(output)
    if info.vfr:
        say(f"note: variable frame rate input; output is constant {float(info.fps):.3f} fps")
    settings = {**job.settings(info), **plan.to_dict()}
    workdir = WorkDir(work_root(output, run.work_dir), info.path, settings, output=output)
    resumed = workdir.prepare(run.resume)
    saved_plan = workdir.load_plan() if resumed else None
    finished = workdir.finished() if saved_plan is not None else {}
    if saved_plan is not None:
        say(f"resuming: {len(finished)} of {len(saved_plan)} GOPs already done in {workdir.path}")
    records = {index: replace(record, resumed=True) for index, record in finished.items()}
    gops = saved_plan or []
    done: Finished | None = None

    def plan_tasks() -> tuple[list[GopSpec], list[Any]]:
        planned = saved_plan
        if planned is None:
            planned = plan_video(info, plan, stamps)
            workdir.save_plan(info.to_dict(), planned)
        todo = [job.task(info, gop, workdir) for gop in planned if gop.index not in finished]
        return planned, todo

    from tqdm import tqdm

    with tqdm(
        total=info.frame_count,
        initial=sum(r.frames for r in records.values()),
        unit="frame",
        desc=job.label,
        disable=(not run.progress) if run.progress is not None else None,
        dynamic_ncols=True,
    ) as bar:
        if saved_plan is None or len(finished) < len(saved_plan):
            finishing: Future[Finished] | None = None
            # Plan (scene detection runs in an ffmpeg process) while Ray starts up.
            try:
                with ThreadPoolExecutor(max_workers=1, thread_name_prefix="plan") as pool:
                    planning = pool.submit(plan_tasks)
                    with RayRunner(run.ray_address, run.workers) as runner:
                        mark("ray_started")
                        gops, tasks = planning.result()
                        mark("planned")
                        cpus = runner.cluster_cpus()
                        if job.cpus_per_task > cpus:
                            raise UsageError(
                                f"--encoder-threads {job.cpus_per_task} exceeds the cluster's "
                                f"{cpus} CPUs"
                            )
                        slots = max(1, cpus // job.cpus_per_task)
                        results = runner.map_lanes(
                            job.stage_factory(),
                            tasks,
                            describe=lambda task: describe_gop(task.gop),
                            cost=lambda task: task.gop.frame_count,
                            cpus_per_item=job.cpus_per_task,
                            actors=min(run.workers or slots, slots),
                            max_retries=run.max_retries,
                        )
                        # Closed here on any error, so in-flight tasks are cancelled and the
                        # actors stopped while the cluster is still up.
                        with contextlib.closing(results):
                            for task, encoded, node in results:
                                record = job.record(task.gop, encoded, node)
                                workdir.record(record, encoded.data)
                                records[record.index] = record
                                bar.update(encoded.frames)
                        mark("encoded")
                        # Join the GOPs while the cluster shuts down (a local one takes a second
                        # or two to stop): the cluster is not needed for it.
                        ordered = [records[gop.index] for gop in gops]
                        finishing = pool.submit(job.finish, info, gops, ordered, workdir)
                    done = finishing.result()
            except KeyboardInterrupt:
                # A Ctrl-C while Ray shut down let the pool's exit wait for the join already
                # under way. An interrupted job leaves no output, not even one that completed
                # in the meantime: the message says to resume, which re-joins the saved GOPs.
                if finishing is not None and finishing.done() and not finishing.exception():
                    Path(output).unlink(missing_ok=True)
                raise

    ordered = [records[gop.index] for gop in gops]
    if done is None:
        done = job.finish(info, gops, ordered, workdir)
    mark("assembled")
    return JobResult(
        info=info,
        gops=tuple(gops),
        records=tuple(ordered),
        settings=settings,
        finished=done,
        workdir=workdir,
        phases=phases,
        wall_seconds=time.perf_counter() - started,
    )
