"""DP-SGD through Opacus: utility cost, per-client accounting over the run, BatchNorm models."""

import math

import pytest
from opacus.accountants import create_accountant
from opacus.validators import ModuleValidator
from torch import nn

from flaudit.defenses.base import compose
from flaudit.defenses.compression import TopKCompression
from flaudit.defenses.dp import DPSGD
from flaudit.defenses.registry import DEFENSES
from flaudit.core.errors import ConfigError
from flaudit.scenarios.fedavg import FedAvgSimulation
from flaudit.scenarios.models import build_model
from flaudit.scenarios.scenario import ScenarioConfig, build_world

SMALL = ScenarioConfig(clients=2, rounds=4, partition="iid", batch_size=32, seed=3, lr=0.1)


@pytest.fixture(scope="module")
def world():
    return build_world(SMALL)


class Scripted(FedAvgSimulation):
    """Client 0 joins every round, client 1 only round 0."""

    def sample_clients(self, round_index):
        return (0, 1) if round_index == 0 else (0,)


def run(world, defenses, simulation=FedAvgSimulation):
    records = []
    simulation(world, compose(defenses, world)).run([records.append], progress=False)
    return records


def sample_rate(world, client_id):
    return 1 / math.ceil(len(world.clients[client_id].train_indices) / world.config.batch_size)


def test_dp_costs_accuracy_but_still_learns(world):
    plain = run(world, [])[-1].test_accuracy
    dp = DPSGD.from_table({"noise_multiplier": 0.7, "max_grad_norm": 1.0})
    private = run(world, [dp])[-1].test_accuracy
    assert plain >= 0.9
    assert 0.5 <= private <= plain - 0.05, (plain, private)
    figures = dp.figures()
    assert 1 < figures["epsilon"] < 20 and figures["delta"] == 1e-5
    assert figures["noise_multiplier"] == 0.7


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_epsilon_is_the_accountants_for_the_steps_taken(world, accountant):
    dp = DPSGD.from_table({"noise_multiplier": 1.0, "accountant": accountant})
    records = run(build_world(SMALL.replace(rounds=5)), [dp], Scripted)
    figures = dp.figures()
    for client_id, rounds_joined in ((0, 5), (1, 1)):
        steps = sum(len(r.ground_truth[client_id].batches) for r in records
                    if client_id in r.server_view.participants)
        assert steps == dp.last_run.steps(client_id)
        fresh = create_accountant(accountant)
        fresh.history = [(1.0, sample_rate(world, client_id), steps)]
        assert figures[f"epsilon_client_{client_id}"] == pytest.approx(fresh.get_epsilon(1e-5), rel=1e-9)
    assert figures["epsilon_client_0"] > 1.5 * figures["epsilon_client_1"]
    assert figures["epsilon"] == figures["epsilon_client_0"]
    sizes = [len(b) for r in records for b in r.ground_truth[0].batches]
    assert len(set(sizes)) > 3  # Poisson sampling: batch sizes vary around the expected 32


def test_target_epsilon_is_spent_by_a_client_joining_every_round(world):
    dp = DPSGD.from_table({"target_epsilon": 4.0, "accountant": "rdp"})
    two_rounds = build_world(SMALL.replace(rounds=2))
    run(two_rounds, [dp])
    first = dp.figures()
    for client_id in (0, 1):
        assert 3.9 <= first[f"epsilon_client_{client_id}"] <= 4.0
    run(two_rounds, [dp])  # a new simulation starts new accountants
    assert dp.figures()["epsilon"] == pytest.approx(first["epsilon"])


class SmallBatchNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.classifier = nn.Linear(32, 10)

    def forward(self, x):
        return self.classifier(self.features(x))


