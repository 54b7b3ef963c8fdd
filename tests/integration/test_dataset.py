"""``gopflow dataset``: compress on Ray into a GOP-indexed archive, read exact frames by
decoding only the GOPs a clip needs, append without redoing, refuse mixed settings,
verify catches damage, feed PyTorch and Ray Data."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import make_clip


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dataset") / "clips"
    root.mkdir()
    # Lossless sources, coded losslessly (CRF 0): the archive's frames must equal them.
    make_clip(root / "street.mkv", "-f", "lavfi", "-i",
              "testsrc2=size=96x64:rate=25:duration=3", "-pix_fmt", "yuv420p", "-c:v", "ffv1")
    make_clip(root / "field.mkv", "-f", "lavfi", "-i",
              "mandelbrot=size=64x48:rate=25", "-t", "2", "-pix_fmt", "yuv420p", "-c:v", "ffv1")
    return root


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gopflow", "dataset", *args],
                          capture_output=True, text=True, timeout=600)


def _compress(*args: str) -> subprocess.CompletedProcess[str]:
    return _cli("compress", *args, "--codec", "x264", "--crf", "0", "--preset", "ultrafast",
                "--no-progress")


def _source_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def archive(clips: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("archive") / "clips.gfd"
    done = _compress(str(clips / "street.mkv"), "-o", str(out))
    assert done.returncode == 0, done.stderr
    return out


def test_reads_exact_frames_decoding_only_the_covering_gops(
    archive: Path, clips: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gopflow
    import gopflow.dataset.archive as archive_module

    ds = gopflow.dataset.open(str(archive))
    assert ds.videos == ["street"] and ds.frames("street") == 75
    assert all(r.quality == float("inf") for r in ds.rows)  # CRF 0: measured exact
    gops = [r for r in ds.rows if r.video_id == "street"]
    assert len(gops) == 3 and all(r.frame_count == 25 for r in gops)  # 1 s GOPs
    decoded: list[int] = []
    real = archive_module.decode_gop
    monkeypatch.setattr(archive_module, "decode_gop",
                        lambda data, *a: decoded.append(len(data)) or real(data, *a))
    clip = ds.read("street", 20, 10)  # frames 20-29: GOPs 0 and 1
    assert clip.shape == (10, 64, 96, 3) and clip.dtype == np.uint8
    assert len(decoded) == 2
    np.testing.assert_array_equal(clip, _source_frames(clips / "street.mkv")[20:30])
    with pytest.raises(gopflow.GopflowError, match="outside"):
        ds.read("street", 70, 10)


def test_append_skips_known_videos_and_refuses_other_settings(
    archive: Path, clips: Path
) -> None:
    before = json.loads((archive / "card.json").read_text())
    again = _compress(str(clips), "-o", str(archive))  # street again, plus field
    assert again.returncode == 0, again.stderr
    after = json.loads((archive / "card.json").read_text())
    assert after["videos"] == 2 and len(after["parts"]) == len(before["parts"]) + 1
    assert after["gops"] == before["gops"] + 2  # only field's 2 GOPs were coded
    mixed = _cli("compress", str(clips), "-o", str(archive), "--crf", "30", "--no-progress")
    assert mixed.returncode == 2 and "other settings" in mixed.stderr
    assert len(mixed.stderr.strip().splitlines()) == 1
    assert json.loads((archive / "card.json").read_text()) == after
    info = _cli("info", str(archive))
    assert info.returncode == 0 and info.stdout.startswith("2 videos, 5 GOPs, 125 frames")


def test_read_command_and_verify_catch_damage(archive: Path, tmp_path: Path) -> None:
    clip = tmp_path / "clip.y4m"
    done = _cli("read", str(archive), "--video", "street", "--frames", "5:15", "-o", str(clip))
    assert done.returncode == 0, done.stderr
    assert clip.read_bytes().startswith(b"YUV4MPEG2 W96 H64")
    assert _cli("verify", str(archive)).returncode == 0
    copy = tmp_path / "damaged.gfd"
    subprocess.run(["cp", "-r", str(archive), str(copy)], check=True)
    shard = next((copy / "shards").glob("*.bin"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    bad = _cli("verify", str(copy))
    assert bad.returncode != 0 and "damaged" in bad.stderr and "Traceback" not in bad.stderr
    partial = tmp_path / "partial.gfd"
    (partial / "shards").mkdir(parents=True)
    missing = _cli("info", str(partial))
    assert missing.returncode != 0 and "not a complete gopflow dataset" in missing.stderr


def test_torch_and_ray_data_clips(archive: Path) -> None:
    import torch

    import gopflow

    ds = gopflow.dataset.open(str(archive))
    loader = torch.utils.data.DataLoader(ds.to_torch(clip_len=8, stride=8), batch_size=4)
    batch = next(iter(loader))
    first = ds.videos[0]  # its clips come first; at least 4 of 8 frames each
    height, width = ds.read(first, 0, 1).shape[1:3]
    assert batch.shape == (4, 8, height, width, 3)
    np.testing.assert_array_equal(batch[1].numpy(), ds.read(first, 8, 8))
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        rows = ds.to_ray(clip_len=16, stride=16).take(2)
    finally:
        ray.shutdown()
    assert {(r["video"], r["start"]) for r in rows} <= {(v, s) for v, s in ds.clips(16, 16)}
    assert np.asarray(rows[0]["frames"]).shape[0] == 16


def test_the_same_inputs_give_the_same_archive(archive: Path, clips: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.gfd"
    done = _compress(str(clips / "street.mkv"), "-o", str(again))
    assert done.returncode == 0, done.stderr
    first = json.loads((archive / "card.json").read_text())
    part = first["parts"][0]
    assert (again / part).read_bytes() == (archive / part).read_bytes()
    for shard in (archive / "shards").glob("shard-00000-*.bin"):
        assert (again / "shards" / shard.name).read_bytes() == shard.read_bytes()


def test_dataloader_with_two_workers(archive: Path) -> None:
    import torch

    import gopflow

    ds = gopflow.dataset.open(str(archive))
    clips = ds.to_torch(clip_len=5, stride=5)
    loader = torch.utils.data.DataLoader(clips, batch_size=1, num_workers=2)
    got = [batch[0].numpy() for batch in loader]
    assert len(got) == len(clips)
    for (video, start), clip in zip(ds.clips(5, 5), got, strict=True):
        np.testing.assert_array_equal(clip, ds.read(video, start, 5))


def test_killed_compression_resumes_to_the_same_archive(clips: Path, tmp_path: Path) -> None:
    import glob
    import os
    import signal
    import time

    from integration.helpers import slow_ffmpeg

    straight = tmp_path / "straight.gfd"
    assert _compress(str(clips), "-o", str(straight), "--gop-seconds", "0.4").returncode == 0
    out = tmp_path / "killed.gfd"
    killed = subprocess.Popen(
        [sys.executable, "-m", "gopflow", "dataset", "compress", str(clips), "-o", str(out),
         "--codec", "x264", "--crf", "0", "--preset", "ultrafast", "--no-progress",
         "--gop-seconds", "0.4", "--workers", "1"],
        env={**os.environ, "GOPFLOW_FFMPEG": str(slow_ffmpeg(tmp_path, 0.7))},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while len(glob.glob(str(out / ".gopflow-work" / "*" / "done" / "gop_*.json"))) < 4:
        assert killed.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert not (out / "card.json").exists()  # not mistaken for an archive
    resumed = _compress(str(clips), "-o", str(out), "--gop-seconds", "0.4", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "GOPs already done" in resumed.stderr  # finished GOPs reused, not coded again
    files = sorted(p.relative_to(straight) for p in straight.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    for name in files:
        assert (out / name).read_bytes() == (straight / name).read_bytes(), name


def _luma_psnr(source: np.ndarray, decoded: np.ndarray) -> float:
    diff = source.astype(np.float64) / 255 - decoded.astype(np.float64) / 255
    return float(10 * np.log10(1 / np.mean(diff * diff)))


def test_ffv1_archive_is_lossless_and_quality_is_measured(tmp_path: Path) -> None:
    """FFV1 payloads on a real clip gopflow has never seen (H.264 with B-frames): every
    frame a key frame; random clips (decoded from their first frame inside the GOP) equal
    PyAV's decode of the source exactly, every GOP's PSNR-Y is inf; a lossy
    x264 archive's quality column is the PSNR-Y of each decoded payload against the source."""
    import random

    import gopflow
    from conftest import media

    source = tmp_path / "traffic.mp4"
    make_clip(source, "-i", media("car_traffic_768x432.mp4"), "-t", "3", "-vf", "crop=320:176",
              "-c:v", "libx264", "-preset", "ultrafast", "-bf", "2", "-an")
    webcam = tmp_path / "webcam.mkv"  # full range (yuvj420p): the range must survive
    make_clip(webcam, "-i", media("asl_again_640x480.mkv"), "-frames:v", "40", "-c", "copy")
    out = tmp_path / "lossless.gfd"
    done = _cli("compress", str(source), str(webcam), "-o", str(out), "--codec", "ffv1",
                "--gop-seconds", "0.5", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "ffv1 lossless" in done.stderr
    ds = gopflow.dataset.open(str(out))
    frames = _source_frames(source)
    assert ds.frames("traffic") == len(frames) and len(ds.rows) > 4
    assert all(r.codec == "ffv1" and r.quality == float("inf") for r in ds.rows)
    with av.open(io.BytesIO(ds.payload(ds.rows[1]))) as container:
        # Every frame a key frame: a read starts at its first frame inside the GOP.
        assert all(p.is_keyframe for p in container.demux(video=0) if p.size)
    pick = random.Random(30)
    for _ in range(6):
        start = pick.randrange(0, len(frames) - 16)
        np.testing.assert_array_equal(ds.read("traffic", start, 16), frames[start:start + 16])
    np.testing.assert_array_equal(ds.read("webcam", 0, 40), _source_frames(webcam))
    assert _cli("verify", str(out)).returncode == 0
    info = _cli("info", str(out))
    assert "traffic: " in info.stdout and "lossless" in info.stdout

    lossy = tmp_path / "lossy.gfd"
    done = _cli("compress", str(source), "-o", str(lossy), "--codec", "x264", "--crf", "30",
                "--preset", "ultrafast", "--gop-seconds", "0.5", "--no-progress")
    assert done.returncode == 0, done.stderr
    ds = gopflow.dataset.open(str(lossy))
    with av.open(str(source)) as container:
        lumas = [f.to_ndarray(format="yuv420p")[:176] for f in container.decode(video=0)]
    for row in ds.rows[:3]:  # traffic's GOPs
        with av.open(io.BytesIO(ds.payload(row))) as container:
            decoded = [f.to_ndarray(format="yuv420p")[:176] for f in container.decode(video=0)]
        reference = lumas[row.first_frame:row.first_frame + row.frame_count]
        expected = _luma_psnr(np.stack(reference), np.stack(decoded))
        assert row.quality is not None and 25 < row.quality < 60
        assert abs(row.quality - expected) < 1e-3
    info = _cli("info", str(lossy))
    assert "PSNR-Y" in info.stdout and "worst GOP" in info.stdout


def test_ffv1_is_refused_outside_a_dataset(clips: Path, tmp_path: Path) -> None:
    import gopflow

    cli = subprocess.run([sys.executable, "-m", "gopflow", "transcode", str(clips / "street.mkv"),
                          "-o", str(tmp_path / "x.mkv"), "--codec", "ffv1"],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and len(cli.stderr.strip().splitlines()) == 1
    with pytest.raises(gopflow.GopflowError, match="only for gopflow dataset"):
        gopflow.transcode(str(clips / "street.mkv"), str(tmp_path / "x.mkv"), codec="ffv1")
    crf = _cli("compress", str(clips), "-o", str(tmp_path / "y.gfd"), "--codec", "ffv1",
               "--crf", "10")
    assert crf.returncode == 2 and "lossless" in crf.stderr
    assert len(crf.stderr.strip().splitlines()) == 1


def test_to_ray_streams_clips_on_two_nodes(archive: Path) -> None:
    """``to_ray`` is a datasource: its read tasks run on both nodes of a two-node cluster
    (two ``ray start`` nodes on this machine), and the clips equal ``read()``'s."""
    import ray

    import gopflow
    from integration.helpers import ray_cluster

    ds = gopflow.dataset.open(str(archive))
    with ray_cluster(nodes=2) as (address, _):
        ray.init(address=address, log_to_driver=False)
        try:
            clips = ds.to_ray(clip_len=8, stride=4)

            def node(row: dict) -> dict:  # fused with the read: the node that read the clip
                return {**row, "node": ray.get_runtime_context().get_node_id()}

            tagged = clips.map(node)
            rows = list(tagged.iter_rows())
            stats = tagged.stats()
        finally:
            ray.shutdown()
    assert "ReadGopflowClips" in stats, stats  # a datasource's read tasks, fused with the map
    expected = ds.clips(8, 4)
    assert sorted((r["video"], r["start"]) for r in rows) == sorted(expected)
    for row in rows:
        np.testing.assert_array_equal(np.asarray(row["frames"]),
                                      ds.read(row["video"], int(row["start"]), 8))
    assert len({r["node"] for r in rows}) == 2, "every clip was read on one node"


def test_learned_dvc_archive_reads_the_encoders_reconstruction(tmp_path: Path) -> None:
    """``--codec dvc``: each GOP's payload is its .gflv units, byte for byte those of a
    ``gopflow transcode --codec dvc`` of the same clip at the same settings (another
    process: the coding is deterministic); a read in this process of a clip spanning both
    GOPs is the encoder's reconstruction (the transcode's per-GOP ``recon_sha256``); the
    quality column is the PSNR-Y of that reconstruction; verify names a flipped byte and
    read refuses it with one line. Tiny (64x64, 12 frames, two 6-frame GOPs): DVC's RDO
    encoder runs at a few frames per second on CPU."""
    import torch

    import gopflow
    from gopflow.codecs.learned.bitstream import read_header, read_units
    from gopflow.jobs.dataset import LUMA_WEIGHTS
    from gopflow.pipeline.stages import frames_digest

    clip = tmp_path / "tiny.mkv"
    make_clip(clip, "-f", "lavfi", "-i", "testsrc2=size=64x64:rate=12:duration=1",
              "-pix_fmt", "yuv420p", "-c:v", "ffv1")
    same = ("--quality", "3", "--gop-seconds", "0.5", "--min-gop-seconds", "0.25",
            "--workers", "1", "--no-progress")
    out = tmp_path / "tiny.gfd"
    done = _cli("compress", str(clip), "-o", str(out), "--codec", "dvc", *same)
    assert done.returncode == 0, done.stderr
    assert "dvc quality 3" in done.stderr
    stream, report = tmp_path / "tiny.gflv", tmp_path / "report.json"
    coded = subprocess.run(
        [sys.executable, "-m", "gopflow", "transcode", str(clip), "-o", str(stream),
         "--codec", "dvc", "--report", str(report), *same],
        capture_output=True, text=True, timeout=600)
    assert coded.returncode == 0, coded.stderr

    ds = gopflow.dataset.open(str(out))
    assert ds.card["version"] == 2 and ds.card["settings"]["learned"]["quality"] == 3
    assert [(r.codec, r.first_frame, r.frame_count) for r in ds.rows] == [
        ("dvc", 0, 6), ("dvc", 6, 6)]
    with open(stream, "rb") as handle:
        units = list(read_units(handle, read_header(handle)))
    gops = json.loads(report.read_text())["gops"]
    assert [(g["start_frame"], g["frames"]) for g in gops] == [(0, 6), (6, 6)]
    clip_frames = ds.read("tiny", 2, 8)  # frames 2-9: both GOPs, from inside the first
    assert clip_frames.shape == (8, 64, 64, 3) and clip_frames.dtype == np.uint8
    whole = ds.read("tiny", 0, 12)
    np.testing.assert_array_equal(clip_frames, whole[2:10])
    # From inside the second GOP (from a refresh unit where the encoder chose one there).
    np.testing.assert_array_equal(ds.read("tiny", 9, 3), whole[9:12])
    source = _source_frames(clip).astype(np.int64) @ np.array(LUMA_WEIGHTS)
    for row, gop in zip(ds.rows, gops, strict=True):
        part = slice(row.first_frame, row.first_frame + row.frame_count)
        assert ds.payload(row) == b"".join(u.to_bytes() for u in units[part])
        assert frames_digest(whole[part]) == gop["details"]["recon_sha256"]
        diff = (source[part] - whole[part].astype(np.int64) @ np.array(LUMA_WEIGHTS)) / 256
        psnr = 10 * np.log10(255.0**2 / np.mean(diff * diff))
        assert row.quality is not None and abs(row.quality - psnr) < 1e-3
    loader = torch.utils.data.DataLoader(ds.to_torch(clip_len=4, stride=4), batch_size=3)
    np.testing.assert_array_equal(next(iter(loader)).numpy(), whole.reshape(3, 4, 64, 64, 3))

    assert _cli("verify", str(out)).returncode == 0
    damaged = tmp_path / "damaged.gfd"
    subprocess.run(["cp", "-r", str(out), str(damaged)], check=True)
    second = ds.rows[1]
    shard = damaged / second.shard
    data = bytearray(shard.read_bytes())
    data[second.offset + second.length // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    bad = _cli("verify", str(damaged))
    assert bad.returncode != 0 and "tiny GOP 1:" in bad.stderr and "tiny GOP 0" not in bad.stderr
    assert "Traceback" not in bad.stderr
    refused = _cli("read", str(damaged), "--video", "tiny", "--frames", "4:8", "-o",
                   str(tmp_path / "x.y4m"))
    assert refused.returncode != 0 and "GOP 1 of tiny is damaged" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    wrong = _cli("compress", str(clip), "-o", str(tmp_path / "w.gfd"), "--codec", "dvc",
                 "--crf", "20")
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1
