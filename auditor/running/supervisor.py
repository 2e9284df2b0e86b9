"""Runs units in child processes and watches every job, so that no job can take the run down.

A child runs one unit and reports each job as it starts and as it finishes; the parent keeps
each finished result at once and stops a child whose current job runs past its time limit
(``[audit] job_timeout_s``, ``[[attack]] timeout_s``) or past the memory bound (resident
memory over ``[audit] max_memory_gb``), or notices a child that died. That job is recorded as an
error saying what happened, with its elapsed time; the unit's jobs that had not run yet go to a
fresh child. When the simulation a unit's jobs share is what ran out of time or memory, every
job it serves fails (each would run it again). Children come from a forkserver (cheap forks of a
clean process, CUDA-safe) and die with the parent: the kernel kills them when the forkserver
goes (``PR_SET_PDEATHSIG``), and a watchdog thread when the parent's pid is gone. A forkserver
that died is started again for the next unit.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, Iterable, Iterator

from flaudit.auditor.running.jobs import SIMULATION, Job, Unit, execute

POLL_S = 0.2  # how often time and memory are checked
RAM_SHARE = 0.75  # default memory bound: this share of the machine's RAM, split over the jobs at once
GB = 1024**3
PR_SET_PDEATHSIG = 1
START_ATTEMPTS = 3


def machine_ram() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def memory_bound(max_memory_gb: float | None, workers: int) -> int | None:
    """Bytes one job may hold: ``max_memory_gb``, else RAM_SHARE of the RAM per concurrent job."""
    if max_memory_gb is not None:
        return int(max_memory_gb * GB)
    ram = machine_ram()
    return int(RAM_SHARE * ram / workers) if ram else None


def resident_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0  # gone, or no /proc (then memory is not watched)


def _die_with_parent(parent: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the watchdog below still ends us

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(1)

    threading.Thread(target=watch, name="flaudit-parent-watch", daemon=True).start()


def _child(conn, unit: Unit, parent: int) -> None:
    _die_with_parent(parent)
    for index, result in execute(unit, lambda i: conn.send(("start", i))):
        conn.send(("done", index, result))
    conn.close()


def _preload(units: Iterable[Unit]) -> None:
    """Modules the forkserver imports once (before its first fork), so each child starts warm:
    the job machinery and flaudit's modules of the units' attacks and defenses. Plugins are
    imported by each child instead: the server lives as long as this process, and a plugin
    edited meanwhile must not run stale."""
    modules = {"flaudit.auditor.running.jobs"}
    for unit in units:
        modules.update(c.cls.__module__ for job in unit.jobs for c in (*job.defenses, getattr(job, "attack", None)) if c)
    modules = {m for m in modules if m.split(".")[0] == "flaudit"}
    multiprocessing.get_context("forkserver").set_forkserver_preload(sorted(modules))


def _failure(kind: str, message: str, seconds: float, peak: int) -> dict[str, Any]:
    return {"status": "error", "seconds": seconds, "error": {"type": kind, "message": message, "traceback": ""},
            "peak_rss_bytes": peak or None}


@dataclass
class _Slot:
    """One child running one unit."""

    unit: Unit
    process: Any
    conn: Any
    current: int = SIMULATION
    since: float = field(default_factory=time.monotonic)
    finished: set[int] = field(default_factory=set)
    peak: int = 0

    def limit(self) -> float | None:
        """The time limit of what runs now (the simulation counts against the first job left)."""
        pending = [i for i in range(len(self.unit.jobs)) if i not in self.finished]
        index = self.current if self.current != SIMULATION else (pending[0] if pending else 0)
        return getattr(self.unit.jobs[index], "timeout_s", None)


@dataclass
class Supervisor:
    """Runs units on ``workers`` child processes at once; yields ``(job, result)`` per job."""

    workers: int
    max_memory: int | None  # bytes per job; None: not watched

    def _start(self, unit: Unit) -> _Slot:
        context = multiprocessing.get_context("forkserver")
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=_child, args=(send, unit, os.getpid()), daemon=True, name="flaudit-job")
        for attempt in range(START_ATTEMPTS):
            try:
                process.start()
                break
            except (EOFError, OSError):  # the forkserver died (killed): the next start launches a new one
                if attempt == START_ATTEMPTS - 1:
                    raise
                time.sleep(0.5)
        send.close()
        return _Slot(unit, process, receive)

    def _drain(self, slot: _Slot) -> Iterator[tuple[Job, dict[str, Any]]]:
        while True:
            try:
                if not slot.conn.poll():
                    return
                message = slot.conn.recv()
            except (EOFError, OSError):
                return
            if message[0] == "start":
                slot.current, slot.since = message[1], time.monotonic()
            else:
                slot.finished.add(message[1])
                yield slot.unit.jobs[message[1]], message[2]

    def _problem(self, slot: _Slot) -> tuple[str, str] | None:
        """(error type, message) when the child must be stopped or has died; None while it is fine."""
        elapsed = time.monotonic() - slot.since
        what = "the simulation its jobs share" if slot.current == SIMULATION else "this job"
        limit = slot.limit()
        if limit is not None and elapsed > limit:
            return "JobTimeout", f"{what} ran past its time limit of {limit:g} s (job_timeout_s) and was stopped after {elapsed:.1f} s"
        if self.max_memory is not None:
            rss = resident_bytes(slot.process.pid)
            slot.peak = max(slot.peak, rss)
            if rss > self.max_memory:
                return "MemoryLimitExceeded", (
                    f"{what} needed more than the {self.max_memory / GB:.2f} GB per-job memory bound "
                    f"([audit] max_memory_gb): stopped at {rss / GB:.2f} GB resident after {elapsed:.1f} s"
                )
        if not slot.process.is_alive():
            code = slot.process.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            return "WorkerDied", f"the worker process running {what} died ({how}) after {elapsed:.1f} s"
        return None

    def _stop(self, slot: _Slot, kind: str, message: str) -> tuple[list[tuple[Job, dict]], Unit | None]:
        """Kills the child; the failed job(s) and the unit of the jobs still to run."""
        slot.process.kill()
        slot.process.join(timeout=10)
        slot.conn.close()
        elapsed = time.monotonic() - slot.since
        pending = [i for i in range(len(slot.unit.jobs)) if i not in slot.finished]
        if not pending:
            return [], None
        if slot.current != SIMULATION:
            failed = [slot.current]
        elif kind == "WorkerDied":
            failed = pending[:1]  # a death is not the simulation's doing: the others try again
        else:
            failed = pending  # each of them would run the same simulation again
        results = [(slot.unit.jobs[i], _failure(kind, message, elapsed, slot.peak)) for i in failed]
        return results, slot.unit.without(slot.finished | set(failed))

    def run(self, units: Iterable[Unit]) -> Iterator[tuple[Job, dict[str, Any]]]:
        queue, slots = deque(units), []
        _preload(queue)
        try:
            while queue or slots:
                while queue and len(slots) < self.workers:
                    slots.append(self._start(queue.popleft()))
                wait([s.conn for s in slots] + [s.process.sentinel for s in slots], timeout=POLL_S)
                for slot in list(slots):
                    yield from self._drain(slot)
                    if len(slot.finished) == len(slot.unit.jobs):
                        slots.remove(slot)
                        slot.process.join(timeout=10)
                        slot.conn.close()
                        continue
                    problem = self._problem(slot)
                    if problem is None:
                        continue
                    if problem[0] == "WorkerDied":
                        yield from self._drain(slot)  # results it sent before dying
                    slots.remove(slot)
                    failed, rest = self._stop(slot, *problem)
                    yield from failed
                    if rest is not None:
                        queue.appendleft(rest)
        finally:
            for slot in slots:
                slot.process.kill()
                slot.process.join(timeout=10)
