"""Plots: a transcode report's per-GOP bitrate, quality and QRO decisions over time; a
ladder's probe curves, hull and rungs.

Data flow: :class:`TranscodeReport` -> matplotlib (Agg, no display) -> PNG written to a temp
name, then renamed.
"""

from __future__ import annotations

import os
from typing import Any

from gopflow.types import TranscodeReport


def plot_gops(report: TranscodeReport, path: str) -> None:
    """Draw bitrate (bars) and measured quality (line) per GOP, decisions as labels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fps = report.frames and report.duration_seconds and (
        sum(g.frames for g in report.gops) / report.duration_seconds
    )
    starts = [g.start_frame / fps if fps else g.index for g in report.gops]
    seconds = [g.frames / fps if fps else 1.0 for g in report.gops]
    kbps = [g.bytes * 8 / 1000 / s if s else 0.0 for g, s in zip(report.gops, seconds, strict=True)]
    figure = Figure(figsize=(11, 5), dpi=100)
    FigureCanvasAgg(figure)
    axis = figure.add_subplot(1, 1, 1)
    axis.bar(starts, kbps, width=seconds, align="edge", color="#9ab", edgecolor="#567",
             label="bitrate (kbit/s)")
    axis.set_xlabel("time (s)")
    axis.set_ylabel("kbit/s")
    decisions = [g.decision for g in report.gops]
    if any(decisions):
        quality_axis = axis.twinx()
        metric = next(d["metric"] for d in decisions if d)
        values = [d["quality"] if d else float("nan") for d in decisions]
        middles = [s + w / 2 for s, w in zip(starts, seconds, strict=True)]
        quality_axis.plot(middles, values, "o-", color="#c33", label=f"{metric} (restored)")
        quality_axis.set_ylabel(metric)
        target = report.settings.get("qro", {}) or {}
        if target.get("target") is not None:
            quality_axis.axhline(target["target"], color="#c33", linestyle="--", linewidth=0.8)
        for x, decision in zip(middles, decisions, strict=True):
            if decision:
                label = f"{decision['scale']}{' ½fps' if decision['half_rate'] else ''}\n"
                label += f"crf {decision['crf']:g}{' !' if decision.get('flagged') else ''}"
                axis.annotate(label, (x, 0), textcoords="offset points", xytext=(0, 4),
                              ha="center", fontsize=7)
        quality_axis.legend(loc="upper right")
    axis.legend(loc="upper left")
    axis.set_title(os.path.basename(report.output))
    figure.tight_layout()
    _save(figure, path)


def _save(figure: Any, path: str) -> None:
    temp = f"{path}.partial.png"
    figure.savefig(temp, format="png")
    os.replace(temp, path)


def plot_hull(ladder: dict[str, Any], path: str) -> None:
    """Draw a ladder's probe curves (one per height), their upper convex hull and the rungs
    chosen on it: bitrate (log scale) against VMAF."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 6), dpi=100)
    FigureCanvasAgg(figure)
    axis = figure.add_subplot(1, 1, 1)
    heights = sorted({p["height"] for p in ladder["points"]}, reverse=True)
    for height in heights:
        curve = sorted((p for p in ladder["points"] if p["height"] == height),
                       key=lambda p: p["kbps"])
        axis.plot([p["kbps"] for p in curve], [p["vmaf"] for p in curve], marker=".",
                  linewidth=1, label=f"{height}p")
    hull = ladder["hull"]
    axis.plot([p["kbps"] for p in hull], [p["vmaf"] for p in hull], color="black",
              linewidth=2, label="upper convex hull")
    rungs = ladder["rungs"]
    axis.scatter([r["kbps"] for r in rungs], [r["vmaf"] for r in rungs], s=90, marker="D",
                 color="red", zorder=5, label="rungs")
    for rung in rungs:
        axis.annotate(rung.get("name", f"{rung['height']}p"), (rung["kbps"], rung["vmaf"]),
                      textcoords="offset points", xytext=(6, -12), fontsize=8)
    axis.set_xscale("log")
    axis.set_xlabel("bitrate (kbit/s)")
    axis.set_ylabel("VMAF (at the source size)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    axis.set_title(os.path.basename(ladder.get("input", "")))
    figure.tight_layout()
    _save(figure, path)
