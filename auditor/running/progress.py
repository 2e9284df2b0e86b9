"""The audit's progress: a bar with its ETA on a terminal, one line per finished job elsewhere
(a CI log gets a readable record instead of carriage-return redraws)."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from flaudit.core.progress import tqdm

from flaudit.auditor.running.results import JobResult


def job_label(job: Any) -> str:
    """The cell id of an attack job; ``utility scenario/defense`` or ``privacy_audit
    scenario/defense`` for a column's own simulations."""
    return getattr(job, "cell_id", None) or f"{job.kind} {job.scenario_label}/{job.defense_label}"


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """Counts finished jobs out of ``total`` (``initial`` already done, e.g. resumed)."""

    def __init__(self, total: int, initial: int, enabled: bool, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total, self.done, self.failed, self.fresh = total, initial, 0, 0
        self.enabled, self.began = enabled, time.perf_counter()
        terminal = enabled and self.stream.isatty()
        self.bar = tqdm(total=total, initial=initial, desc="audit jobs", unit="job", file=self.stream) if terminal else None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def finished(self, job: Any, result: JobResult) -> None:
        self.done, self.fresh = self.done + 1, self.fresh + 1
        self.failed += not result.ok
        if self.bar is not None:
            self.bar.set_postfix(failed=self.failed, refresh=False)
            self.bar.update(1)
        elif self.enabled:
            elapsed = time.perf_counter() - self.began
            eta = elapsed / self.fresh * (self.total - self.done)
            print(
                f"[{self.done}/{self.total}] {job_label(job)}: {result.status} in {result.seconds:.1f} s"
                f" (elapsed {clock(elapsed)}, eta {clock(eta)}, failed {self.failed})",
                file=self.stream, flush=True,
            )
