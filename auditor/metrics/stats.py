"""Per-seed values summarised as a mean with a 95% Student-t interval over seeds."""

from __future__ import annotations

import math
from typing import Any, Iterable

from scipy import stats as scipy_stats


def interval(
    values: Iterable[float | None], low: float = -math.inf, high: float = math.inf
) -> dict[str, Any] | None:
    """``{"mean", "ci95": [low, high] | None, "n", "values"}`` over the non-missing values;
    None when there are none. The interval needs two seeds or more and is clipped to the
    quantity's range [low, high] (a rate's interval never leaves [0, 1])."""
    kept = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not kept:
        return None
    n = len(kept)
    mean = sum(kept) / n
    ci = None
    if n > 1:
        sd = math.sqrt(sum((v - mean) ** 2 for v in kept) / (n - 1))
        half = float(scipy_stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        ci = [max(low, mean - half), min(high, mean + half)]
    return {"mean": mean, "ci95": ci, "n": n, "values": kept}
