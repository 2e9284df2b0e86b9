"""Runs an audit: check the config and the run folder, plan the matrix, group its jobs into
units, run them on an executor with a progress bar, persist each job's result as it arrives,
then write the scorecard and reports and mark the folder finished."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flaudit.auditor.running import catalog as catalogs
from flaudit.auditor.running.catalog import Catalog
from flaudit.auditor.running.config import AuditConfig
from flaudit.auditor.running.executors import ExecutorOptions, check_executor, make_executor
from flaudit.auditor.running.jobs import plan_units
from flaudit.auditor.running.manifest import manifest, now
from flaudit.auditor.results.outputs import write_all
from flaudit.auditor.running.plan import AuditPlan, build_plan
from flaudit.auditor.running.progress import Progress
from flaudit.auditor.results.scorecard import build
from flaudit.auditor.running import provenance
from flaudit.auditor.running.folder import RunFolder, check_out
from flaudit.auditor.running.store import ARTIFACTS, CELLS, ResultStore, atomic_write, read_finished


@dataclass(frozen=True)
class RunOptions:
    out: Path
    executor: str = "local"
    address: str | None = None
    workers: int | None = None
    resume: bool = False
    progress: bool = True


@dataclass(frozen=True)
class AuditRun:
    plan: AuditPlan
    scorecard: dict[str, Any]
    resumed_jobs: int


def _provenance(config: AuditConfig, out: Path) -> dict[str, Any]:
    """The manifest's tamper evidence; the config as written is also kept in the folder."""
    name, text = provenance.config_copy(config)
    atomic_write(out / name, text)
    return {
        "inputs": {"config_sha256": provenance.sha256_bytes(text), "config_file": name,
                   "data": provenance.data_identity(config)},
        "code": provenance.code_identity(),
        "outputs": provenance.outputs(out, (CELLS, ARTIFACTS)),
    }


def run_audit(config: AuditConfig, options: RunOptions, catalog: Catalog | None = None) -> AuditRun:
    """Checks everything first (config, names, data, executor), then runs the jobs that are not
    already finished in ``options.out`` (with ``resume``), then writes the outputs."""
    check_executor(options.executor, options.address, options.workers)
    check_out(options.out)
    plan = build_plan(config, catalog or catalogs.registered())
    executor = make_executor(
        options.executor,
        ExecutorOptions(options.workers, options.address, plan.threads, config.options.max_memory_gb),
    )
    wanted = {job.key for job in plan.jobs}
    results = {k: r for k, r in read_finished(options.out).items() if k in wanted} if options.resume else {}
    started = now()
    with RunFolder(options.out, config.config_hash, started) as folder:
        return _run(plan, config, options, executor, results, folder)


def _run(plan: AuditPlan, config: AuditConfig, options: RunOptions, executor, results: dict, folder: RunFolder) -> AuditRun:
    store = ResultStore(options.out, options.resume)
    started, began = folder.started, time.perf_counter()
    resumed = len(results)
    units = plan_units([job for job in plan.jobs if job.key not in results], options.out.absolute())
    with Progress(len(plan.jobs), resumed, options.progress) as progress:
        for job, result in executor.run(units):
            results[job.key] = store.save(job, result)
            progress.finished(job, results[job.key])
    facts = manifest(
        config_hash=config.config_hash,
        seeds=list(config.seeds),
        started=started,
        finished=now(),
        duration_seconds=time.perf_counter() - began,
        executor=options.executor,
        workers=options.workers,
        threads=plan.threads,
        resumed_jobs=resumed,
        registered={"attacks": plan.catalog.attacks.names(), "defenses": plan.catalog.defenses.names()},
        **_provenance(config, options.out),
    )
    document = build(plan, results, facts)
    write_all(document, options.out)
    folder.finish(facts["finished"])
    return AuditRun(plan, document, resumed)
