"""The jobs of an audit and the units that run them, on any executor.

A ``UtilityJob`` is one (scenario, defense column, seed): FedAvg with an honest server, its
final test accuracy and the defenses' own figures (epsilon, ...); the ``none`` column is the
baseline. An ``AttackJob`` is one cell at one seed: the attack gets its threat model's view of
the attacked round and its output is scored. Jobs are what is stored and resumed; their keys
digest everything that determines their result.

A ``Unit`` is what an executor runs: one simulation and the jobs it serves. Attacks that do not
shape the model (no ``prepare`` override) observe the same honest simulation that measures
utility, so a (scenario, defense, seed) is simulated once however many attacks there are; an
attack that prepares the server's model gets a simulation of its own, and so does each
``PrivacyAuditJob`` (``flaudit.auditor.privacy_audit``: its canaries perturb the model; its
unit has the same interface). Before each attack the
global RNGs are re-seeded and the view is copied, so a job's result does not depend on which
unit ran it. Jobs carry resolved component classes, so a worker needs no registry, and
``execute`` never raises: failures become results with status ``error``.

Every attack job also scores the attack's nulls (``Attack.nulls``: its own data and its prior,
no observation) on the same targets, matching and criterion, and records the leakage.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import resource
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import numpy as np
import torch

from flaudit.auditor.attacks.base import Attack, AttackerKnowledge, AttackOutput
from flaudit.auditor.attacks.toolkit.preparation import Preparations
from flaudit.auditor.privacy_audit.job import PrivacyAuditJob
from flaudit.auditor.running.column_job import ColumnJob
from flaudit.auditor.results.grids import GridRow, comparison_rows, rows_png
from flaudit.core.errors import InvalidUpdateError
from flaudit.core.jsonable import digest, to_json
from flaudit.auditor.metrics.leakage import Leakage, against_nulls
from flaudit.auditor.metrics.measures import Matching
from flaudit.auditor.metrics.scoring import AttackOutputError, Criterion, Scored, score_output
from flaudit.auditor.running.prepared import folder_store
from flaudit.auditor.running.threat_views import view_of
from flaudit.defenses.base import compose
from flaudit.scenarios.fedavg import RoundRecord
from flaudit.scenarios.kinds import scenario_kind
from flaudit.scenarios.scenario import FLWorld, ScenarioConfig, derive_seed

TRACEBACK_CHARS = 2000
SEED_STREAM = 7  # derive_seed(scenario seed, SEED_STREAM, step) seeds the global RNGs
SIMULATION_STEP, ATTACK_STEP, NULL_STEP = 0, 1, 2
REFERENCE_POOL = 2000  # most non-member (test split) images a match must beat
SIMULATION = -1  # Unit.stream's started() index while the unit simulates (before any job runs)


@dataclass(frozen=True)
class ResolvedComponent:
    """A registered attack or defense class with its checked ``Params``."""

    name: str
    cls: type
    params: Any

    def build(self) -> Any:
        if self.cls.name != self.name:  # a worker that imported a plugin class afresh never registered it
            self.cls.name = self.name
        return self.cls(self.params)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "params": to_json(self.params)}


@dataclass(frozen=True)
class UtilityJob(ColumnJob):
    kind: ClassVar[str] = "utility"
    timeout_s: float | None = None  # a limit, not part of the result: not in the key


@dataclass(frozen=True)
class AttackJob:
    kind: ClassVar[str] = "attack"
    cell_id: str
    scenario: ScenarioConfig
    defenses: tuple[ResolvedComponent, ...]
    attack: ResolvedComponent
    attacked_round: int  # resolved, 0-based
    attacker_client: int | None
    psnr_threshold: float
    margin_db: float
    grid_images: int
    threads: int
    timeout_s: float | None = None  # a limit, not part of the result: not in the key

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "cell_id": self.cell_id, "scenario": to_json(self.scenario),
            "defenses": [d.describe() for d in self.defenses], "attack": self.attack.describe(),
            "attacked_round": self.attacked_round, "attacker_client": self.attacker_client,
            "psnr_threshold": self.psnr_threshold, "margin_db": self.margin_db, "grid_images": self.grid_images, "threads": self.threads,
        }

    @property
    def key(self) -> str:
        return f"attack-{digest(self.describe())}"

    @property
    def shapes_model(self) -> bool:
        """True when the attack may prepare the server's model or an adversarial client (then it
        needs its own run)."""
        return self.attack.cls.prepare is not Attack.prepare

    def attack_on(
        self, world: FLWorld, record: RoundRecord, knowledge: AttackerKnowledge, attack: Attack, private_copy: bool
    ) -> dict[str, Any]:
        """``private_copy``: hand the attack a copy of the view, because another attack will read
        the same record after it (an attack may modify what it is given)."""
        view = view_of(attack.threat_model, record, self.attacker_client)
        view = copy.deepcopy(view) if private_copy else view
        seed_everything(derive_seed(self.scenario.seed, SEED_STREAM, ATTACK_STEP))
        began = time.perf_counter()
        output = attack.reconstruct(view, knowledge)
        if not isinstance(output, AttackOutput):
            raise AttackOutputError(f"reconstruct returned {type(output).__name__}, not an AttackOutput")
        attack_seconds = time.perf_counter() - began
        output, unscored = scored_targets(output, record)
        if unscored is not None:
            return unscored_result(output, unscored, attack_seconds, self.attacked_round, record, self.grid_images)
        began = time.perf_counter()
        cell = score_cell(attack, view, knowledge, output, world, record, self.scenario.seed, self.psnr_threshold, self.margin_db)
        scored, null_scored, leakage = cell.scored, cell.nulls, cell.leakage
        rated_by = [name for name, value in (("images", leakage.leakage), ("labels", leakage.label_leakage))
                    if value is not None and (name == "images" or attack.label_step is None)]
        result = {
            "status": "ok",
            "metrics": {**leakage.metrics(), "attack_seconds": attack_seconds},
            "null": leakage.null_name,
            "rated_by": rated_by,
            "attacked_round": self.attacked_round,
            "target_clients": list(output.target_clients),
            "diagnostics": to_json(output.diagnostics),
            "test_accuracy_at_attack": record.test_accuracy,
            "null_seconds": time.perf_counter() - began,
        }
        if scored.matching is not None:
            result["grid_png"] = rows_png(comparison_rows(
                scored.targets, scored.reconstructions, scored.matching, self.grid_images,
                _null_row(null_scored.get(leakage.null_name), scored, leakage.null_name)))
        return result


@dataclass(frozen=True)
class ScoredCell:
    """An attack's output and its nulls, scored on the same targets, matching and criterion."""

    scored: Scored
    nulls: dict[str, Scored]
    leakage: Leakage


