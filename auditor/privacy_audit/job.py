"""The privacy-audit job: one (scenario, DP defense column, seed) simulated with canaries.

It runs the whole federation under the column's defenses with the canaries in one client's
training (``CanaryTraining``), scores them from the server's view each round
(``CanaryScores``), and returns the guesses, the epsilon each DP component claims for the
canary client in this same run, and the lower bound the guesses prove at that claim's delta.
The canaries perturb the model, so this is a simulation of its own, never the utility run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator

from flaudit.auditor.privacy_audit.bound import best_bound, guesses
from flaudit.auditor.privacy_audit.canaries import CanarySet, CanaryScores, CanaryTraining
from flaudit.auditor.running.column_job import ColumnJob
from flaudit.core.jsonable import to_json
from flaudit.defenses.base import compose
from flaudit.scenarios.kinds import scenario_kind
from flaudit.scenarios.scenario import ScenarioConfig, derive_seed
from flaudit.scenarios.updates import ParamLayout

if TYPE_CHECKING:
    from flaudit.auditor.running.jobs import ResolvedComponent

CANARY_NORM = 10.0  # above any sensible clip norm: correct clipping cuts it, a missing clip shows
CANARY_SEED_STREAM = 601  # derive_seed streams of the canaries' draw and their per-step sampling
SAMPLING_SEED_STREAM = 602


@dataclass(frozen=True)
class AuditSettings:
    """How the audit runs: from ``[audit] dp_audit_*``."""

    canaries: int
    confidence: float
    client: int
    canary_norm: float = CANARY_NORM


@dataclass(frozen=True)
class PrivacyAuditJob(ColumnJob):
    kind: ClassVar[str] = "privacy_audit"
    settings: AuditSettings

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "settings": to_json(self.settings)}

    def unit(self) -> "PrivacyAuditUnit":
        return PrivacyAuditUnit(self)


def claims_dp(component: ResolvedComponent) -> bool:
    return bool(getattr(component.cls, "claims_dp", False))


@dataclass(frozen=True)
class PrivacyAuditUnit:
    """What an executor runs for one audit job (the ``Unit`` interface: scenario, threads,
    defenses, jobs, run)."""

    job: PrivacyAuditJob

    @property
    def scenario(self) -> ScenarioConfig:
        return self.job.scenario

    @property
    def threads(self) -> int:
        return self.job.threads

    @property
    def defenses(self) -> tuple[ResolvedComponent, ...]:
        return self.job.defenses

    @property
    def jobs(self) -> tuple[PrivacyAuditJob, ...]:
        return (self.job,)

    def stream(self, started: Callable[[int], None]) -> Iterator[tuple[int, dict[str, Any]]]:
        """The ``Unit.stream`` interface the supervised executors run: one job, one result."""
        started(0)
        yield from enumerate(self.run())

    def without(self, finished: set[int]) -> "PrivacyAuditUnit | None":
        return None if 0 in finished else self

    def run(self) -> list[dict[str, Any]]:
        job, settings, config = self.job, self.job.settings, self.job.scenario
        kind = scenario_kind(config.kind)
        world = kind.build_world(config)
        defenses = [d.build() for d in job.defenses]
        hooks = compose(defenses, world)
        simulation = kind.simulation(world, hooks)  # applies the defenses' model preparation
        canaries = CanarySet.draw(ParamLayout.of(simulation.model), settings.canaries, settings.canary_norm,
                                  derive_seed(config.seed, CANARY_SEED_STREAM))
        client = min(settings.client, config.clients - 1)
        hooks.training_wrappers.append(  # last: it wraps the optimizer the defenses made
            CanaryTraining(canaries, client, derive_seed(config.seed, SAMPLING_SEED_STREAM))
        )
        observer = CanaryScores(canaries, client)
        began = time.perf_counter()
        for round_index in range(config.rounds):
            observer(simulation.run_round(round_index))
        made = guesses(observer.scores, canaries.included)
        claims = {}
        for component, defense in zip(job.defenses, defenses):
            if not claims_dp(component):
                continue
            figures = defense.figures()
            claimed = figures.get(f"epsilon_client_{client}")
            delta = float(figures.get("delta", 0.0))
            bound, best = best_bound(len(canaries), made, delta, settings.confidence)
            claims[component.name] = {
                "claimed_epsilon": claimed, "delta": delta, "epsilon_lower_bound": bound,
                "guesses": None if best is None else {"made": best.made, "correct": best.correct},
            }
        return [{
            "status": "ok", "canaries": len(canaries), "included": int(canaries.included.sum()),
            "confidence": settings.confidence, "canary_client": client, "canary_norm": settings.canary_norm,
            "observed": observer.observed, "rounds_observed": observer.rounds,
            "guesses": [{"k": g.k, "made": g.made, "correct": g.correct} for g in made],
            "claims": claims, "simulation_seconds": time.perf_counter() - began,
        }]
