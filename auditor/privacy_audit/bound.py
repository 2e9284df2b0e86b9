"""The epsilon lower bound of the one-run audit (Steinke, Nasr, Jagielski 2023, "Privacy
auditing with one (1) training run").

``m`` canaries are each included independently with probability 1/2. The auditor guesses
"in" for the ``k`` highest scores and "out" for the ``k`` lowest and abstains on the rest. If
the mechanism is (epsilon, delta)-DP for each canary, the number of correct guesses among the
``r = 2k`` made exceeds ``v`` with probability at most ``P[Binomial(r, p) >= v] + 2 m delta
alpha`` where ``p = e^eps / (1 + e^eps)`` and ``alpha`` is their Theorem's max over ``i`` of
``P[v - i <= Binomial(r, p) < v] / i``. The lower bound is the largest epsilon that this
p-value rejects at ``1 - confidence``; several ``k`` are tried with a Bonferroni correction, so
the bound holds at the stated confidence whichever ``k`` wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import expit
from scipy.stats import binom

GUESS_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)  # k / m for the guesses tried
SEARCH_STEPS = 40  # bisection steps on epsilon


@dataclass(frozen=True)
class Guesses:
    """``k`` "in" and ``k`` "out" guesses; ``correct`` of the ``2k`` were right."""

    k: int
    correct: int

    @property
    def made(self) -> int:
        return 2 * self.k


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least ``v`` of ``r`` guesses correct] under the null "(epsilon, delta)-DP"."""
    if v <= 0:
        return 1.0
    p = float(expit(epsilon))
    tail = float(binom.sf(v - 1, r, p))
    if delta == 0.0:
        return min(1.0, tail)
    below = binom.cdf(np.arange(-1, v), r, p)  # P[B <= j] for j = -1 .. v-1
    window = below[-1] - below[-2::-1]  # P[v - i <= B <= v - 1] for i = 1 .. v
    alpha = float(np.max(window / np.arange(1, v + 1)))
    return min(1.0, tail + 2 * m * delta * alpha)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, significance: float) -> float:
    """The largest epsilon whose null the observation rejects at ``significance`` (0 if none)."""
    if p_value(m, r, v, 0.0, delta) >= significance:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < significance:
        low, high = high, 2 * high
        if high > 1e4:  # v = r with delta = 0 and huge r: no finite bound is rejected first
            return low
    for _ in range(SEARCH_STEPS):
        mid = (low + high) / 2
        low, high = (mid, high) if p_value(m, r, v, mid, delta) < significance else (low, mid)
    return low


def guesses(scores: np.ndarray, included: np.ndarray) -> list[Guesses]:
    """The guesses of every ``k`` tried: top-k scores "in", bottom-k "out"."""
    order = np.argsort(scores, kind="stable")
    m = len(scores)
    made = []
    for k in sorted({max(1, math.floor(f * m)) for f in GUESS_FRACTIONS}):
        if 2 * k > m:
            continue
        correct = int(included[order[m - k:]].sum()) + int((~included[order[:k]]).sum())
        made.append(Guesses(k, correct))
    return made


def best_bound(m: int, made: list[Guesses], delta: float, confidence: float) -> tuple[float, Guesses | None]:
    """The largest bound over the guesses, each tested at (1 - confidence) / len(made)."""
    if not made:
        return 0.0, None
    significance = (1.0 - confidence) / len(made)
    bounds = [(epsilon_lower_bound(m, g.made, g.correct, delta, significance), g) for g in made]
    return max(bounds, key=lambda b: b[0])
