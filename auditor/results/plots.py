"""Privacy-utility plots: each defense column as a point at (test accuracy, worst leakage over
the attacks), rendered with matplotlib's object API (no global pyplot state) to PNG bytes.

Leakage, not resemblance: the image panel plots recovery above the data-blind null and the label
panel label accuracy above the label-blind guess, so a defense is never drawn as leaking by what
an attacker gets without the update."""

from __future__ import annotations

import io
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from flaudit.auditor.results.cells import CellFigures, Stat
from flaudit.auditor.results.view import UtilityFigures

PANELS = (("images", "worst image leakage over attacks\n(recovery above the null)"),
          ("labels", "worst label leakage over attacks\n(accuracy above the label-blind guess)"))


def _rated_leakage(cell: CellFigures, output: str) -> Stat | None:
    figures = cell.images if output == "images" else cell.labels
    return figures.leakage if figures is not None and figures.rated else None


def worst_leakage(cells: Sequence[CellFigures], defense: str, output: str) -> float | None:
    """The largest mean leakage of ``output`` (images, labels) among the column's cells rated
    by it (an image attack's internal label step is the labels row's to report)."""
    values = [stat.mean for c in cells if c.defense == defense and (stat := _rated_leakage(c, output)) is not None]
    return max(values) if values else None


def privacy_utility_png(scenario: str, utility: Sequence[UtilityFigures], cells: Sequence[CellFigures]) -> bytes | None:
    """One figure per scenario; None when no defense has both a utility and a leakage figure."""
    figure = Figure(figsize=(10, 4.2), dpi=110)
    FigureCanvasAgg(figure)
    plotted = False
    for axis, (output, title) in zip(figure.subplots(1, 2), PANELS):
        for i, entry in enumerate(utility):
            accuracy, leak = entry.accuracy, worst_leakage(cells, entry.defense, output)
            if accuracy is None or leak is None:
                continue
            plotted = True
            ci = accuracy.ci95
            xerr = [[accuracy.mean - ci[0]], [ci[1] - accuracy.mean]] if ci else None
            baseline = entry.defense == "none"
            axis.errorbar(
                accuracy.mean, leak, xerr=xerr, fmt="s" if baseline else "o", capsize=3,
                color="#444444" if baseline else "#1f5fa8", markersize=7,
            )
            offset = (5, 4 + 9 * (i % 3))  # staggered, so defenses at the same point stay legible
            axis.annotate(entry.defense, (accuracy.mean, leak), textcoords="offset points", xytext=offset, fontsize=8)
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
