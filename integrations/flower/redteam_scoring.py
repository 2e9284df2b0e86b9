"""Scores a red-team Flower run like every cell of an audit: the crafted rounds a
``crafting.ModelCrafter`` observed, attacked by its own attack from Flower's aggregate, against
the canary's recorded batches of each round, next to the attack's data-blind nulls
(``AttackJob.attack_on``: the same matching, criterion, nulls and ``leakage``). A round whose
crafted model diverged or that no client trained is the attack's failure (recovery 0).

The recording (``Recording(Crafting(...))`` wrote it) gives the ground truth: the canary is
client 0 and the only client with any; the attack's other targets are dropped from scoring
(``scored_targets``), so the score is the canary's share of what the attack recovered.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

from flaudit.auditor.attacks.base import AttackerKnowledge
from flaudit.auditor.running.config import AuditOptions
from flaudit.auditor.running.jobs import AttackJob, ResolvedComponent, failed_result
from flaudit.auditor.running.results import AttackOutcome
from flaudit.integrations.flower.crafting import CraftedRound, ModelCrafter
from flaudit.integrations.flower.replay import RecordedWorld, build_recorded_world, canary_trace
from flaudit.scenarios.client import accuracy
from flaudit.scenarios.fedavg import RoundRecord
from flaudit.scenarios.scenario import ScenarioConfig
from flaudit.scenarios.updates import ParamLayout
from flaudit.scenarios.views import ServerView


@dataclass(frozen=True)
class RedTeamResult:
    server_round: int
    result: AttackOutcome  # as an audit cell's: metrics (recovery_rate, null_recovery_rate, leakage, ...), null, diagnostics

    @property
    def metrics(self) -> Mapping[str, Any]:
        return self.result.metrics


def _record(world: RecordedWorld, index: int, crafted: CraftedRound) -> RoundRecord:
    """The round as the malicious server saw it (the crafted model, Flower's aggregate, the nodes
    as the recorded world's clients), with the canary's batches as its only ground truth."""
    client_of = {node: i for i, node in enumerate(world.node_ids)}
    layout = ParamLayout.of(crafted.sent)
    view = ServerView(index, crafted.sent, layout, crafted.training, tuple(client_of[n] for n in crafted.node_ids),
                      crafted.num_samples, None, crafted.aggregate)
    after = copy.deepcopy(crafted.sent)
    layout.load(after, layout.flatten(crafted.sent) + crafted.aggregate)
    test = world.test_set
    truth = {0: canary_trace(world, index, world.recording.rounds[index])}
    return RoundRecord(view, after, {}, truth, accuracy(after, test.images, test.labels), world.data.train)


def score_red_team(crafter: ModelCrafter, config: ScenarioConfig, options: AuditOptions = AuditOptions()) -> list[RedTeamResult]:
    """``config``: the ``recorded`` scenario of the red-team run's recording (its dataset's test
    split is the scoring's non-member pool); one result per crafted round the canary took part in."""
    world = build_recorded_world(config)
    knowledge: AttackerKnowledge = crafter.knowledge
    attack = crafter.attack
    component = ResolvedComponent(attack.name, type(attack), attack.params)
    results = []
    for index, recorded in enumerate(world.recording.rounds[: config.rounds]):
        crafted = crafter.rounds.get(recorded.round)
        if crafted is None or recorded.canary is None:
            continue
        job = AttackJob(f"flower-red-team/{attack.name}", config, (), component, index, None, options.psnr_threshold,
                        options.identifiable_margin_db, options.grid_images, options.threads)
        if crafted.failure is not None:
            roster = {0: len(recorded.canary.labels)}
            results.append(RedTeamResult(recorded.round, AttackOutcome.of(failed_result(job, crafted.failure, crafted.details, roster))))
            continue
        record = _record(world, index, crafted)
        results.append(RedTeamResult(recorded.round, AttackOutcome.of(job.attack_on(world, record, knowledge, attack, private_copy=True))))
    return results