def score_cell(
    attack: Attack, view: Any, knowledge: AttackerKnowledge, output: AttackOutput, world: FLWorld, record: RoundRecord,
    seed: int, psnr_threshold: float, margin_db: float,
) -> ScoredCell:
    """Scores ``output`` as the audit scores a cell: identifiable recovery (``psnr_threshold``
    and ``margin_db`` over the non-member pool) against the attack's nulls, seeded from ``seed``."""
    null_seed = derive_seed(seed, SEED_STREAM, NULL_STEP)
    seed_everything(null_seed)
    guesses = attack.nulls(view, knowledge, output, null_seed)
    fill = next((g.output.images[0] for g in guesses if g.name == "mean" and len(g.output.images)), None)
    criterion = Criterion(psnr_threshold, reference_pool(world), margin_db, fill)
    scored = score_output(output, world, record.ground_truth, criterion)
    nulls = {g.name: score_output(g.output, world, record.ground_truth, criterion) for g in guesses}
    return ScoredCell(scored, nulls, against_nulls(scored.scores, {name: s.scores for name, s in nulls.items()}))


def _null_row(null: Scored | None, scored: Scored, name: str | None) -> tuple[str, torch.Tensor, Matching] | None:
    """The grid's null row: the guesses of the null the leakage was measured against, when
    they were matched to the same targets."""
    if null is None or null.matching is None or not torch.equal(null.targets, scored.targets):
        return None
    return name, null.reconstructions, null.matching


def scored_targets(output: AttackOutput, record: Any) -> tuple[AttackOutput, str | None]:
    """Keeps the targets with ground truth. A round may lack some participants' data (a
    recorded federation knows only its canary's batches): an output about them alone is
    unscored (the reason is returned), one about some of them is scored on those."""
    participants = getattr(getattr(record, "server_view", None), "participants", ())
    unknown = [c for c in output.target_clients if c in participants and c not in record.ground_truth]
    if not unknown:
        return output, None
    known = tuple(c for c in output.target_clients if c not in unknown)
    if known:
        return dataclasses.replace(output, target_clients=known), None
    return output, f"no ground truth for client(s) {unknown}: the reconstructions are shown unscored"


def unscored_result(output: AttackOutput, reason: str, attack_seconds: float, attacked_round: int, record: Any,
                    grid_images: int) -> dict[str, Any]:
    images = output.images.detach().float().cpu().clamp(0, 1)[:grid_images]
    result = {
        "status": "ok", "unscored": reason, "null": None, "rated_by": [],
        "metrics": {"attack_seconds": attack_seconds, "n_reconstructed": int(output.images.shape[0])},
        "attacked_round": attacked_round, "target_clients": list(output.target_clients),
        "diagnostics": to_json(output.diagnostics), "test_accuracy_at_attack": record.test_accuracy,
    }
    if len(images):  # no originals to show
        result["grid_png"] = rows_png([GridRow("unscored", list(images))])
    return result


