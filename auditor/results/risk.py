"""Risk level of a cell, from how much it leaked.

Image attacks are rated by their recovery rate (share of targets reconstructed at or above
the PSNR threshold, mean over seeds); label inference by its label accuracy, whose scale
starts at chance level, hence higher cut-offs; an attack that yields both, by the worse. The cut-offs are the lower bounds of each
level; they are written into every scorecard so a reader sees what a level meant.
"""

from __future__ import annotations

from typing import Any, Mapping

LEVELS = ("none", "low", "medium", "high")  # ascending leakage
NOT_APPLICABLE = "not_applicable"
UNKNOWN = "unknown"  # every seed of the cell failed
UNSCORED = "unscored"  # the attack ran, but no ground truth exists for its targets (a recorded federation's peers)

RECOVERY_RATE_CUTOFFS = {"low": 1e-9, "medium": 0.05, "high": 0.25}  # any recovered image is at least low
LABEL_ACCURACY_CUTOFFS = {"low": 0.5, "medium": 0.8, "high": 0.95}

COLOURS = {
    "none": "#cfe8cf", "low": "#f3eab0", "medium": "#f6c58c", "high": "#ec8f86",
    NOT_APPLICABLE: "#e4e4e4", UNKNOWN: "#c9c3dd", UNSCORED: "#d8e4ee",
}


def _level(value: float, cutoffs: Mapping[str, float]) -> str:
    level = "none"
    for name in LEVELS[1:]:
        if value >= cutoffs[name]:
            level = name
    return level


def risk_level(metrics: Mapping[str, Any] | None) -> str:
    """``metrics``: a cell's aggregated metrics ({name: {"mean": ...}}), None when none. An
    attack that leaks images and labels is rated by whichever is worse."""
    levels = [
        _level(metrics[name]["mean"], cutoffs)
        for name, cutoffs in (("recovery_rate", RECOVERY_RATE_CUTOFFS), ("label_accuracy", LABEL_ACCURACY_CUTOFFS))
        if metrics and metrics.get(name) is not None
    ]
    return max(levels, key=rank) if levels else UNKNOWN


def rank(level: str) -> int:
    """Orders levels by leakage; unknown (failed) ranks above high so it is never hidden."""
    return {NOT_APPLICABLE: -1, UNSCORED: -1, **{name: i for i, name in enumerate(LEVELS)}, UNKNOWN: len(LEVELS)}[level]


def thresholds() -> dict[str, dict[str, float]]:
    return {"recovery_rate": dict(RECOVERY_RATE_CUTOFFS), "label_accuracy": dict(LABEL_ACCURACY_CUTOFFS)}
