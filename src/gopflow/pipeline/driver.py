"""The job loop every GOP job runs: probe -> plan -> runner -> work dir -> finish.

Data flow::

    input --probe--> VideoInfo --scene cuts + plan, streamed--> GopSpec batches (the whole
          plan goes to job.json in the work dir) --RayRunner.map_groups (bounded window)-->
          the job's stage per GOP (a worker decodes its own frames) --> segment + done record
          per GOP (atomic, resumable) --> GopJob.finish (concat, or a .gflv stream) --> JobResult

What differs between jobs (x264/x265, QRO, learned codecs) is a :class:`GopJob`: its
settings (the work-dir key), its stage and tasks, how it checks a result and how it joins
the GOPs. Planning runs in a thread while Ray starts, and each GOP is handed to the runner as
soon as scene detection has passed its end, so detection overlaps encoding. The driver holds
at most the runner's window of GOP payloads; everything else is on disk in the work dir.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from gopflow.errors import GopflowError, OutputError, UsageError
from gopflow.media.probe import probe_with_timestamps
from gopflow.pipeline.plan import PlanOptions, iter_plan
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


@dataclass(frozen=True)
class GopRequest:
    """One video for the driver: which job writes which output from which input."""

    job: GopJob
    input: str
    output: str
    plan: PlanOptions
    resume: bool = False
    gops: tuple[GopSpec, ...] | None = None
    """A plan made once for several outputs of one input (a ladder's rungs share their GOPs,
    so every rendition has its IDRs at the same frames); None: plan this input here."""


@dataclass(frozen=True)
class JobOutcome:
    """How one request ended: its result, or the one-line error that ended it."""

    index: int
    request: GopRequest
    result: JobResult | None = None
    error: GopflowError | None = None


class _Video:
    """A request being worked on (driver-private, mutable)."""

    def __init__(self, index: int, request: GopRequest) -> None:
        self.index = index
        self.request = request
        self.job = request.job
        self.phases: dict[str, float] = {}
        self.info: VideoInfo | None = None
        self.stamps: list[int | None] = []
        self.settings: dict[str, Any] = {}
        self.workdir: WorkDir | None = None
        self.saved_plan: list[GopSpec] | None = None
        self.gops: list[GopSpec] = []
        self.records: dict[int, GopRecord] = {}
        self.left = 0  # GOPs handed to the runner and not yet stored (main thread)
        self.planned = False  # every task taken by the runner (main thread)
        # Tasks the planner thread has made and the runner has not taken yet.
        self._offered: list[Any] = []
        self._complete = False
        self._ready = threading.Condition()

    def offer(self, tasks: Sequence[Any], complete: bool = False) -> None:
        """Planner side: more tasks, and whether the plan is now complete."""
        with self._ready:
            self._offered.extend(tasks)
            self._complete = self._complete or complete
            self._ready.notify_all()

    def take(self, stop: threading.Event) -> tuple[list[Any], bool]:
        """Runner side: the tasks offered so far (waiting for at least one, unless the plan
        is complete) and whether the plan is complete."""
        with self._ready:
            while not self._offered and not self._complete and not stop.is_set():
                self._ready.wait(0.2)
            tasks, self._offered = self._offered, []
            return tasks, self._complete or stop.is_set()

    @property
    def frames_done(self) -> int:
        return sum(r.frames for r in self.records.values())


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
    request = GopRequest(job, input_path, output, plan, run.resume)
    with contextlib.closing(run_gop_jobs([request], run, log, label=job.label)) as outcomes:
        for outcome in outcomes:
            if outcome.error is not None:
                raise outcome.error
            assert outcome.result is not None
            return outcome.result
    raise AssertionError("the driver ended without an outcome")


def run_gop_jobs(
    requests: Sequence[GopRequest],
    run: RunOptions,
    log: Callable[[str], None] | None = None,
    label: str = "",
    on_gop: Callable[[int, GopRecord], None] | None = None,
) -> Iterator[JobOutcome]:
    """Run many videos' GOPs through one cluster and one bounded window; yield one
    :class:`JobOutcome` per request as it ends (in the order they end).

    The first video is probed before Ray starts (a bad input fails at once) and planned
    while it starts; later videos are probed and planned in the background, a video ahead,
    and the runner pulls each one's GOPs when a worker runs out of work, so the next video
    starts encoding while the last one's GOPs finish. A video is joined (``job.finish``) as
    soon as its last GOP lands, beside the encoding of the others. A video that fails (bad
    input, a GOP failed after its retries, a join that fails) ends with its error; the
    others go on. Every request's job must use the same stage and CPUs per task.
    ``on_gop(index, record)`` is told of each GOP stored in request ``index``'s work dir.
    """
    say = log or _say_nothing
    started = time.perf_counter()
    videos = [_Video(index, request) for index, request in enumerate(requests)]
    ended: deque[JobOutcome] = deque()  # appended by the planner and finisher threads
    failed: set[int] = set()

    def mark(video: _Video, phase: str) -> None:
        video.phases[phase] = round(time.perf_counter() - started, 3)

    def end(video: _Video, error: GopflowError) -> None:
        failed.add(video.index)
        if video.workdir is not None:
            if not error.resumable:
                with contextlib.suppress(OSError, GopflowError):
                    video.workdir.remove()
            video.workdir.release()
        ended.append(JobOutcome(video.index, video.request, error=error))

    def prepare(video: _Video) -> bool:
        """Probe, check and lock one video's work dir; False (and an outcome) on failure."""
        request = video.request
        try:
            request.job.check_tools()
            info, stamps = probe_with_timestamps(request.input)
            mark(video, "probed")
            check_output_writable(request.output)
            if info.vfr:
                say(
                    f"note: variable frame rate input {request.input}; output is constant "
                    f"{float(info.fps):.3f} fps"
                )
            video.info, video.stamps = info, stamps
            video.settings = {**request.job.settings(info), **request.plan.to_dict()}
            workdir = WorkDir(
                work_root(request.output, run.work_dir),
                info.path,
                video.settings,
                output=request.output,
            )
            video.workdir = workdir
            resumed = workdir.prepare(request.resume)
            video.saved_plan = workdir.load_plan() if resumed else None
            finished = workdir.finished() if video.saved_plan is not None else {}
            if video.saved_plan is not None:
                say(
                    f"resuming: {len(finished)} of {len(video.saved_plan)} GOPs already done "
                    f"in {workdir.path}"
                )
            video.records = {i: replace(r, resumed=True) for i, r in finished.items()}
        except GopflowError as exc:
            end(video, exc)
            return False
        return True

    def plan(video: _Video) -> None:
        """Plan one prepared video's GOPs, offering their tasks as they are planned; the
        plan is saved once complete (a run killed before that plans again on resume)."""
        info, workdir = video.info, video.workdir
        assert info is not None and workdir is not None

        def tasks(gops: Sequence[GopSpec]) -> list[Any]:
            return [video.job.task(info, g, workdir) for g in gops if g.index not in video.records]

        try:
            whole = video.saved_plan
            if whole is None and video.request.gops is not None:
                whole = list(video.request.gops)
                workdir.save_plan(info.to_dict(), whole)
            if whole is not None:
                video.gops = whole
                video.offer(tasks(whole))
            else:
                with contextlib.closing(iter_plan(info, video.request.plan, video.stamps)) as plans:
                    for batch in plans:
                        if stop.is_set():
                            return
                        video.gops.extend(batch)
                        video.offer(tasks(batch))
                workdir.save_plan(info.to_dict(), video.gops)
            mark(video, "planned")
        except GopflowError as exc:
            end(video, exc)
        finally:
            video.offer([], complete=True)

    # The first video that can be probed is checked before Ray starts.
    ready: list[_Video] = []
    for video in videos:
        if prepare(video):
            ready.append(video)
            break
    if not ready:
        yield from ended
        return
    first = ready[0]
    later = videos[first.index + 1 :]
    complete = first.saved_plan is not None and len(first.records) == len(first.saved_plan)
    need_cluster = bool(later) or not complete

    from tqdm import tqdm

    bar = tqdm(
        total=first.info.frame_count if first.info else None,
        initial=first.frames_done,
        unit="frame",
        desc=label or first.job.label,
        disable=(not run.progress) if run.progress is not None else None,
        dynamic_ncols=True,
    )
    stop = threading.Event()
    planned: queue.Queue[_Video | BaseException | None] = queue.Queue(maxsize=1)

    def hand_over(item: _Video | BaseException | None) -> None:
        while not stop.is_set():
            try:
                planned.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def planner() -> None:
        """Plan the first video, then probe and plan the later ones, one ahead. A video is
        handed over before it is planned: its GOPs are offered as they are planned."""
        try:
            hand_over(first)
            plan(first)
            for video in later:
                if stop.is_set():
                    return
                if prepare(video):
                    assert video.info is not None
                    bar.total = (bar.total or 0) + video.info.frame_count
                    bar.update(video.frames_done)
                    hand_over(video)
                    plan(video)
        except BaseException as exc:  # handed to the main thread, raised there
            hand_over(exc)
            return
        hand_over(None)

    by_group: list[_Video] = []
    finishing: dict[Future[Finished], _Video] = {}
    reported: set[int] = set()
    settled: list[int] = []

    def finish(video: _Video, pool: ThreadPoolExecutor) -> None:
        assert video.info is not None and video.workdir is not None
        ordered = [video.records[gop.index] for gop in video.gops]
        mark(video, "encoded")
        finishing[pool.submit(video.job.finish, video.info, video.gops, ordered, video.workdir)] = (
            video
        )

    def collect(wait: bool) -> Iterator[JobOutcome]:
        """Outcomes of the joins that are done (all of them with ``wait``), then the rest."""
        for future in list(finishing):
            if not wait and not future.done():
                continue
            video = finishing.pop(future)
            try:
                done = future.result()
            except GopflowError as exc:
                end(video, exc)
                continue
            mark(video, "assembled")
            assert video.info is not None and video.workdir is not None
            reported.add(video.index)
            ended.append(
                JobOutcome(
                    video.index,
                    video.request,
                    result=JobResult(
                        info=video.info,
                        gops=tuple(video.gops),
                        records=tuple(video.records[gop.index] for gop in video.gops),
                        settings=video.settings,
                        finished=done,
                        workdir=video.workdir,
                        phases=video.phases,
                        wall_seconds=time.perf_counter() - started,
                    ),
                )
            )
        while ended:
            outcome = ended.popleft()
            settled.append(outcome.index)
            if len(videos) > 1:
                bar.set_postfix_str(f"{len(settled)}/{len(videos)} files")
            yield outcome

    def planned_video() -> _Video | None:
        item = planned.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def groups(pool: ThreadPoolExecutor) -> Iterator[list[Any]]:
        """Each video's tasks in order, a batch at a time as they are planned; a video
        whose plan is complete and whose GOPs are all stored is joined."""
        while (video := planned_video()) is not None:
            while True:
                tasks, complete = video.take(stop)
                if video.index in failed:
                    break
                if tasks:
                    video.left += len(tasks)
                    by_group.append(video)
                    yield tasks
                if complete:
                    video.planned = True
                    if video.left == 0:
                        finish(video, pool)
                    break

    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="plan")
    try:
        with bar:
            try:
                pool.submit(planner)
                if not need_cluster:
                    video = planned_video()
                    if video is not None:
                        while not video.take(stop)[1]:
                            pass
                        if video.index not in failed:
                            finish(video, pool)
                else:
                    with RayRunner(run.ray_address, run.workers) as runner:
                        mark(first, "ray_started")
                        cpus = runner.cluster_cpus()
                        per_task = first.job.cpus_per_task
                        if per_task > cpus:
                            raise UsageError(
                                f"--encoder-threads {per_task} exceeds the cluster's {cpus} CPUs"
                            )
                        slots = max(1, cpus // per_task)
                        results = runner.map_groups(
                            first.job.stage_factory(),
                            groups(pool),
                            describe=lambda task: describe_gop(task.gop),
                            cost=lambda task: task.gop.frame_count,
                            cpus_per_item=per_task,
                            actors=min(run.workers or slots, slots),
                            max_retries=run.max_retries,
                            dropped=lambda group: by_group[group].index in failed,
                        )
                        # Closed here on any error, so in-flight tasks are cancelled and the
                        # actors stopped while the cluster is still up.
                        with contextlib.closing(results):
                            for outcome in results:
                                video = by_group[outcome.group]
                                if video.index in failed:
                                    continue
                                if outcome.error is not None:
                                    end(video, outcome.error)
                                else:
                                    encoded: EncodedGop = outcome.value
                                    task = outcome.item
                                    try:
                                        record = video.job.record(
                                            task.gop, encoded, outcome.node_id
                                        )
                                    except GopflowError as exc:
                                        end(video, exc)
                                        continue
                                    assert video.workdir is not None
                                    video.workdir.record(record, encoded.data)
                                    video.records[record.index] = record
                                    video.left -= 1
                                    bar.update(encoded.frames)
                                    if on_gop is not None:
                                        on_gop(video.index, record)
                                    if video.left == 0 and video.planned:
                                        finish(video, pool)
                                yield from collect(wait=False)
                        # The last joins run while the cluster shuts down (a local one takes a
                        # second or two to stop): they do not need it.
                yield from collect(wait=True)
            finally:
                stop.set()
                pool.shutdown(wait=True)
    except KeyboardInterrupt:
        # The pool's shutdown waited for the joins under way. An interrupted run leaves no
        # output it has not reported, not even one completed in the meantime: the message
        # says to resume, which re-joins the saved GOPs.
        for future, video in finishing.items():
            if future.done() and not future.exception() and video.index not in reported:
                Path(video.request.output).unlink(missing_ok=True)
        raise
