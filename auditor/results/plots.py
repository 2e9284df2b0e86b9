"""Privacy-utility plots: each defense column as a point at (test accuracy, worst leakage over
the attacks), rendered with matplotlib's object API (no global pyplot state) to PNG bytes.

Leakage, not resemblance: the image panel plots recovery above the data-blind null and the label
panel label accuracy above the label-blind guess, so a defense is never drawn as leaking by what
an attacker gets without the update."""

from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PANELS = (("leakage", "worst image leakage over attacks\n(recovery above the null)"),
          ("label_leakage", "worst label leakage over attacks\n(accuracy above the label-blind guess)"))


RATED_OUTPUT = {"leakage": "images", "label_leakage": "labels"}


def worst_leakage(cells: Sequence[Mapping[str, Any]], defense: str, metric: str) -> float | None:
    """The largest mean ``metric`` among the column's cells rated by that output (an image
    attack's internal label step is the labels row's to report)."""
    values = [
        c["metrics"][metric]["mean"]
        for c in cells
        if c["defense"]["label"] == defense and c["metrics"] and c["metrics"].get(metric)
        and RATED_OUTPUT[metric] in {r["output"] for r in c.get("rated", [])}
    ]
    return max(values) if values else None


def privacy_utility_png(scenario: str, utility: Sequence[Mapping[str, Any]], cells: Sequence[Mapping[str, Any]]) -> bytes | None:
    """One figure per scenario; None when no defense has both a utility and a leakage figure."""
    figure = Figure(figsize=(10, 4.2), dpi=110)
    FigureCanvasAgg(figure)
    plotted = False
    for axis, (metric, title) in zip(figure.subplots(1, 2), PANELS):
        for i, entry in enumerate(utility):
            accuracy, leak = entry["test_accuracy"], worst_leakage(cells, entry["defense"], metric)
            if accuracy is None or leak is None:
                continue
            plotted = True
            ci = accuracy["ci95"]
            xerr = [[accuracy["mean"] - ci[0]], [ci[1] - accuracy["mean"]]] if ci else None
            baseline = entry["defense"] == "none"
            axis.errorbar(
                accuracy["mean"], leak, xerr=xerr, fmt="s" if baseline else "o", capsize=3,
                color="#444444" if baseline else "#1f5fa8", markersize=7,
            )
            offset = (5, 4 + 9 * (i % 3))  # staggered, so defenses at the same point stay legible
            axis.annotate(entry["defense"], (accuracy["mean"], leak), textcoords="offset points", xytext=offset, fontsize=8)
        axis.set_xlabel("global test accuracy (utility)")
        axis.set_ylabel(title)
        axis.grid(alpha=0.3)
        axis.axhline(0.0, color="#999999", linewidth=0.8)  # the null: no leakage
        axis.set_ylim(-0.25, 1.05)
    if not plotted:
        return None
    figure.suptitle(f"privacy vs utility: {scenario} (lower right is better)", fontsize=11)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
