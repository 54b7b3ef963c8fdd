"""The command line: help texts, probe output, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import media


def gopflow(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gopflow", *args],
        capture_output=True, text=True, timeout=timeout,
    )


def test_help_texts_stand_on_their_own() -> None:
    top = gopflow("--help")
    assert top.returncode == 0 and "transcode" in top.stdout and "probe" in top.stdout
    sub = gopflow("transcode", "--help")
    for option in ("--codec", "--crf", "--bitrate", "--preset", "--pix-fmt", "--gop-seconds",
                   "--ray-address", "--resume", "--report"):
        assert option in sub.stdout
    assert gopflow("probe", "--help").returncode == 0


def test_probe_json() -> None:
    done = gopflow("probe", media("his_girl_friday_640x480.mp4"))
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert (info["width"], info["height"], info["frame_count"]) == (640, 480, 185)
    assert info["fps"] == "30/1" and info["vfr"] is False
    assert info["audio"][0]["codec"] == "aac"
    assert info["pix_fmt"] == "yuv420p" and info["color_range"] == "tv"


def _assert_clean_failure(done: subprocess.CompletedProcess[str], output: Path, words: str) -> None:
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("gopflow: error:"), lines[0]
    assert words in lines[0].lower(), lines[0]
    assert "Traceback" not in done.stderr
    assert not output.exists()
    leftovers = [n for n in os.listdir(output.parent) if "partial" in n or n.startswith(".tmp")]
    assert not leftovers


@pytest.mark.parametrize(
    ("clip", "words"),
    [
        ("missing", "not found"),
        ("text", "not a readable video"),
        ("empty", "empty"),
        ("audio_only", "no video stream"),
        ("truncated", "not a readable video"),
        ("truncated_faststart", "truncated"),
        ("zero_frames", "video"),
    ],
)
def test_bad_input_fails_with_one_line(
    clip: str, words: str, generated: dict[str, str], tmp_path: Path
) -> None:
    source = str(tmp_path / "nope.mp4") if clip == "missing" else generated[clip]
    output = tmp_path / "out.mp4"
    done = gopflow("transcode", source, "-o", str(output), "--no-progress")
    _assert_clean_failure(done, output, words)


def test_unwritable_output(tmp_path: Path) -> None:
    output = tmp_path / "no_such_dir" / "out.mp4"
    done = gopflow("transcode", media("asl_again_640x480.mkv"), "-o", str(output))
    _assert_clean_failure(done, tmp_path / "out.mp4", "does not exist")


def test_bad_options(tmp_path: Path) -> None:
    output = tmp_path / "out.avi"
    done = gopflow("transcode", media("asl_again_640x480.mkv"), "-o", str(output))
    _assert_clean_failure(done, output, "unsupported output")
    output = tmp_path / "out.mp4"
    done = gopflow("transcode", media("asl_again_640x480.mkv"), "-o", str(output), "--crf", "80")
    _assert_clean_failure(done, output, "crf")
    done = gopflow("transcode", media("asl_again_640x480.mkv"), "-o", str(output),
                   "--target-vmaf-neg", "80", "--mode-select", "predict")
    _assert_clean_failure(done, output, "trained on vmaf targets")


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--crf", "20", "--target-vmaf", "93"], "cannot both apply"),
        (["--bitrate", "abc"], "not a bitrate"),
        (["--bitrate", "0"], "positive"),
        (["--retries", "-1"], "--retries"),
        (["--crf", "x"], "invalid float"),
        (["--codec", "x264", "--quality", "3"], "learned codecs"),
        (["--codec", "dvc", "--crf", "20"], "x264/x265"),
    ],
)
def test_bad_option_values_fail_with_one_line(
    options: list[str], words: str, tmp_path: Path
) -> None:
    output = tmp_path / "out.mkv"
    done = gopflow("transcode", media("asl_again_640x480.mkv"), "-o", str(output), *options)
    _assert_clean_failure(done, output, words.lower())


def test_library_refuses_what_the_cli_refuses(tmp_path: Path) -> None:
    import gopflow as api
    from gopflow.errors import UsageError

    with pytest.raises(UsageError, match="cannot both apply"):
        api.transcode(media("asl_again_640x480.mkv"), str(tmp_path / "o.mkv"), crf=20,
                      target_vmaf=93)
    with pytest.raises(UsageError, match="unknown transcode option"):
        api.transcode(media("asl_again_640x480.mkv"), str(tmp_path / "o.mkv"), crf_value=20)


@pytest.mark.parametrize("reader", ["head -c 10", "true"])
def test_probe_into_a_closed_pipe_is_quiet(
    reader: str, generated: dict[str, str], tmp_path: Path
) -> None:
    # `true` exits before gopflow writes a byte: the write meets a closed pipe (EPIPE).
    errors = tmp_path / "stderr.txt"
    script = (f"{shlex.quote(sys.executable)} -m gopflow probe {shlex.quote(generated['odd'])} "
              f"2>{shlex.quote(str(errors))} | {reader} >/dev/null; "
              'echo "gopflow exit ${PIPESTATUS[0]}"')
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "gopflow exit 0", (done.stdout, errors.read_text())
    stderr = errors.read_text()
    assert "Traceback" not in stderr and "internal error" not in stderr
    assert "Broken pipe" not in stderr and stderr == "", stderr
