"""``flaudit run --plan``: what an audit would run and how long it would take, written before
anything runs (and writing nothing).

The estimate is calibrated from finished jobs in the run folder (a previous or partial run of
the same attacks with the same parameters on this machine): mean seconds per attack (its own reconstruction, plus the
preparation and simulation of a model-shaping attack's private run) and per utility
simulation. Kinds without a finished job are listed as uncalibrated. ``--executor ray
--workers N`` is estimated by longest-first scheduling of the simulation units on N workers.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

from flaudit.auditor.privacy_audit.job import PrivacyAuditJob
from flaudit.auditor.running.jobs import AttackJob, Job, Unit, plan_units
from flaudit.core.jsonable import digest, to_json
from flaudit.auditor.running.plan import AuditPlan, ScenarioMatrix
from flaudit.auditor.running.progress import clock
from flaudit.auditor.running.results import AttackOutcome, PrivacyAuditOutcome
from flaudit.auditor.running.store import stored
from flaudit.auditor.running.supervisor import memory_bound

MB = 1024**2
UTILITY = "utility (simulation)"
PRIVACY_AUDIT = "dp audit (simulation)"


def _shape(matrix: ScenarioMatrix) -> str:
    return f"{len(matrix.defenses)} defense(s) x {len(matrix.attacks)} attack(s)"


def job_kind(job: Job) -> str:
    if isinstance(job, AttackJob):
        return job.attack.name
    return PRIVACY_AUDIT if isinstance(job, PrivacyAuditJob) else UTILITY


def job_cost_key(kind: str, attack: dict | None, scenario: dict) -> str:
    """What a job's cost depends on: its attack with its parameters (a profile's budgets), or,
    for the simulation, the scenario without its seed."""
    return digest([kind, attack if attack is not None else {k: v for k, v in scenario.items() if k != "seed"}])


def cost_key(job: Job) -> str:
    attack = job.attack.describe() if isinstance(job, AttackJob) else None
    return job_cost_key(job_kind(job), attack, to_json(job.scenario))


@dataclass(frozen=True)
class Calibration:
    """Mean seconds and the largest peak resident memory per job kind, from the finished jobs
    of a run folder (runs before memory was recorded have none)."""

    seconds: dict[str, float]
    samples: dict[str, int]
    peak_bytes: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def from_run(out: Path) -> "Calibration":
        measured: dict[str, list[float]] = defaultdict(list)
        peaks: dict[str, int] = {}
        for _, record, result in stored(out):
            if not result.ok:
                continue
            try:
                job = record["job"]
                attack = job["attack"] if isinstance(result.outcome, AttackOutcome) else None
                name = attack["name"] if attack else PRIVACY_AUDIT if isinstance(result.outcome, PrivacyAuditOutcome) else UTILITY
                kind = job_cost_key(name, attack, job["scenario"])
            except (KeyError, TypeError, AttributeError):  # a job description not of ours: nothing to calibrate from
                continue
            seconds = result.seconds
            timing = result.outcome.timing if isinstance(result.outcome, AttackOutcome) else {}
            if timing.get("prepare_seconds"):  # a model-shaping attack's private run
                seconds += timing["prepare_seconds"] + timing.get("simulation_seconds", 0.0)
            measured[kind].append(seconds)
            if result.peak_rss_bytes:
                peaks[kind] = max(peaks.get(kind, 0), result.peak_rss_bytes)
        return Calibration({k: mean(v) for k, v in measured.items()}, {k: len(v) for k, v in measured.items()}, peaks)

    def unit_seconds(self, unit: Unit) -> float | None:
        """A unit's estimated seconds; None when one of its kinds is uncalibrated."""
        kinds = [cost_key(job) for job in unit.jobs]
        if isinstance(unit, Unit) and unit.utility is None and not any(job.shapes_model for job in unit.attacks):
            kinds.append(job_cost_key(UTILITY, None, to_json(unit.scenario)))  # the shared simulation still runs
        if any(kind not in self.seconds for kind in kinds):
            return None
        return sum(self.seconds[kind] for kind in kinds)


def makespan(durations: list[float], workers: int) -> float:
    """Longest-first list scheduling of ``durations`` on ``workers``."""
    loads = [0.0] * max(1, workers)
    for duration in sorted(durations, reverse=True):
        heapq.heapreplace(loads, loads[0] + duration)
    return max(loads)


def _bound_text(plan: AuditPlan, workers: int | None) -> str:
    bound = memory_bound(plan.config.options.max_memory_gb, workers or 1)
    return "not watched here" if bound is None else f"{bound / MB:.0f} MB per job with {workers or 1} worker(s)"


def plan_text(plan: AuditPlan, calibration: Calibration, workers: int | None, source: Path) -> str:
    applicable = [c for c in plan.cells if not c.not_applicable]
    units = plan_units(plan.jobs)
    kinds = Counter(job_kind(job) for job in plan.jobs)
    keys: dict[str, set[str]] = defaultdict(set)
    for job in plan.jobs:
        keys[job_kind(job)].add(cost_key(job))
    lines = [
        f"audit {plan.config.options.name!r} ({plan.config.source}), profile {plan.config.profile!r}",
        f"matrix: {len(plan.config.scenarios)} scenario(s), {len(plan.defenses)} defense column(s), "
        f"{len(plan.attacks)} attack(s): {len(plan.cells)} cells ({len(applicable)} applicable)",
        *(f"  {s.label} (seeds {list(s.seeds)}): {_shape(plan.matrix(s.label))}" for s in plan.config.scenarios),
        f"  defenses:  {', '.join(d.label for d in plan.defenses)}",
        f"  attacks:   {', '.join(a.label for a in plan.attacks)}",
        f"jobs: {len(plan.jobs)} in {len(units)} simulation units ({plan.threads} thread(s) each)",
        "",
        f"{'kind':<24} {'jobs':>5} {'s/job':>9} {'total':>9} {'peak MB':>8}  calibrated from",
    ]
    for kind, count in sorted(kinds.items()):
        peaks = [calibration.peak_bytes[key] for key in keys[kind] if key in calibration.peak_bytes]
        peak = f"{max(peaks) / MB:.0f}" if peaks else "?"
        if all(key in calibration.seconds for key in keys[kind]):
            each = mean(calibration.seconds[key] for key in keys[kind])
            samples = sum(calibration.samples[key] for key in keys[kind])
            lines.append(f"{kind:<24} {count:>5} {each:>9.1f} {clock(each * count):>9} {peak:>8}  {samples} finished job(s)")
        else:
            lines.append(f"{kind:<24} {count:>5} {'?':>9} {'?':>9} {peak:>8}  none")
    estimates = [calibration.unit_seconds(unit) for unit in units]
    known = [e for e in estimates if e is not None]
    missing = len(estimates) - len(known)
    suffix = f" (+ {missing} uncalibrated unit(s))" if missing else ""
    lines += ["", f"estimated wall time, --executor local: {clock(sum(known))}{suffix}"]
    for n in sorted({2, 4, 8, *( [workers] if workers else [])}):
        lines.append(f"estimated wall time, --executor ray --workers {n}: {clock(makespan(known, n))}{suffix}")
    if missing:
        lines.append(f"calibrate: run these kinds once into {source} (or a part of the audit), then --plan again")
    if calibration.peak_bytes:
        lines.append(f"peak MB: the most resident memory a finished job's process held (its unit's simulation "
                     f"included); [audit] max_memory_gb bounds each job ({_bound_text(plan, workers)})")
    else:
        lines.append("peak MB: not recorded by the finished jobs in the run folder (a run of this version records it)")
    return "\n".join(lines)
