import copy

import pytest
import torch
from torch import nn

from flaudit.core.errors import InvalidUpdateError
from flaudit.scenarios.fedavg import FedAvgSimulation
from flaudit.scenarios.hooks import AggregationOutcome, FLHooks, WeightedMeanAggregator
from flaudit.scenarios.scenario import ScenarioConfig, build_world

SMALL = ScenarioConfig(clients=4, rounds=2, partition="iid", batch_size=32, seed=3)


def collect(sim: FedAvgSimulation) -> list:
    records = []
    sim.run([records.append], progress=False)
    return records


@pytest.fixture(scope="module")
def world():
    return build_world(SMALL)


def test_world_partitions_train_data_without_overlap():
    world = build_world(SMALL.replace(auxiliary_samples=100, client_test_fraction=0.25))
    parts = [c.train_indices for c in world.clients] + [c.test_indices for c in world.clients]
    every = torch.cat(parts + [world.auxiliary_indices])
    assert len(every) == len(world.data.train) == len(every.unique())
    assert len(world.auxiliary) == 100
    assert all(len(c.test_indices) > 0 for c in world.clients)


def test_round_applies_the_sample_weighted_mean(world):
    record = collect(FedAvgSimulation(world))[0]
    view = record.server_view
    weights = torch.tensor(view.num_samples, dtype=torch.float32)
    stacked = torch.stack([u.update for u in view.uploads])
    expected = (weights[:, None] * stacked).sum(0) / weights.sum()
    torch.testing.assert_close(view.aggregate, expected)
    change = view.layout.flatten(record.model_after) - view.layout.flatten(view.model)
    torch.testing.assert_close(change, expected, atol=1e-6, rtol=1e-5)
    assert view.participants == (0, 1, 2, 3)
    assert view.num_samples == tuple(len(c.train_indices) for c in world.clients)


def test_simulation_is_deterministic_given_the_seed(world):
    first, second = collect(FedAvgSimulation(world)), collect(FedAvgSimulation(world))
    for a, b in zip(first, second):
        assert torch.equal(a.server_view.aggregate, b.server_view.aggregate)
        assert a.test_accuracy == b.test_accuracy
    other = collect(FedAvgSimulation(build_world(SMALL.replace(seed=4))))
    assert not torch.equal(first[0].server_view.aggregate, other[0].server_view.aggregate)


def test_local_training_runs_every_step_and_records_batches():
    world = build_world(SMALL.replace(local_epochs=3, batch_size=10, rounds=1))
    record = collect(FedAvgSimulation(world))[0]
    for client in world.clients:
        trace = record.ground_truth[client.client_id]
        n = len(client.train_indices)
        assert len(trace.batches) == 3 * -(-n // 10)
        per_epoch = torch.cat(trace.batches[: -(-n // 10)])
        assert torch.equal(per_epoch.sort().values, client.train_indices.sort().values)


def test_client_sampling_fraction():
    world = build_world(SMALL.replace(clients=8, sample_fraction=0.5, rounds=3))
    records = collect(FedAvgSimulation(world))
    assert all(len(r.server_view.participants) == 4 for r in records)
    assert len({r.server_view.participants for r in records}) > 1


class Recorder:
    """A training wrapper that checks it is given, and gives back, a usable model."""

    def __init__(self):
        self.calls = []

    def wrap(self, client_id, round_index, model, optimizer, loader):
        self.calls.append((client_id, round_index))
        return nn.Sequential(model), optimizer, loader

    def unwrap(self, client_id, model):
        return model[0]


class Halve:
    def transform(self, client_id, round_index, update, layout):
        return update / 2


class Hiding(WeightedMeanAggregator):
    def aggregate(self, round_index, uploads):
        outcome = super().aggregate(round_index, uploads)
        return AggregationOutcome(outcome.mean_update, False, {"masked": len(uploads)})


def test_hooks_are_applied_in_order(world):
    wrapper = Recorder()
    hooks = FLHooks(training_wrappers=[wrapper], update_transforms=[Halve()], aggregator=Hiding())
    record = collect(FedAvgSimulation(world, hooks))[0]
    assert wrapper.calls[:4] == [(c, 0) for c in range(4)]
    assert record.server_view.uploads is None and not record.server_view.sees_individual_updates
    assert record.server_view.transcript == {"masked": 4}
    plain = collect(FedAvgSimulation(world))[0]
    torch.testing.assert_close(record.server_view.aggregate, plain.server_view.aggregate / 2)
    for cid, update in record.client_updates.items():
        torch.testing.assert_close(update, plain.client_updates[cid])


class Widen:
    """A malicious server that puts a layer in front of the model (an architecture change)."""

    def before_round(self, round_index, model):
        if isinstance(model, nn.Sequential) and isinstance(model[0], nn.Identity):
            return model
        return nn.Sequential(nn.Identity(), copy.deepcopy(model))


def test_malicious_server_may_change_the_model(world):
    records = collect(FedAvgSimulation(world, FLHooks(server_model=Widen())))
    assert isinstance(records[0].server_view.model[0], nn.Identity)
    assert records[0].server_view.layout.names[0].startswith("1.")


class Poison:
    def transform(self, client_id, round_index, update, layout):
        update = update.clone()
        update[5] = float("nan")
        return update


def test_non_finite_update_is_rejected_with_its_source(world):
    with pytest.raises(InvalidUpdateError, match="client 0's transformed update has 1 non-finite"):
        FedAvgSimulation(world, FLHooks(update_transforms=[Poison()])).run(progress=False)


def test_peer_view_sees_global_change_and_own_update(world):
    record = collect(FedAvgSimulation(world))[0]
    peer = record.peer_view(2)
    torch.testing.assert_close(peer.global_change, record.server_view.aggregate, atol=1e-6, rtol=1e-5)
    assert torch.equal(peer.own_update, record.client_updates[2])
    assert peer.num_participants == 4 and record.peer_view(2, participants_known=False).num_participants is None


def test_default_scenario_learns_digits():
    """The issue's acceptance run: digits, cnn, 10 Dirichlet(0.5) clients, 20 rounds, E=1, B=16."""
    result = FedAvgSimulation(build_world(ScenarioConfig())).run(progress=False)
    assert len(result.rounds) == 20
    assert result.final_test_accuracy >= 0.90
