"""Preparations (``toolkit.preparation``, ``running.prepared``): built once per key, shared by
worker processes and ``--resume`` through the run folder, the caller's random stream left as it
was, and an audit's numbers the same with or without them."""

from __future__ import annotations

import multiprocessing
import time
import tomllib
from pathlib import Path

import torch

from flaudit.auditor.attacks.toolkit.preparation import TENSOR, Preparation, Preparations
from flaudit.auditor.running import catalog
from flaudit.auditor.running.config import audit_from_document
from flaudit.auditor.running.jobs import execute, plan_units
from flaudit.auditor.running.plan import build_plan
from flaudit.auditor.running.prepared import PREPARED, FolderStore
from flaudit.auditor.running.runner import RunOptions, run_audit
from flaudit.auditor.running.store import CELLS


def noise(log: Path, pause: float = 0.0) -> Preparation[torch.Tensor]:
    """A preparation whose build draws from torch's global RNG and logs each build."""

    def build() -> torch.Tensor:
        with log.open("a") as handle:
            handle.write("built\n")
        time.sleep(pause)
        return torch.rand(3)

    return Preparation("test.noise", {"size": 3}, build, TENSOR)


def builds(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_built_once_then_read_back_leaving_the_callers_stream_alone(tmp_path):
    log, store = tmp_path / "log", FolderStore(tmp_path / PREPARED)
    torch.manual_seed(5)
    first = Preparations(store).get(noise(log))
    after_build = torch.rand(2)
    torch.manual_seed(5)
    again = Preparations(store).get(noise(log))  # another process's view: read from the folder
    assert torch.equal(again, first) and builds(log) == 1
    assert torch.equal(torch.rand(2), after_build)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(2), after_build)  # as if nothing had been prepared
    assert torch.equal(Preparations().get(noise(log)), first)  # no store: built again, the same
    [stored] = (tmp_path / PREPARED).glob("*.pt")
    stored.write_bytes(b"not a torch file")
    assert torch.equal(Preparations(store).get(noise(log)), first) and builds(log) == 3  # damaged: rebuilt


def _worker(folder: Path, log: Path, results: multiprocessing.Queue) -> None:
    results.put(Preparations(FolderStore(folder)).get(noise(log, pause=0.5)).tolist())


def test_workers_at_once_build_it_once(tmp_path):
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    workers = [context.Process(target=_worker, args=(tmp_path / PREPARED, tmp_path / "log", results)) for _ in range(3)]
    for worker in workers:
        worker.start()
    values = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert builds(tmp_path / "log") == 1
    assert values[0] == values[1] == values[2]


AUDIT = """
[audit]
threads = 1

[[scenario]]
dataset = "digits"
model = "cnn"
clients = 2
rounds = 1
batch_size = 8
max_samples = 48
auxiliary_samples = 40
seeds = [0]

[[defense]]
name = "quantize"

[[attack]]
name = "scale_mia"
ae_epochs = 2

[[attack]]
name = "ggl"
evaluations = 12
prior_steps = 10

[[attack]]
name = "rtf"
bins = 64

[[attack]]
name = "peer"
prior = "local_autoencoder"
prior_steps = 10
iterations = 2
"""


def scores(results: dict) -> dict:
    """Each attack job's metrics without its timings."""
    return {key: {m: v for m, v in r["metrics"].items() if not m.endswith("_seconds")}
            for key, r in results.items() if key.startswith("attack-")}


def test_cells_share_preparations_with_the_same_scores_and_resume_reuses_them(tmp_path):
    config = audit_from_document(tomllib.loads(AUDIT), "<test>")
    plan = build_plan(config, catalog.registered())
    alone = {}  # every unit prepares its own: what the audit computed before preparations were shared
    for unit in plan_units(plan.jobs):
        alone.update({unit.jobs[index].key: result for index, result in execute(unit)})
    run = run_audit(config, RunOptions(tmp_path, progress=False))
    shared = {job.key: run_result for job in plan.jobs if (run_result := stored(tmp_path, job.key)) is not None}
    assert all(r["status"] == "ok" for r in alone.values()) and len(shared) == len(alone)
    assert scores(shared) == scores(alone)
    prepared = {p.name: p.stat().st_mtime_ns for p in (tmp_path / PREPARED).glob("*.pt")}
    # one each, for both columns: Scale-MIA's phase one, GGL's generator, RTF's round-0 calibration, the peer's prior
    assert len(prepared) == 4
    scale_mia = next(j for j in plan.jobs if getattr(j, "cell_id", "") == "digits-cnn/quantize/scale_mia")
    (tmp_path / CELLS / f"{scale_mia.key}.json").unlink()
    run_audit(config, RunOptions(tmp_path, resume=True, progress=False))
    assert stored(tmp_path, scale_mia.key)["metrics"]["recovery_rate"] == shared[scale_mia.key]["metrics"]["recovery_rate"]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / PREPARED).glob("*.pt")} == prepared  # read, not rebuilt
    run_audit(config, RunOptions(tmp_path, progress=False))  # a fresh run prepares afresh
    assert all(p.stat().st_mtime_ns != prepared[p.name] for p in (tmp_path / PREPARED).glob("*.pt"))


def stored(out: Path, key: str) -> dict | None:
    import json

    path = out / CELLS / f"{key}.json"
    return json.loads(path.read_text())["result"] if path.exists() else None
