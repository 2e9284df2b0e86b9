"""Throughput of a small fixed audit: the default audit's ``digits-cnn`` scenario cut to 4
clients, 1 round and one seed, the ``none`` baseline and 2 defense columns (dp, secagg) x 2
attacks (labels, rtf), on the local executor. One group, four members:

* ``audit`` (candidate): ``run_audit`` end to end; ``extra_info["jobs_per_s"]`` is the number
  of jobs (utility runs and attack cells) over its median time;
* ``preparation`` (candidate): ``build_plan``, what runs before the first job: the config
  resolved against the registries and the preflight (the scenario's world built, every defense
  column composed on it);
* ``scoring`` (candidate): what runs after the last job: ``build`` (intervals over seeds,
  risk, schema validation) and ``write_all`` (scorecard.json, report.html, summary.md);
* ``simulation`` (floor): one honest FedAvg run of the scenario, world included: the least
  work one unit of the audit does. "audit / simulation" is the audit's cost in simulations.

    .venv/bin/python -m pytest benches/bench_audit.py
"""

from __future__ import annotations

import tomllib

import pytest

from flaudit.auditor.results.outputs import write_all
from flaudit.auditor.results.scorecard import build
from flaudit.auditor.running.catalog import registered
from flaudit.auditor.running.config import audit_from_document
from flaudit.auditor.running.plan import build_plan
from flaudit.auditor.running.runner import RunOptions, run_audit
from flaudit.auditor.running.store import ResultStore
from flaudit.scenarios.fedavg import FedAvgSimulation
from flaudit.scenarios.scenario import build_world

AUDIT = """
[audit]
name = "bench: small fixed audit"
attacked_round = -1

[[scenario]]
label = "digits-cnn"
dataset = "digits"
model = "cnn"
clients = 4
rounds = 1
batch_size = 8
lr = 0.05
partition = "dirichlet"
alpha = 0.5
auxiliary_samples = 100
seeds = [0]

[[defense]]
name = "dp"
[[defense]]
name = "secagg"

[[attack]]
name = "labels"
[[attack]]
name = "rtf"
"""
# All four members are the same single-threaded training and bookkeeping; the ratios move
# with the machine's Python speed against its BLAS speed, a little.
TOLERANCE = 0.4


@pytest.fixture(scope="module")
def audit():
    config = audit_from_document(tomllib.loads(AUDIT), "<bench_audit>", None)
    return config, registered()


@pytest.fixture(scope="module")
def finished(audit, tmp_path_factory):
    """One finished run of the audit: its plan, job results and manifest (scoring's input)."""
    config, catalog = audit
    out = tmp_path_factory.mktemp("finished")
    run = run_audit(config, RunOptions(out, progress=False), catalog)
    results = ResultStore(out, resume=True).finished()
    assert len(results) == len(run.plan.jobs), "every job of the bench audit must succeed"
    return run.plan, results, run.scorecard["manifest"]


def _declare(benchmark, label, role, jobs):
    benchmark.group = f"audit digits-cnn, {jobs} jobs, local executor, cpu"
    benchmark.extra_info.update(role=role, label=label, tolerance=TOLERANCE)


def test_audit(benchmark, audit, finished, tmp_path):
    config, catalog = audit
    jobs = len(finished[0].jobs)
    _declare(benchmark, "audit", "candidate", jobs)
    benchmark.pedantic(lambda: run_audit(config, RunOptions(tmp_path, progress=False), catalog),
                       rounds=2, warmup_rounds=0, iterations=1)
    benchmark.extra_info["jobs_per_s"] = jobs / benchmark.stats.stats.median


def test_preparation(benchmark, audit, finished):
    config, catalog = audit
    _declare(benchmark, "preparation", "candidate", len(finished[0].jobs))
    benchmark.pedantic(build_plan, args=(config, catalog), rounds=5, warmup_rounds=1, iterations=1)


def test_scoring(benchmark, finished, tmp_path):
    plan, results, manifest = finished
    _declare(benchmark, "scoring", "candidate", len(plan.jobs))
    benchmark.pedantic(lambda: write_all(build(plan, results, manifest), tmp_path), rounds=5, warmup_rounds=1, iterations=1)


def test_simulation(benchmark, finished):
    plan = finished[0]
    scenario = plan.config.scenarios[0].config
    _declare(benchmark, "simulation", "floor", len(plan.jobs))
    benchmark.pedantic(lambda: FedAvgSimulation(build_world(scenario)).run(progress=False),
                       rounds=5, warmup_rounds=1, iterations=1)
