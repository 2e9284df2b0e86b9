"""Logit-sharing FL (FedMD, DS-FL, FedGEMS): the PLI paper's data protocol, the aggregations,
learning, determinism and clear errors for bad options."""

from __future__ import annotations

import pytest
import torch

from flaudit.defenses.base import compose
from flaudit.core.errors import ConfigError, UnknownNameError
from flaudit.scenarios.kinds import SCENARIO_KINDS, scenario_kind
from flaudit.scenarios.logit_sharing.dsfl import entropy_reduction_aggregate
from flaudit.scenarios.logit_sharing.fedgems import inverse_entropy_ensemble
from flaudit.scenarios.logit_sharing.world import box_blur
from flaudit.scenarios.scenario import ScenarioConfig
from test_audit_toys import ToyNoise

SMALL = dict(model="fedmd_cnn", clients=2, rounds=2, batch_size=16, local_epochs=2, max_samples=600)


def world_of(kind: str, **changes):
    config = ScenarioConfig(kind=kind, **{**SMALL, **changes})
    return scenario_kind(kind).build_world(config)


def simulate(kind: str, rounds: int = 2, **changes):
    world = world_of(kind, rounds=rounds, **changes)
    simulation = scenario_kind(kind).simulation(world, None)
    return world, [simulation.run_round(r) for r in range(rounds)]


def entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * probs.clamp_min(1e-12).log()).sum(1)


def test_kinds_are_registered():
    assert SCENARIO_KINDS.names() == ["dsfl", "fedavg", "fedgems", "fedmd", "recorded"]


def test_protocol_splits_target_labels_into_private_and_blurred_public():
    world = world_of("fedmd")
    public, truth = world.public, world.public_truth
    targets = torch.tensor(world.target_labels)
    assert len(targets) == 5 and torch.isin(world.data.train.labels, targets).all()
    # D_0: clean images of the other labels; D_a: blurred copies of target-label images.
    assert not torch.isin(truth.labels[~public.auxiliary_domain], targets).any()
    assert torch.isin(truth.labels[public.auxiliary_domain], targets).all()
    assert torch.equal(public.labels, truth.labels)
    blurred = public.images[public.auxiliary_domain]
    assert torch.allclose(box_blur(blurred, 1), blurred)
    assert blurred.std() < public.images[~public.auxiliary_domain].std()  # blur smooths
    # The private half and the blurred half of a target label are disjoint and about equal.
    n_private = torch.bincount(world.data.train.labels, minlength=10)[targets]
    n_public = torch.bincount(truth.labels[public.auxiliary_domain], minlength=10)[targets]
    assert (n_private - n_public).abs().max() <= 1
    assert torch.isin(world.data.test.labels, targets).all()
    covered = torch.cat([c.train_indices for c in world.clients]).sort().values
    assert torch.equal(covered, torch.arange(len(world.data.train)))


def test_protocol_is_deterministic_from_the_seed():
    a, b, c = world_of("fedmd"), world_of("fedmd"), world_of("fedmd", seed=1)
    assert a.target_labels == b.target_labels and torch.equal(a.public.images, b.public.images)
    assert a.target_labels != c.target_labels or not torch.equal(a.public.images, c.public.images)


def test_dsfl_classifies_target_labels_with_an_unlabelled_public_set():
    world = world_of("dsfl")
    assert world.public.labels is None and world.target_labels == (0, 1, 2, 3, 4)
    assert world.data.train.num_classes == 5 and world.new_model()(world.public.images[:2]).shape == (2, 5)


def test_fedmd_consensus_is_the_mean_of_the_logits():
    world = world_of("fedmd")
    simulation = scenario_kind("fedmd").simulation(world, None)
    logits = {0: torch.randn(7, 10), 1: torch.randn(7, 10)}
    assert torch.allclose(simulation.aggregate(0, logits), (logits[0] + logits[1]) / 2)


def test_entropy_reduction_aggregation_sharpens_the_mean_prediction():
    logits = [torch.randn(50, 5), torch.randn(50, 5)]
    mean = torch.stack([l.softmax(1) for l in logits]).mean(0)
    consensus = entropy_reduction_aggregate(logits, 0.1).exp()
    assert torch.allclose(consensus.sum(1), torch.ones(50))
    assert (entropy(consensus) < entropy(mean)).all()
    assert torch.equal(consensus.argmax(1), mean.argmax(1))
    assert torch.allclose(consensus, torch.softmax(mean / 0.1, 1), atol=1e-6)


def test_fedgems_ensemble_weights_confident_correct_clients():
    confident, unsure, wrong = torch.tensor([[4.0, 0.0]]), torch.tensor([[0.5, 0.0]]), torch.tensor([[0.0, 3.0]])
    label = torch.tensor([0])
    probs = [l.softmax(1) for l in (confident, unsure)]
    weights = 1 / entropy(torch.cat(probs))
    expected = (weights[0] * probs[0] + weights[1] * probs[1]) / weights.sum()
    assert torch.allclose(inverse_entropy_ensemble([confident, unsure, wrong], label), expected)
    # Nobody right: the plain mean.
    assert torch.allclose(inverse_entropy_ensemble([wrong, wrong], label), wrong.softmax(1))


@pytest.mark.parametrize("kind", ["fedmd", "dsfl", "fedgems"])
def test_clients_learn_and_share_logits_on_the_public_set(kind):
    world, records = simulate(kind)
    last = records[-1]
    chance = 1 / world.data.train.num_classes
    assert last.test_accuracy > 3 * chance
    view = last.logit_view
    assert sorted(view.client_logits) == [0, 1]
    assert view.client_logits[0].shape == (len(world.public.images), world.data.train.num_classes)
    assert view.consensus_logits.shape == view.client_logits[0].shape
    assert all(len(last.ground_truth[c.client_id].sample_indices) == len(c.train_indices) for c in world.clients)


def test_simulation_is_deterministic():
    _, first = simulate("fedmd", rounds=1)
    _, second = simulate("fedmd", rounds=1)
    assert torch.equal(first[0].logit_view.client_logits[1], second[0].logit_view.client_logits[1])
    assert first[0].test_accuracy == second[0].test_accuracy


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(kind="fedmd", logit_options={"blur": 3}), "unknown key 'blur'; known keys: blur_kernel"),
        (dict(kind="fedmd", logit_options={"target_fraction": 1.5}), "target_fraction: must be <= 1.0"),
        (dict(kind="dsfl", logit_options={"public_epochs": 1}), "unknown key 'public_epochs'"),
        (dict(kind="dsfl", logit_options={"era_temperature": 0}), "era_temperature: must be > 0.0"),
        (dict(kind="fedavg", logit_options={"blur_kernel": 3}), "shares updates, not logits"),
        (dict(kind="fedmd", auxiliary_samples=10), "auxiliary_samples=10"),
        (dict(kind="fedgems", sample_fraction=0.5), "sample_fraction=0.5"),
    ],
)
def test_bad_options_are_config_errors(changes, message):
    with pytest.raises(ConfigError, match=message):
        scenario_kind(changes["kind"]).build_world(ScenarioConfig(**{**SMALL, **changes}))


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match="dsfl, fedavg, fedgems, fedmd"):
        scenario_kind("fedprox")


def test_update_defenses_cannot_act_on_logits():
    world = world_of("fedmd")
    with pytest.raises(ConfigError, match="update transforms cannot act on it"):
        scenario_kind("fedmd").simulation(world, compose([ToyNoise()], world))
