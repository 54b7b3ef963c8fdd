"""A real browser plays packaged ladders: headless Chromium (Debian's ``chromium``, driven by
Playwright through ``executable_path``; nothing downloaded at run time) with hls.js and
dash.js (npm, installed into tests/browser/node_modules by ``make setup``), the ladders
served on 127.0.0.1: 2-rung H.264 and AV1 ladders packaged from per-GOP encodes, and the
whole ``gopflow ladder`` job's output for a generated clip (noisy testsrc2, never tuned on).
Each player starts on the low rung, is switched up and then down while playing, and must
play to the end with no player error event; the picture size seen by the <video> element
must follow the switches.

A screenshot of each player on the high rung goes to ``$GOPFLOW_SCREENSHOT_DIR`` (default:
the test's temp folder). Skips, with the reason, where chromium, the npm players or
playwright are missing.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import ClassVar

import pytest

from conftest import make_clip
from gopflow.packaging.package import AudioSource, package_ladder
from integration.ladder_media import RungSpec, encode_rungs, make_source

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1] / "browser"
PLAYERS = {
    "hls": ROOT / "node_modules" / "hls.js" / "dist" / "hls.min.js",
    "dash": ROOT / "node_modules" / "dashjs" / "dist" / "modern" / "umd" / "dash.all.min.js",
}
RUNGS = (RungSpec("180p", 320, 180, kbps=250), RungSpec("360p", 640, 360, kbps=900))
GOP_FRAMES = (60, 45, 75, 60, 60)  # 10 s at 30 fps; segments of whole GOPs, about 2 s
SECONDS = sum(GOP_FRAMES) / 30
CODECS = {"x264": "veryfast", "svtav1": "10"}  # avc1 and av01: what browsers' MSE plays


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no system chromium (make setup installs Debian's `chromium` with apt)")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a web root on 127.0.0.1 holding the ladder, both players and the
    test page."""
    browser = _chromium()
    for name, path in PLAYERS.items():
        if not path.exists():
            pytest.skip(f"{name} player missing at {path} (make setup runs npm ci there)")
    pytest.importorskip("playwright.sync_api", reason="playwright not installed (dev extra)")
    root = tmp_path_factory.mktemp("web")
    source = make_source(root / "source.mp4", seconds=SECONDS)
    for codec, preset in CODECS.items():
        rungs = encode_rungs(source, GOP_FRAMES, RUNGS, root / f"gops-{codec}", codec=codec,
                             preset=preset)
        package_ladder(rungs, str(root / f"ladder-{codec}"), gop_frames=GOP_FRAMES,
                       fps=Fraction(30), audio=AudioSource(source, 1), segment_seconds=2.0)
    # A ladder made by the job itself, of a generated clip gopflow was never tuned on.
    job_source = make_clip(
        root / "job_source.mp4", "-f", "lavfi",
        "-i", f"testsrc2=size=640x360:rate=30:duration={SECONDS},noise=alls=8:allf=t",
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={SECONDS}",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "16", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "128k", "-shortest",
    )
    done = subprocess.run(
        [sys.executable, "-m", "gopflow", "ladder", job_source, "-o", str(root / "ladder-job"),
         "--preset", "veryfast", "--segment-seconds", "2", "--rungs", "3", "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    for path in (*PLAYERS.values(), ROOT / "player.html"):
        shutil.copy(path, root / path.name)
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    os.environ["GOPFLOW_TEST_CHROMIUM"] = browser
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map: ClassVar[dict[str, str]] = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".m3u8": "application/vnd.apple.mpegurl", ".mpd": "application/dash+xml",
        ".m4s": "video/iso.segment", ".mp4": "video/mp4",
    }

    def log_message(self, format: str, *args: object) -> None:
        pass


def _wait(page, expression: str, timeout: float, what: str, console: list[str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if page.evaluate(expression):
            return
        errors = page.evaluate("result.errors")
        assert not errors, f"player errors while waiting for {what}: {errors}"
        time.sleep(0.1)
    state = page.evaluate(
        "JSON.stringify({t: video.currentTime, ready: video.readyState, paused: video.paused,"
        " duration: video.duration, buffered: Array.from({length: video.buffered.length},"
        " (_, i) => [video.buffered.start(i), video.buffered.end(i)]), r: result})"
    )
    raise AssertionError(f"timed out waiting for {what}: {state}; console: {console[-40:]}")


def _play(base: str, kind: str, ladder: str, low: int, high: int, shot: Path,
          seconds: float) -> dict:
    """Play ``ladder`` from its low rung, switch up to ``high`` and back down to ``low``
    while playing, to the end; save a screenshot on the high rung; the player's record."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=os.environ["GOPFLOW_TEST_CHROMIUM"], headless=True,
            args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required", "--mute-audio"],
        )
        try:
            page = browser.new_page(viewport={"width": 640, "height": 360})
            console: list[str] = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.goto(f"{base}/player.html?kind={kind}&ladder={ladder}")
            _wait(page, f"video.currentTime > 1.0 && video.videoHeight === {low}", 30,
                  f"playback on {low}p", console)
            page.evaluate(f"switchTo({high})")
            _wait(page, f"video.videoHeight === {high}", 30, f"the switch up to {high}p",
                  console)
            page.screenshot(path=str(shot))
            page.evaluate(f"switchTo({low})")
            _wait(page, f"video.videoHeight === {low} && result.switched.length >= 2", 30,
                  f"the switch down to {low}p", console)
            _wait(page, "result.ended || result.playerEnded", seconds + 30,
                  "the end of the video", console)
            result = page.evaluate("result")
            played = page.evaluate("video.currentTime")
        finally:
            browser.close()
    assert not result["errors"], result["errors"]
    assert not [line for line in console if line.startswith("pageerror")], console
    assert played == pytest.approx(seconds, abs=0.5)
    heights = [h for _, _, h in result["sizes"]]
    assert high in heights and heights[-1] == low, result["sizes"]
    assert shot.stat().st_size > 1000
    print(json.dumps({"kind": kind, "ladder": ladder, "switched": result["switched"],
                      "sizes": result["sizes"], "levels": result["levels"]}))
    return result


@pytest.mark.parametrize("codec", list(CODECS))
@pytest.mark.parametrize("kind", ["hls", "dash"])
def test_browser_plays_ladder_and_switches_rungs(served, kind, codec, tmp_path):
    shots = Path(os.environ.get("GOPFLOW_SCREENSHOT_DIR") or tmp_path)
    result = _play(served, kind, f"ladder-{codec}", 180, 360,
                   shots / f"ladder-{codec}-{kind}-playing.png", SECONDS)
    assert [level[1] for level in result["levels"]] == [180, 360]


@pytest.mark.parametrize("kind", ["hls", "dash"])
def test_browser_plays_a_gopflow_ladder(served, kind, tmp_path):
    """The whole job's output: `gopflow ladder` of a generated clip, its lowest and highest
    rungs as ladder.json names them."""
    shots = Path(os.environ.get("GOPFLOW_SCREENSHOT_DIR") or tmp_path)
    with urllib.request.urlopen(f"{served}/ladder-job/ladder.json") as response:
        rungs = json.load(response)["rungs"]
    low, high = rungs[0]["height"], rungs[-1]["height"]
    assert low < high, rungs
    result = _play(served, kind, "ladder-job", low, high,
                   shots / f"ladder-job-{kind}-playing.png", SECONDS)
    assert [level[1] for level in result["levels"]] == [r["height"] for r in rungs]
