"""Where an audit's units run: ``local`` (this process), ``process`` (a pool on this machine)
or ``ray`` (a Ray cluster, started locally or joined with ``--address``).

Every executor runs the same ``flaudit.auditor.running.jobs.execute`` on the same units, and each unit fixes
its own thread count and seeds, so results do not depend on the executor. ``run`` yields
``(unit, results)`` as units finish; an executor-level failure (a worker that died, a lost
node) becomes an error result for the jobs of that unit, and the audit goes on.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol

from flaudit.auditor.running.jobs import Unit, error_result, execute
from flaudit.core.errors import ConfigError, FlauditError
from flaudit.core.registry import Registry

Outcome = tuple[Unit, list[dict]]


@dataclass(frozen=True)
class ExecutorOptions:
    workers: int | None = None  # units at once; default: CPUs // threads per unit
    address: str | None = None  # ray: the cluster to join ("auto", "ray://host:10001", ...)
    threads: int = 1  # torch threads of each unit (for sizing the pool)


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


def _failed(unit: Unit, exc: BaseException) -> Outcome:
    return unit, [{**error_result(exc), "seconds": 0.0} for _ in unit.jobs]


def _default_workers(options: ExecutorOptions) -> int:
    return options.workers or max(1, (os.cpu_count() or 1) // options.threads)


@EXECUTORS.register("local", "one unit after another in this process")
@dataclass
class LocalExecutor:
    options: ExecutorOptions

    def run(self, units: Iterable[Unit]) -> Iterator[Outcome]:
        for unit in units:
            yield unit, execute(unit)


@EXECUTORS.register("process", "a pool of worker processes on this machine (spawned, so CUDA-safe)")
@dataclass
class ProcessExecutor:
    options: ExecutorOptions

    def run(self, units: Iterable[Unit]) -> Iterator[Outcome]:
        units = list(units)
        if not units:
            return
        workers = min(_default_workers(self.options), len(units))
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            pending = {pool.submit(execute, unit): unit for unit in units}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    unit = pending.pop(future)
                    try:
                        yield unit, future.result()
                    except Exception as exc:  # noqa: BLE001 - e.g. a worker killed by the OS
                        yield _failed(unit, exc)


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
            remote = ray.remote(num_cpus=self.options.threads)(execute)
            pending = {remote.remote(unit): unit for unit in units}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    unit = pending.pop(ref)
                    try:
                        yield unit, ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - a worker or node lost
                        yield _failed(unit, exc)
        finally:
            if started:
                ray.shutdown()
