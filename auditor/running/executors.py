"""Where an audit's units run: ``local`` (one at a time), ``process`` (several at once on this
machine) or ``ray`` (a Ray cluster, started locally or joined with ``--address``).

Every executor runs the same ``flaudit.auditor.running.jobs.execute`` on the same units, and each unit fixes
its own thread count and seeds, so results do not depend on the executor. Every unit runs in a
watched child process (``supervisor``): a job past its time limit or its memory bound, or whose
worker died, fails alone and the audit goes on. ``run`` yields ``(job, result)`` as each job
finishes, so the runner saves it at once.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol

from flaudit.auditor.running.jobs import Job, Unit, error_result
from flaudit.auditor.running.supervisor import Supervisor, memory_bound
from flaudit.core.errors import ConfigError, FlauditError
from flaudit.core.registry import Registry

Outcome = tuple[Job, dict]


@dataclass(frozen=True)
class ExecutorOptions:
    workers: int | None = None  # units at once; default: CPUs // threads per unit
    address: str | None = None  # ray: the cluster to join ("auto", "ray://host:10001", ...)
    threads: int = 1  # torch threads of each unit (for sizing the pool)
    max_memory_gb: float | None = None  # per job; default: supervisor.memory_bound's share of the RAM


class Executor(Protocol):
    def run(self, units: Iterable[Unit]) -> Iterator[Outcome]: ...


EXECUTORS: Registry[Callable[[ExecutorOptions], Executor]] = Registry("executor")


def make_executor(name: str, options: ExecutorOptions) -> Executor:
    return EXECUTORS.get(name)(options)


def check_executor(name: str, address: str | None, workers: int | None) -> None:
    EXECUTORS.get(name)
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if address is not None and name != "ray":
        raise ConfigError(f"--address joins a Ray cluster; it needs --executor ray (got --executor {name})")


def _default_workers(options: ExecutorOptions) -> int:
    return options.workers or max(1, (os.cpu_count() or 1) // options.threads)


def supervised(workers: int, options: ExecutorOptions) -> Supervisor:
    return Supervisor(workers, memory_bound(options.max_memory_gb, workers))


@EXECUTORS.register("local", "one unit after another, each in a watched child process")
@dataclass
class LocalExecutor:
    options: ExecutorOptions

    def run(self, units: Iterable[Unit]) -> Iterator[Outcome]:
        return supervised(1, self.options).run(units)


@EXECUTORS.register("process", "several watched worker processes at once on this machine (CUDA-safe)")
@dataclass
class ProcessExecutor:
    options: ExecutorOptions

    def run(self, units: Iterable[Unit]) -> Iterator[Outcome]:
        units = list(units)
        workers = min(_default_workers(self.options), max(1, len(units)))
        return supervised(workers, self.options).run(units)


def _unit_on_ray_worker(unit: Unit, max_memory_gb: float | None) -> Iterator[tuple[int, dict]]:
    """A streaming Ray task: the unit in a watched child of the Ray worker, yielding (index,
    result) as each job finishes, so the driver saves every job at once."""
    watched = supervised(1, ExecutorOptions(max_memory_gb=max_memory_gb))
    for job, result in watched.run([unit]):
        yield unit.jobs.index(job), result


def _import_ray():
    try:
        import ray
    except ImportError:
        raise FlauditError(
            "the ray executor needs Ray, which is not installed: pip install ray "
            "(or use --executor local or --executor process)"
        ) from None
    return ray


@EXECUTORS.register("ray", "a Ray cluster: a local one, or the one --address names (pip install ray)")
@dataclass
class RayExecutor:
    options: ExecutorOptions

    def __post_init__(self) -> None:
        _import_ray()  # fail before anything runs or is written

    def _start(self):
        ray = _import_ray()
        if ray.is_initialized():
            return ray, False
        # Workers unpickle the units' component classes by module name: give them our path.
        path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        runtime_env = {"env_vars": {"PYTHONPATH": path}}
        if self.options.address:
            ray.init(address=self.options.address, runtime_env=runtime_env, log_to_driver=False)
        else:
            cpus = self.options.workers * self.options.threads if self.options.workers else None
            ray.init(num_cpus=cpus, include_dashboard=False, runtime_env=runtime_env, log_to_driver=False)
        return ray, True

    def run(self, units: Iterable[Unit]) -> Iterator[Outcome]:
        units = list(units)
        if not units:
            return
        ray, started = self._start()
        try:
            remote = ray.remote(num_cpus=self.options.threads, num_returns="streaming")(_unit_on_ray_worker)
            pending = {remote.remote(unit, self.options.max_memory_gb): (unit, set()) for unit in units}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for stream in ready:
                    unit, finished = pending[stream]
                    try:
                        index, result = ray.get(next(stream))
                    except StopIteration:
                        del pending[stream]
                        continue
                    except Exception as exc:  # noqa: BLE001 - a worker or node lost: its unfinished jobs fail
                        del pending[stream]
                        for i, job in enumerate(unit.jobs):
                            if i not in finished:
                                yield job, {**error_result(exc), "seconds": 0.0}
                        continue
                    finished.add(index)
                    yield unit.jobs[index], result
        finally:
            if started:
                ray.shutdown()
