"""The resumable work dir: keys, atomic records, checksum-verified resume, one run at a time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gopflow.errors import WorkDirError, WorkDirLockedError
from gopflow.pipeline.workdir import WorkDir, atomic_write_bytes, claimed
from gopflow.types import GopRecord, GopSpec


def _record(index: int, data: bytes) -> GopRecord:
    import hashlib

    return GopRecord(index, index * 10, 10, len(data), hashlib.sha256(data).hexdigest(), 0.5, "n")


@pytest.fixture()
def source(tmp_path: Path) -> str:
    path = tmp_path / "in.mp4"
    path.write_bytes(b"video")
    return str(path)


def test_key_depends_on_every_setting_and_the_input(source: str, tmp_path: Path) -> None:
    base = WorkDir(str(tmp_path / "w"), source, {"crf": 18, "preset": "medium"})
    assert base.key == WorkDir(str(tmp_path / "w"), source, {"preset": "medium", "crf": 18}).key
    assert base.key != WorkDir(str(tmp_path / "w"), source, {"crf": 19, "preset": "medium"}).key
    Path(source).write_bytes(b"other video")
    assert base.key != WorkDir(str(tmp_path / "w"), source, {"crf": 18, "preset": "medium"}).key


def test_finished_gops_survive_and_corrupt_ones_do_not(source: str, tmp_path: Path) -> None:
    work = WorkDir(str(tmp_path / "w"), source, {"crf": 18})
    assert work.prepare(resume=True) is False
    work.save_plan({}, [GopSpec(0, 0, 10, 0, True), GopSpec(1, 10, 10, 512, False)])
    work.record(_record(0, b"segment zero"), b"segment zero")
    work.record(_record(1, b"segment one"), b"segment one")
    Path(work.segment_path(1)).write_bytes(b"segment 0ne")  # bit rot / half-written
    work.release()  # the run ends (a crash drops the lock too)
    again = WorkDir(str(tmp_path / "w"), source, {"crf": 18})
    assert again.prepare(resume=True) is True
    assert [g.start_frame for g in again.load_plan() or []] == [0, 10]
    assert sorted(again.finished()) == [0]


def test_without_resume_old_state_is_discarded(source: str, tmp_path: Path) -> None:
    work = WorkDir(str(tmp_path / "w"), source, {"crf": 18})
    work.prepare(resume=False)
    work.save_plan({}, [GopSpec(0, 0, 10, 0, True)])
    work.record(_record(0, b"x"), b"x")
    work.release()
    fresh = WorkDir(str(tmp_path / "w"), source, {"crf": 18})
    assert fresh.prepare(resume=False) is False
    assert fresh.finished() == {}


def test_plan_of_another_job_is_refused(source: str, tmp_path: Path) -> None:
    work = WorkDir(str(tmp_path / "w"), source, {"crf": 18})
    work.prepare(resume=False)
    work.save_plan({}, [GopSpec(0, 0, 10, 0, True)])
    job = Path(work.path) / "job.json"
    job.write_text(job.read_text().replace(work.key, "0" * 16))
    with pytest.raises(WorkDirError):
        work.load_plan()


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    atomic_write_bytes(str(target), b"abc")
    atomic_write_bytes(str(target), b"defg")
    assert target.read_bytes() == b"defg"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_key_depends_on_the_output(source: str, tmp_path: Path) -> None:
    root = str(tmp_path / "w")
    a = WorkDir(root, source, {"crf": 18}, output=str(tmp_path / "a.mp4"))
    b = WorkDir(root, source, {"crf": 18}, output=str(tmp_path / "b.mp4"))
    again = WorkDir(root, source, {"crf": 18}, output=str(tmp_path / "x" / ".." / "a.mp4"))
    assert a.path != b.path
    assert again.path == a.path


def test_a_held_work_dir_refuses_a_second_run_and_is_not_discarded(
    source: str, tmp_path: Path
) -> None:
    first = WorkDir(str(tmp_path / "w"), source, {"crf": 18})
    first.prepare(resume=False)
    first.save_plan({}, [GopSpec(0, 0, 10, 0, True)])
    first.record(_record(0, b"x"), b"x")
    second = WorkDir(str(tmp_path / "w"), source, {"crf": 18})
    with pytest.raises(WorkDirLockedError, match=f"another gopflow run \\(pid {os.getpid()}\\)"):
        second.prepare(resume=False)
    with pytest.raises(WorkDirLockedError):
        second.remove()
    assert sorted(first.finished()) == [0]  # neither discarded nor deleted
    first.release()
    assert second.prepare(resume=True) is True
    assert sorted(second.finished()) == [0]
    second.remove()
    assert not os.path.exists(second.path)
    assert not os.path.exists(tmp_path / "w")  # the emptied root goes too


def test_the_lock_names_the_other_process_and_dies_with_it(source: str, tmp_path: Path) -> None:
    root = str(tmp_path / "w")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from gopflow.pipeline.workdir import WorkDir; "
         f"w = WorkDir({root!r}, {source!r}, {{'crf': 18}}); w.prepare(False); "
         "print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        work = WorkDir(root, source, {"crf": 18})
        with pytest.raises(WorkDirLockedError, match=f"pid {holder.pid}\\) is using"):
            work.prepare(resume=True)
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs, the kernel drops the lock
        holder.wait()
    assert work.prepare(resume=True) is False  # the killed run never saved a plan
    work.release()


def test_claimed_collects_the_work_dirs_locked_inside(source: str, tmp_path: Path) -> None:
    outside = WorkDir(str(tmp_path / "w"), source, {"crf": 1})
    outside.prepare(resume=False)
    with claimed() as found:
        inside = WorkDir(str(tmp_path / "w"), source, {"crf": 2})
        inside.prepare(resume=False)
    assert found == [inside]
    inside.release()
    outside.release()
