"""The resumable work dir: keys, atomic records, checksum-verified resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from gopflow.errors import WorkDirError
from gopflow.pipeline.workdir import WorkDir, atomic_write_bytes
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
    again = WorkDir(str(tmp_path / "w"), source, {"crf": 18})
    assert again.prepare(resume=True) is True
    assert [g.start_frame for g in again.load_plan() or []] == [0, 10]
    assert sorted(again.finished()) == [0]


def test_without_resume_old_state_is_discarded(source: str, tmp_path: Path) -> None:
    work = WorkDir(str(tmp_path / "w"), source, {"crf": 18})
    work.prepare(resume=False)
    work.save_plan({}, [GopSpec(0, 0, 10, 0, True)])
    work.record(_record(0, b"x"), b"x")
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