def reference_pool(world: FLWorld) -> torch.Tensor:
    """Non-members the auditor holds and no attacker sees: the test split (at most
    ``REFERENCE_POOL`` images, a seeded draw)."""
    test = world.data.test.images
    if len(test) <= REFERENCE_POOL:
        return test
    keep = torch.randperm(len(test), generator=torch.Generator().manual_seed(world.config.seed))[:REFERENCE_POOL]
    return test[keep.sort().values]


Job = UtilityJob | AttackJob | PrivacyAuditJob


@dataclass(frozen=True)
class Unit:
    """One simulation of ``scenario`` under ``defenses`` and the jobs it serves: the utility
    job (if still to do) and attacks; at most one attack, alone, may shape the model."""

    scenario: ScenarioConfig
    defenses: tuple[ResolvedComponent, ...]
    threads: int
    utility: UtilityJob | None
    attacks: tuple[AttackJob, ...]
    run_folder: Path | None = None  # whose prepared/ the attacks share (None: each unit prepares its own)

    @property
    def jobs(self) -> tuple[Job, ...]:
        return ((self.utility,) if self.utility else ()) + self.attacks

    def without(self, finished: set[int]) -> "Unit | None":
        """The unit of the jobs not in ``finished`` (indices into ``jobs``); None when none is left."""
        left = [job for i, job in enumerate(self.jobs) if i not in finished]
        if not left:
            return None
        utility = self.utility if self.utility in left else None
        attacks = tuple(j for j in left if j is not utility)
        return Unit(self.scenario, self.defenses, self.threads, utility, attacks, self.run_folder)

    def stream(self, started: Callable[[int], None]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Runs the simulation (after ``started(SIMULATION)``), then each job (after
        ``started(index)``), yielding ``(index into jobs, result)`` as each finishes."""
        started(SIMULATION)
        kind = scenario_kind(self.scenario.kind)
        world = kind.build_world(self.scenario)
        defenses = [d.build() for d in self.defenses]
        knowledge = AttackerKnowledge.of(world, Preparations(folder_store(self.run_folder)))
        hooks = compose(defenses, world)
        attacks = [job.attack.build() for job in self.attacks]
        prepare_seconds = 0.0
        if any(job.shapes_model for job in self.attacks):
            began = time.perf_counter()
            attacker = self.attacks[0].attacker_client  # None: client 0 (the peer view's default under full participation)
            hooks.install(attacks[0].prepare(knowledge), 0 if attacker is None else attacker)
            prepare_seconds = time.perf_counter() - began
        wanted = {job.attacked_round for job in self.attacks}
        rounds = self.scenario.rounds if self.utility else max(wanted) + 1
        simulation, records, accuracies = kind.simulation(world, hooks), {}, []
        began = time.perf_counter()
        for round_index in range(rounds):
            try:
                record = simulation.run_round(round_index)
            except InvalidUpdateError as exc:
                if not any(job.shapes_model for job in self.attacks):
                    raise
                for i, job in enumerate(self.attacks):  # a shaping unit has one job, and no utility job
                    yield i, diverged_result(job, world, round_index, exc)
                return
            accuracies.append(record.test_accuracy)
            if round_index in wanted:
                records[round_index] = record
        timing = {"prepare_seconds": prepare_seconds, "simulation_seconds": time.perf_counter() - began}
        if self.utility:
            figures = {d.name: to_json(d.figures()) for d in defenses}
            yield 0, {"status": "ok", "test_accuracy": accuracies[-1], "test_accuracy_by_round": accuracies,
                      "defense_figures": figures, "seconds": timing["simulation_seconds"]}
        offset = 1 if self.utility else 0
        last = {job.attacked_round: i for i, job in enumerate(self.attacks)}
        for i, (job, attack) in enumerate(zip(self.attacks, attacks)):
            started(offset + i)
            began = time.perf_counter()
            try:
                private_copy = i != last[job.attacked_round]
                result = job.attack_on(world, records[job.attacked_round], knowledge, attack, private_copy)
                result["timing"] = {**timing, "null_seconds": result.pop("null_seconds", 0.0)}  # unscored: no null ran
            except Exception as exc:  # noqa: BLE001 - one failing attack must not take the others down
                result = error_result(exc, plugin_origin(attack))
            yield offset + i, {**result, "seconds": time.perf_counter() - began}


DIVERGED = "the crafted model diverged: clients would notice"


def diverged_result(job: AttackJob, world: FLWorld, round_index: int, exc: InvalidUpdateError) -> dict[str, Any]:
    """The attack's failure, not an error of the audit: the model it crafted made a client's
    local training produce non-finite values (a real client would notice), so it recovered
    none of the samples of the clients it was sent to (the roster)."""
    roster = {client.client_id: len(client.train_indices) for client in world.clients}
    return failed_result(job, DIVERGED, {"diverged_in_round": round_index, "invalid_update": str(exc)}, roster)


def failed_result(job: AttackJob, failure: str, details: dict[str, Any], roster: dict[int, int]) -> dict[str, Any]:
    """A crafted-model attack's failure (``failure``: why, e.g. ``DIVERGED``): it recovered none
    of the samples of ``roster`` (client id -> samples), and a null would recover none either."""
    return {
        "status": "ok",
        "metrics": {"recovery_rate": 0.0, "n_recovered": 0, "n_targets": sum(roster.values()), "n_reconstructed": 0,
                    "attack_seconds": 0.0, "null_recovery_rate": 0.0, "n_null_recovered": 0, "leakage": 0.0},
        "null": None,  # it returned nothing, and so would any null
        "rated_by": ["images"],
        "attacked_round": job.attacked_round,
        "target_clients": sorted(roster),
        "diagnostics": {"failure": failure, **details},
        "test_accuracy_at_attack": None,
    }


def plan_units(jobs: list[Job], run_folder: Path | None = None) -> list[Unit]:
    """Groups jobs into units: per (scenario, defenses, seed), the utility job and the attacks
    that do not shape the model share one simulation; each model-shaping attack runs alone.
    Their attacks share their preparations through ``run_folder``."""
    groups: dict[str, dict[str, Any]] = {}
    alone = []
    for job in jobs:
        if isinstance(job, PrivacyAuditJob):  # canaries shape the model: a simulation of its own
            alone.append(job.unit())
            continue
        if isinstance(job, AttackJob) and job.shapes_model:
            alone.append(Unit(job.scenario, job.defenses, job.threads, None, (job,), run_folder))
            continue
        key = digest([to_json(job.scenario), [d.describe() for d in job.defenses], job.threads])
        group = groups.setdefault(key, {"first": job, "utility": None, "attacks": []})
        if isinstance(job, UtilityJob):
            group["utility"] = job
        else:
            group["attacks"].append(job)
    shared = [
        Unit(g["first"].scenario, g["first"].defenses, g["first"].threads, g["utility"], tuple(g["attacks"]), run_folder)
        for g in groups.values()
    ]
    return shared + alone


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_resident_bytes() -> int | None:
    """The most resident memory this process has held (since it was forked: a unit's child),
    None where the OS does not say (Linux reports kilobytes)."""
    try:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except (OSError, ValueError):
        return None


def execute(unit: Unit, started: Callable[[int], None] = lambda index: None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Runs ``unit`` with its thread count and seeded RNGs, yielding ``(index, result)`` per job
    as each finishes, with the process's peak resident memory so far (the unit's simulation and
    its jobs up to this one: what running this job needed); never raises: a failed simulation
    fails every job not yet finished."""
    threads = torch.get_num_threads()
    torch.set_num_threads(unit.threads)
    seed_everything(derive_seed(unit.scenario.seed, SEED_STREAM, SIMULATION_STEP))
    began, finished = time.perf_counter(), 0
    try:
        for index, result in unit.stream(started):
            finished = index + 1
            yield index, {"seconds": time.perf_counter() - began, **result, "peak_rss_bytes": peak_resident_bytes()}
    except Exception as exc:  # noqa: BLE001 - a failing unit is recorded and the audit goes on
        plugins = [origin for d in unit.defenses if (origin := plugin_origin(d.cls))]
        origin = f"the simulation under {', '.join(plugins)}" if plugins else None
        for index in range(finished, len(unit.jobs)):
            yield index, {"seconds": time.perf_counter() - began, **error_result(exc, origin)}
    finally:
        torch.set_num_threads(threads)


def plugin_origin(component: Any) -> str | None:
    """"attack plugin 'pkg.mod:Cls' (pkg.mod.Cls)" for an attack or defense (instance or
    class) defined outside flaudit, else None: its errors are the user's to fix, so they name it."""
    cls = component if isinstance(component, type) else type(component)
    if cls.__module__.split(".")[0] == "flaudit":
        return None
    return f"{cls.kind} plugin {cls.name!r} ({cls.__module__}.{cls.__qualname__})"


def error_result(exc: BaseException, origin: str | None = None) -> dict[str, Any]:
    text = "".join(traceback.format_exception(exc))
    message = str(exc) or type(exc).__name__
    if origin is not None:
        message = f"{origin}: {message}"
    error = {"type": type(exc).__name__, "message": message, "traceback": text[-TRACEBACK_CHARS:]}
    return {"status": "error", "error": error}
