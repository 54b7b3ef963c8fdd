"""Plots of a transcode report: per-GOP bitrate, quality and QRO decisions over time.

Data flow: :class:`TranscodeReport` -> matplotlib (Agg, no display) -> PNG written to a temp
name, then renamed.
"""

from __future__ import annotations

import os

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
    temp = f"{path}.partial.png"
    figure.savefig(temp, format="png")
    os.replace(temp, path)
