"""Leakage: how far an attack's scores beat its nulls, the data-blind guesses scored on the same
targets, matching and criterion (``Attack.nulls``). The larger null is used, image and label
separately, so leakage is what no guess from the attacker's own data and prior explains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from flaudit.auditor.metrics.scoring import RunScores


@dataclass(frozen=True)
class Leakage:
    """One run's scores next to its larger nulls. ``null``: the null recovering the most
    targets (``null_name`` says which); ``label_null``: the one with the best label accuracy."""

    attack: RunScores
    null: RunScores | None
    null_name: str | None
    label_null: RunScores | None

    @property
    def null_recovery_rate(self) -> float | None:
        if self.attack.recovery_rate is None:
            return None
        return 0.0 if self.null is None or self.null.recovery_rate is None else self.null.recovery_rate

    @property
    def leakage(self) -> float | None:
        null = self.null_recovery_rate
        return None if null is None else self.attack.recovery_rate - null

    @property
    def label_null_accuracy(self) -> float | None:
        if self.attack.label_accuracy is None or self.label_null is None:
            return None
        return self.label_null.label_accuracy

    @property
    def label_leakage(self) -> float | None:
        null = self.label_null_accuracy
        return None if null is None else self.attack.label_accuracy - null

    @property
    def n_null_recovered(self) -> int | None:
        if self.null_recovery_rate is None:
            return None
        return (self.null.n_recovered if self.null else None) or 0

    def metrics(self) -> dict[str, Any]:
        """The attack's scores with the null's and the leakage, for the scorecard."""
        values = {
            "null_recovery_rate": self.null_recovery_rate,
            "n_null_recovered": self.n_null_recovered,
            "null_psnr_rate": self.null.psnr_rate if self.null else None,
            "leakage": self.leakage,
            "label_null_accuracy": self.label_null_accuracy,
            "label_leakage": self.label_leakage,
        }
        return {**self.attack.as_dict(), **{k: v for k, v in values.items() if v is not None}}


def against_nulls(attack: RunScores, nulls: Mapping[str, RunScores]) -> Leakage:
    """``nulls``: each null's scores by name; the larger is kept (ties: the first)."""

    def largest(key):
        ranked = [(name, s) for name, s in nulls.items() if key(s) is not None]
        return max(ranked, key=lambda item: key(item[1]), default=(None, None))

    name, null = largest(lambda s: s.recovery_rate)
    _, label_null = largest(lambda s: s.label_accuracy)
    return Leakage(attack, null, name, label_null)
