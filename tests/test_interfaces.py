"""The Defense/Attack interfaces the auditor relies on: composition and applicability."""

from dataclasses import dataclass

import pytest
import torch

from flaudit.auditor.attacks.base import Attack, AttackerKnowledge, AttackOutput, ThreatModel
from flaudit.defenses.base import Defense, compose
from flaudit.core.errors import ConfigError
from flaudit.scenarios.hooks import WeightedMeanAggregator
from flaudit.scenarios.scenario import ScenarioConfig, build_world


class Scale:
    def __init__(self, factor):
        self.factor = factor

    def transform(self, client_id, round_index, update, layout):
        return update * self.factor


@dataclass(frozen=True)
class ScaleParams:
    factor: float = 0.5


class Shrink(Defense):
    name = "shrink"
    Params = ScaleParams

    def update_transform(self, world):
        return Scale(self.params.factor)


class Hide(Defense):
    name = "hide"
    hides_individual_updates = True

    def aggregator(self, world):
        return WeightedMeanAggregator()


class PerClient(Attack):
    name = "per_client"
    threat_model = ThreatModel.HONEST_SERVER
    needs_individual_updates = True

    def prior_null(self, view, context):
        return None

    def reconstruct(self, view, knowledge):
        return AttackOutput(torch.zeros(1, *knowledge.image_shape), (0,))


@pytest.fixture(scope="module")
def world():
    return build_world(ScenarioConfig(clients=2, rounds=1, partition="iid", auxiliary_samples=50))


def test_compose_keeps_order_and_one_aggregator(world):
    hooks = compose([Shrink.from_table({"factor": 0.25}), Shrink(), Hide()], world)
    assert [t.factor for t in hooks.update_transforms] == [0.25, 0.5]
    assert isinstance(hooks.aggregator, WeightedMeanAggregator)
    with pytest.raises(ConfigError, match="'hide' and 'hide' both replace the aggregation"):
        compose([Hide(), Hide()], world)


def test_defense_params_are_checked():
    with pytest.raises(ConfigError, match=r"\[defense.shrink\] unknown key 'factr'"):
        Shrink.from_table({"factr": 2})


def test_attack_needing_updates_is_not_applicable_under_hiding(world):
    attack = PerClient()
    assert attack.not_applicable(world.config, [Shrink()]) is None
    reason = attack.not_applicable(world.config, [Shrink(), Hide()])
    assert reason == "per_client needs each client's update; hide shows the server only the aggregate"


def test_attacker_knowledge_holds_public_facts_and_auxiliary_data_only(world):
    knowledge = AttackerKnowledge.of(world)
    assert knowledge.image_shape == (1, 8, 8) and knowledge.num_classes == 10
    assert len(knowledge.auxiliary) == 50 and knowledge.num_clients == 2
    client_samples = torch.cat([c.train_indices for c in world.clients])
    assert not set(world.auxiliary_indices.tolist()) & set(client_samples.tolist())
