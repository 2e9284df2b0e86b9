"""Nested progress bars for long steps inside a job (an autoencoder's epochs, an optimiser's
iterations): shown only on a terminal, and only once the step has run a few seconds, so the
run's own bar stays the one a reader watches and logs get none."""

from __future__ import annotations

from typing import Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")
SHOW_AFTER_S = 5.0


def step_bar(iterable: Iterable[T] | None = None, *, desc: str, total: int | None = None, unit: str = "it") -> tqdm:
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, disable=None, delay=SHOW_AFTER_S)