def test_batchnorm_models_pass_through_the_module_validator(world):
    dp = DPSGD.from_table({"noise_multiplier": 1.0})
    one_round = build_world(SMALL.replace(rounds=1))
    simulation = FedAvgSimulation(one_round, compose([dp], one_round))
    simulation.model = SmallBatchNormNet()
    with pytest.raises(ConfigError, match="Opacus cannot train this model.*prepare_model"):
        simulation.run(progress=False)

    simulation = FedAvgSimulation(one_round, compose([dp], one_round))
    simulation.model = DPSGD.prepare_model(SmallBatchNormNet())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in simulation.model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in simulation.model.modules())
    result = simulation.run(progress=False)
    assert result.final_test_accuracy > 0.1 and dp.figures()["epsilon"] > 0
    resnet = DPSGD.prepare_model(build_model("resnet18", (3, 32, 32), 10))
    assert ModuleValidator.validate(resnet) == []
    resnet_world = build_world(SMALL.replace(rounds=1, model="resnet18"))
    prepared = FedAvgSimulation(resnet_world, compose([dp], resnet_world)).model
    assert ModuleValidator.validate(prepared) == []  # compose hands prepare_model to the simulation


def test_dp_composes_with_compression(world):
    dp = DPSGD.from_table({"noise_multiplier": 1.0})
    topk = TopKCompression.from_table({"ratio": 0.01, "scope": "global"})
    hooks = compose([dp, topk], world)
    assert len(hooks.training_wrappers) == 1 and len(hooks.update_transforms) == 1
    record = run(build_world(SMALL.replace(rounds=1)), [dp, topk])[0]
    for upload in record.server_view.uploads:
        assert int((upload.update != 0).sum()) == math.ceil(0.01 * upload.update.numel())
    assert dp.figures()["epsilon"] > 0 and topk.figures()["compression_ratio"] > 40


@pytest.mark.parametrize(
    "table, match",
    [
        ({"noise_multiplier": 1.0, "target_epsilon": 3.0}, "either noise_multiplier or target_epsilon"),
        ({"noise_multiplier": 0.0}, r"defense.dp.noise_multiplier: must be > 0"),
        ({"accountant": "gdp"}, r"defense.dp.accountant: must be one of \['prv', 'rdp'\]"),
        ({"max_grad_norm": -1.0}, r"defense.dp.max_grad_norm: must be > 0"),
        ({"clip": 1.0}, r"unknown key 'clip'"),
    ],
)
def test_bad_parameters_are_named(table, match):
    with pytest.raises(ConfigError, match=match):
        DEFENSES.get("dp").from_table(table)


def test_delta_must_be_below_one_over_the_largest_client(world):
    with pytest.raises(ConfigError, match=r"delta=0.01 is not below 1/n for a client holding"):
        compose([DPSGD.from_table({"delta": 0.01})], world)


def test_default_is_noise_multiplier_one():
    assert DPSGD().params.noise_multiplier == 1.0
    assert DPSGD.from_table({"target_epsilon": 2.0}).params.noise_multiplier is None


@pytest.mark.slow
def test_utility_on_the_default_scenario():
    """digits, cnn, 10 Dirichlet(0.5) clients of 70-230 samples, 20 rounds, B=16: DP-SGD at
    sigma 0.5 and 1.0 (the table in the issue note)."""
    world = build_world(ScenarioConfig())
    plain = FedAvgSimulation(world).run(progress=False).final_test_accuracy
    print(f"\n| none | {plain:.3f} |")
    rows = {}
    for sigma in (0.5, 1.0):
        dp = DPSGD.from_table({"noise_multiplier": sigma})
        accuracy = run(world, [dp])[-1].test_accuracy
        rows[sigma] = (accuracy, dp.figures()["epsilon"])
        print(f"| dp sigma={sigma} | {accuracy:.3f} | epsilon {rows[sigma][1]:.2f} (delta 1e-5) |")
    assert plain >= 0.9
    for accuracy, _ in rows.values():
        assert 0.4 <= accuracy <= plain - 0.2  # learns, at a clear cost
    assert rows[0.5][1] > rows[1.0][1] and rows[0.5][0] >= rows[1.0][0] - 0.02
