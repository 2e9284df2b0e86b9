"""Nested progress bars for long steps inside a job (an autoencoder's epochs, an optimiser's
iterations): shown only on a terminal, and only once the step has run a few seconds, so the
run's own bar stays the one a reader watches and logs get none.

Every bar of flaudit's comes from here (``tqdm``), so that all of them take a thread lock:
tqdm's default lock adds a multiprocessing semaphore to each process, which a job's child
stopped for its time or memory leaves behind (``resource_tracker: ... leaked semaphore``
at the end of the run), and the forkserver's children never share it anyway."""

from __future__ import annotations

import threading
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

tqdm.set_lock(threading.RLock())

T = TypeVar("T")
SHOW_AFTER_S = 5.0


def step_bar(iterable: Iterable[T] | None = None, *, desc: str, total: int | None = None, unit: str = "it") -> tqdm:
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, disable=None, delay=SHOW_AFTER_S)
