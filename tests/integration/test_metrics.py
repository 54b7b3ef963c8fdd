"""gopflow's quality metrics against ffmpeg's own filters, on a real clip.

Clips (made here, in a temporary directory, from ../shared/media; nothing is copied into the
repository): ``ref.mkv`` = the first 24 frames of Foreman CIF (352x288) in lossless FFV1;
``dist.mp4`` = ref through libx264 at CRF 36; ``small.mp4`` = ref scaled to 176x144 and
encoded; ``short.mp4`` = the first 20 frames encoded; ``ref_crop.mkv`` = ref cropped to
352x286, so ``dist.mp4`` is it plus two rows of "padding".

How agreement is computed:
- PSNR: ffmpeg's ``psnr`` filter on the same pair (both inputs ``setpts=PTS-STARTPTS``).
  Its summary ``psnr_y`` is the PSNR of the mean MSE, not the mean of per-frame PSNRs, so
  the per-frame values are read instead: from its ``stats_file`` (2 decimals; the per-video
  means must agree within 0.05 dB) and from the frame metadata it attaches, printed by the
  ``metadata`` filter with 6 decimals (each frame must agree within 1e-4 dB).
- SSIM: ffmpeg's ``ssim`` filter's per-frame ``Y`` (6 decimals): mean within 0.002, each
  frame within 1e-5 (gopflow reimplements ffmpeg's 8x8/step-4 SSIM exactly).
- VMAF: ffmpeg's libvmaf run directly, one plain command per model, its JSON log read here:
  each frame within 1e-6, and gopflow's pooled mean/harmonic mean against libvmaf's own.
- MS-SSIM: frames decoded by the ffmpeg binary (not PyAV) fed to pytorch_msssim directly.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gopflow.errors import (
    FrameCountError,
    GopflowError,
    MetricError,
    OutputError,
    ToolMissingError,
    UsageError,
)
from gopflow.media.ffmpeg import find_ffmpeg
from gopflow.quality.measure import measure
from gopflow.quality.metrics import compute_metrics, psnr_y
from gopflow.quality.vmaf import vmaf_scores

MEDIA = Path(__file__).resolve().parents[2].parent / "shared" / "media"
FOREMAN = MEDIA / "foreman_cif_352x288.264"
FRAMES = 24
WIDTH, HEIGHT = 352, 288

pytestmark = pytest.mark.skipif(
    not FOREMAN.is_file(), reason=f"test clip not found: {FOREMAN} (../shared/media is absent)"
)


def _run(tool: str, *args: str, cwd: Path) -> None:
    subprocess.run(
        [tool, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
        check=True, cwd=cwd,
    )


@pytest.fixture(scope="module")
def ffmpeg() -> str:
    try:
        tool = find_ffmpeg()
        tool.require(encoders=["libx264", "ffv1"], filters=["libvmaf", "psnr", "ssim"])
    except ToolMissingError as exc:
        pytest.skip(f"ffmpeg cannot make or score the test clips: {exc}")
    return tool.path


@pytest.fixture(scope="module")
def clips(ffmpeg: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    work = tmp_path_factory.mktemp("metrics")
    x264 = ["-c:v", "libx264", "-preset", "veryfast", "-threads", "1", "-pix_fmt", "yuv420p"]
    _run(ffmpeg, "-i", str(FOREMAN), "-frames:v", str(FRAMES), "-c:v", "ffv1", "ref.mkv", cwd=work)
    _run(ffmpeg, "-i", "ref.mkv", *x264, "-crf", "36", "dist.mp4", cwd=work)
    _run(ffmpeg, "-i", "ref.mkv", "-vf", "scale=176:144", *x264, "-crf", "30", "small.mp4",
         cwd=work)
    _run(ffmpeg, "-i", "ref.mkv", "-frames:v", "20", *x264, "-crf", "36", "short.mp4", cwd=work)
    _run(ffmpeg, "-i", "ref.mkv", "-vf", f"crop={WIDTH}:{HEIGHT - 2}:0:0", "-c:v", "ffv1",
         "ref_crop.mkv", cwd=work)
    names = ("ref.mkv", "dist.mp4", "small.mp4", "short.mp4", "ref_crop.mkv")
    return {name.split(".")[0]: str(work / name) for name in names}


@pytest.fixture(scope="module")
def scores(clips: dict[str, str]):
    return compute_metrics(clips["ref"], clips["dist"], ["psnr", "ssim"], threads=2)


def ffmpeg_per_frame(
    ffmpeg: str, distorted: str, reference: str, filter_: str, dist_chain: str = ""
) -> list[dict[str, float]]:
    """Per-frame metadata (``lavfi.*`` keys) an ffmpeg two-input filter attaches."""
    work = Path(distorted).parent
    chain = f",{dist_chain}" if dist_chain else ""
    graph = (
        f"[0:0]setpts=PTS-STARTPTS{chain}[d];[1:0]setpts=PTS-STARTPTS[r];"
        f"[d][r]{filter_},metadata=mode=print:file=meta.txt"
    )
    _run(ffmpeg, "-i", distorted, "-i", reference, "-filter_complex", graph, "-f", "null", "-",
         cwd=work)
    frames: list[dict[str, float]] = []
    for line in (work / "meta.txt").read_text().splitlines():
        if line.startswith("frame:"):
            frames.append({})
        elif "=" in line:
            key, value = line.split("=", 1)
            frames[-1][key] = float(value)
    return frames


def direct_libvmaf(
    ffmpeg: str, distorted: str, reference: str, model: str, dist_chain: str = ""
) -> dict:
    """libvmaf through ffmpeg, written out plainly: distorted first, reference second."""
    work = Path(distorted).parent
    dist = f"[0:v]{dist_chain}[d];[d]" if dist_chain else "[0:v]"
    graph = f"{dist}[1:v]libvmaf=model=version={model}:log_fmt=json:log_path=direct.json"
    _run(ffmpeg, "-i", distorted, "-i", reference, "-lavfi", graph, "-f", "null", "-", cwd=work)
    return json.loads((work / "direct.json").read_text())


def test_psnr_agrees_with_ffmpeg_psnr_filter(ffmpeg, clips, scores):
    work = Path(clips["dist"]).parent
    meta = ffmpeg_per_frame(ffmpeg, clips["dist"], clips["ref"], "psnr=stats_file=psnr.log")
    stats = [
        dict(item.split(":") for item in line.split())
        for line in (work / "psnr.log").read_text().splitlines()
    ]
    assert scores.frames == len(meta) == len(stats) == FRAMES
    assert scores.resize == "none"
    ours = {p: np.array(scores[f"psnr_{p}"]) for p in "yuv"}
    for plane in "yuv":
        theirs = np.array([m[f"lavfi.psnr.psnr.{plane}"] for m in meta])
        assert np.max(np.abs(ours[plane] - theirs)) < 1e-4
    stats_y = np.array([float(s["psnr_y"]) for s in stats])
    assert abs(ours["y"].mean() - stats_y.mean()) < 0.05
    yuv = (6 * ours["y"] + ours["u"] + ours["v"]) / 8
    assert np.allclose(scores["psnr_yuv"], yuv)
    assert scores.summary()["psnr_y"].mean == pytest.approx(ours["y"].mean())


def test_ssim_agrees_with_ffmpeg_ssim_filter(ffmpeg, clips, scores):
    meta = ffmpeg_per_frame(ffmpeg, clips["dist"], clips["ref"], "ssim")
    theirs = np.array([m["lavfi.ssim.Y"] for m in meta])
    ours = np.array(scores["ssim_y"])
    assert len(theirs) == FRAMES
    assert np.max(np.abs(ours - theirs)) < 1e-5
    assert abs(ours.mean() - theirs.mean()) < 0.002


def test_psnr_y_keeps_its_interface(clips, scores):
    summary = psnr_y(clips["ref"], clips["dist"])
    assert summary.frames == FRAMES
    assert summary.per_frame_y == scores["psnr_y"]
    assert summary.mean_y == pytest.approx(np.mean(scores["psnr_y"]))
    assert summary.min_y == min(scores["psnr_y"])


def test_identical_inputs_score_perfectly(clips):
    same = compute_metrics(clips["ref"], clips["ref"], ["psnr_y", "ssim"])
    assert set(same["psnr_y"]) == {100.0}
    assert np.allclose(same["ssim_y"], 1.0)


def test_padded_distorted_is_cropped(ffmpeg, clips):
    cropped = compute_metrics(clips["ref_crop"], clips["dist"], ["psnr_y", "ssim"])
    assert cropped.resize == "crop"
    assert (cropped.width, cropped.height) == (WIDTH, HEIGHT - 2)
    assert (cropped.distorted_width, cropped.distorted_height) == (WIDTH, HEIGHT)
    crop = f"crop={WIDTH}:{HEIGHT - 2}:0:0"
    psnr = ffmpeg_per_frame(ffmpeg, clips["dist"], clips["ref_crop"], "psnr", crop)
    ssim = ffmpeg_per_frame(ffmpeg, clips["dist"], clips["ref_crop"], "ssim", crop)
    assert np.max(np.abs(np.array(cropped["psnr_y"]) - [m["lavfi.psnr.psnr.y"] for m in psnr])) \
        < 1e-4
    assert np.max(np.abs(np.array(cropped["ssim_y"]) - [m["lavfi.ssim.Y"] for m in ssim])) < 1e-5


def test_other_size_is_scaled_only_when_asked(ffmpeg, clips):
    for func in (compute_metrics, vmaf_scores):
        with pytest.raises(MetricError, match="176x144") as info:
            func(clips["ref"], clips["small"])
        assert isinstance(info.value, GopflowError) and isinstance(info.value, ValueError)
    scaled = compute_metrics(clips["ref"], clips["small"], ["psnr_y"], scale=True)
    assert scaled.resize == "scale" and scaled.frames == FRAMES
    meta = ffmpeg_per_frame(
        ffmpeg, clips["small"], clips["ref"], "psnr", f"scale={WIDTH}:{HEIGHT}:flags=bicubic"
    )
    theirs = np.array([m["lavfi.psnr.psnr.y"] for m in meta])
    assert abs(np.mean(scaled["psnr_y"]) - theirs.mean()) < 0.05

    vmaf = vmaf_scores(clips["ref"], clips["small"], ["vmaf"], scale=True)
    direct = direct_libvmaf(
        ffmpeg, clips["small"], clips["ref"], "vmaf_v0.6.1",
        f"scale={WIDTH}:{HEIGHT}:flags=bicubic",
    )
    assert vmaf.resize == "scale"
    assert np.allclose(vmaf["vmaf"], [f["metrics"]["vmaf"] for f in direct["frames"]], atol=1e-6)


def test_frame_count_mismatch(clips):
    with pytest.raises(FrameCountError, match=r"24 frames.*has 20"):
        compute_metrics(clips["ref"], clips["short"])
    with pytest.raises(FrameCountError, match="allow_length_mismatch"):
        vmaf_scores(clips["ref"], clips["short"])
    common = measure(clips["ref"], clips["short"], ["psnr_y", "vmaf"], allow_length_mismatch=True)
    assert common.frames == 20
    assert len(common["psnr_y"]) == len(common["vmaf"]) == 20


def test_msssim_matches_pytorch_msssim_on_ffmpeg_decoded_frames(ffmpeg, clips):
    import torch
    from pytorch_msssim import ms_ssim

    ours = compute_metrics(clips["ref"], clips["dist"], ["msssim"], threads=2)
    assert ours.names == ("msssim_y",) and ours.frames == FRAMES
    assert all(0.5 < v <= 1.0 for v in ours["msssim_y"])

    def luma(path: str) -> np.ndarray:
        raw = subprocess.run(
            [ffmpeg, "-v", "error", "-i", path, "-frames:v", "10", "-f", "rawvideo",
             "-pix_fmt", "yuv420p", "-"],
            check=True, capture_output=True,
        ).stdout
        frames = np.frombuffer(raw, np.uint8).reshape(10, HEIGHT * 3 // 2, WIDTH)
        return frames[:, :HEIGHT].astype(np.float32)

    ref, dist = luma(clips["ref"]), luma(clips["dist"])
    picked = [0, 9]  # one frame in the first batch of 8, one in the second
    expected = ms_ssim(
        torch.from_numpy(ref[picked, None]), torch.from_numpy(dist[picked, None]),
        data_range=255.0, size_average=False,
    )
    got = [ours["msssim_y"][i] for i in picked]
    assert np.allclose(got, expected.numpy(), atol=1e-5)

    with pytest.raises(MetricError, match="at least 161"):
        compute_metrics(clips["small"], clips["small"], ["msssim"])


def test_vmaf_agrees_with_libvmaf(ffmpeg, clips):
    ours = vmaf_scores(clips["ref"], clips["dist"], ["vmaf", "vmaf_neg"], threads=2)
    assert ours.names == ("vmaf", "vmaf_neg") and ours.frames == FRAMES
    for name, model in (("vmaf", "vmaf_v0.6.1"), ("vmaf_neg", "vmaf_v0.6.1neg")):
        direct = direct_libvmaf(ffmpeg, clips["dist"], clips["ref"], model)
        theirs = np.array([f["metrics"]["vmaf"] for f in direct["frames"]])
        assert len(theirs) == FRAMES
        assert np.max(np.abs(np.array(ours[name]) - theirs)) <= 1e-6
        pooled, their_pool = ours.summary()[name], direct["pooled_metrics"]["vmaf"]
        assert pooled.mean == pytest.approx(their_pool["mean"], abs=1e-5)
        assert pooled.harmonic_mean == pytest.approx(their_pool["harmonic_mean"], abs=1e-5)
        assert pooled.min == pytest.approx(their_pool["min"], abs=1e-6)


def test_compare_job_writes_table_json_csv_plot(clips, scores, tmp_path, capsys):
    from gopflow.cli.compare import add_compare_parser, run_compare

    parser = argparse.ArgumentParser(prog="gopflow")
    add_compare_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "out"
    out.mkdir()
    args = parser.parse_args([
        "compare", clips["ref"], clips["dist"], "--metrics", "psnr,ssim,vmaf",
        "--json", str(out / "q.json"), "--csv", str(out / "q.csv"),
        "--plot", str(out / "q.png"), "--threads", "2",
    ])
    assert run_compare(args) == 0
    table = capsys.readouterr().out
    assert "psnr_y" in table and "vmaf" in table and "h.mean" in table
    assert sorted(p.name for p in out.iterdir()) == ["q.csv", "q.json", "q.png"]  # no temp files

    data = json.loads((out / "q.json").read_text())
    assert data["frames"] == FRAMES
    assert set(data["summary"]) == {"psnr_y", "psnr_u", "psnr_v", "psnr_yuv", "ssim_y", "vmaf"}
    assert data["summary"]["psnr_y"]["mean"] == pytest.approx(scores.summary()["psnr_y"].mean)
    assert data["per_frame"]["ssim_y"] == list(scores["ssim_y"])
    rows = (out / "q.csv").read_text().splitlines()
    assert rows[0].split(",")[:2] == ["frame", "psnr_y"] and len(rows) == FRAMES + 1
    assert (out / "q.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    bad_dir = parser.parse_args(["compare", clips["ref"], clips["dist"], "--json",
                                 str(tmp_path / "missing" / "q.json")])
    with pytest.raises(OutputError, match="does not exist"):
        run_compare(bad_dir)
    bad_plot = parser.parse_args(["compare", clips["ref"], clips["dist"], "--plot", "q.gif"])
    with pytest.raises(UsageError, match="gif"):
        run_compare(bad_plot)
    with pytest.raises(SystemExit):
        parser.parse_args(["compare", clips["ref"], clips["dist"], "--metrics", "lpips"])
