"""Risk level of a cell, from its leakage: how far the attack beat its nulls (the data-blind
guesses, ``Attack.nulls``) on the same targets, not its raw recovery.

A level is read from the lower end of the leakage's 95% interval, so a cell is rated above
``none`` only when its leakage is above the null beyond chance:

* two seeds or more: the lower end of the Student-t interval over the per-seed leakages;
* one seed: the lower end of Newcombe's hybrid-score interval for the difference of two
  proportions (attack hits vs null hits out of the targets, Wilson intervals), which needs
  no spread over seeds.

Image leakage is the identifiable recovery rate minus the larger null's; label leakage the
label-count accuracy minus the label-blind guess's. A cell is rated by the outputs it is rated
by (``Attack.label_step``: an internal label step another row reports does not rate it), by
the worse. The cut-offs are the lower bounds of each level ("low": any leakage above zero);
they are written into every scorecard so a reader sees what a level meant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from flaudit.auditor.metrics.stats import interval

LEVELS = ("none", "low", "medium", "high")  # ascending leakage
NOT_APPLICABLE = "not_applicable"
UNKNOWN = "unknown"  # every seed of the cell failed
UNSCORED = "unscored"  # the attack ran, but no ground truth exists for its targets (a recorded federation's peers)

LEAKAGE_CUTOFFS = {"low": 0.0, "medium": 0.05, "high": 0.25}  # low: lower end > 0; others: >=
LABEL_LEAKAGE_CUTOFFS = {"low": 0.0, "medium": 0.15, "high": 0.3}
Z95 = 1.959963984540054
ONE_SEED_RULE = "newcombe"  # how the lower end is found with one seed
SEEDS_RULE = "student_t"

COLOURS = {
    "none": "#cfe8cf", "low": "#f3eab0", "medium": "#f6c58c", "high": "#ec8f86",
    NOT_APPLICABLE: "#e4e4e4", UNKNOWN: "#c9c3dd", UNSCORED: "#d8e4ee",
}


def wilson(hits: int, trials: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if trials <= 0:
        return 0.0, 1.0
    p, z2 = hits / trials, Z95 * Z95
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = Z95 * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_lower(hits: int, null_hits: int, trials: int) -> float:
    """Lower end of Newcombe's 95% interval for ``hits/trials - null_hits/trials``."""
    p1, p0 = hits / trials, null_hits / trials
    low1, _ = wilson(hits, trials)
    _, high0 = wilson(null_hits, trials)
    return p1 - p0 - math.sqrt((p1 - low1) ** 2 + (high0 - p0) ** 2)


@dataclass(frozen=True)
class Evidence:
    """One leakage quantity of a cell: per-seed leakage, and the counts the one-seed rule reads
    (attack hits, null hits, out of ``trials``, summed over seeds)."""

    values: tuple[float, ...]
    hits: int
    null_hits: int
    trials: int

    @property
    def rule(self) -> str:
        return SEEDS_RULE if len(self.values) > 1 else ONE_SEED_RULE

    @property
    def lower(self) -> float:
        if len(self.values) > 1:
            stat = interval(self.values, -1.0, 1.0)
            return stat["ci95"][0]
        if self.trials <= 0:
            return 0.0
        return newcombe_lower(self.hits, self.null_hits, self.trials)

    def level(self, cutoffs: Mapping[str, float]) -> str:
        lower, level = self.lower, "none"
        if lower > cutoffs["low"]:
            level = "low"
        for name in LEVELS[2:]:
            if lower >= cutoffs[name]:
                level = name
        return level


def risk_level(images: Evidence | None, labels: Evidence | None) -> str:
    """The worse of the rated evidence's levels; unknown when there is none (every seed failed, or no output could be scored)."""
    levels = [e.level(c) for e, c in ((images, LEAKAGE_CUTOFFS), (labels, LABEL_LEAKAGE_CUTOFFS)) if e is not None]
    return max(levels, key=rank) if levels else UNKNOWN


def rank(level: str) -> int:
    """Orders levels by leakage; unknown (failed) ranks above high so it is never hidden."""
    return {NOT_APPLICABLE: -1, UNSCORED: -1, **{name: i for i, name in enumerate(LEVELS)}, UNKNOWN: len(LEVELS)}[level]


def thresholds() -> dict[str, dict[str, float]]:
    return {"leakage": dict(LEAKAGE_CUTOFFS), "label_leakage": dict(LABEL_LEAKAGE_CUTOFFS)}
