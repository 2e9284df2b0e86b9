"""Label inference from client updates: iDLG's sign rule on one sample, zero-shot counts on a
batch, DLF's interpolated and RLU's least-squares counts on multi-step FedAvg updates, through
real rounds."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from flaudit.auditor.attacks.base import AttackerKnowledge
from flaudit.auditor.attacks.toolkit.imprint import momentum_coefficients
from flaudit.auditor.attacks.label_inference import (
    LabelInference,
    LabelParams,
    idlg_label,
    infer_label_counts,
    last_layer,
    project_to_simplex,
    round_counts,
    simplex_least_squares,
    heavy_ball_positions,
)
from flaudit.auditor.metrics.scoring import score
from flaudit.defenses.secagg import SecAgg
from flaudit.core.errors import ConfigError, FlauditError
from flaudit.scenarios.fedavg import FedAvgSimulation
from flaudit.scenarios.models import build_model
from flaudit.scenarios.scenario import ScenarioConfig, build_world
from flaudit.scenarios.updates import ParamLayout
from flaudit.scenarios.views import TrainingSpec


def attacked_round(**changes):
    """Round 0 of a digits world; returns (world, record, knowledge)."""
    base = dict(dataset="digits", model="cnn", rounds=1, auxiliary_samples=100, seed=0)
    world = build_world(ScenarioConfig(**{**base, **changes}))
    return world, FedAvgSimulation(world).run_round(0), AttackerKnowledge.of(world)


def label_accuracy(attack, world, record, knowledge) -> float:
    output = attack.reconstruct(record.server_view, knowledge)
    assert output.images.shape == (0, *knowledge.image_shape)
    return score(output, world.data.train, record.ground_truth, 20.0).metrics["label_accuracy"]


@pytest.mark.parametrize("name, options", [("cnn", {}), ("lenet", {"activation": "sigmoid"}), ("mlp", {})])
def test_idlg_sign_rule_is_exact_on_one_sample(name, options):
    """One sample, one step: the update is -lr * gradient and the rule names the label every time."""
    torch.manual_seed(0)
    model = build_model(name, (1, 8, 8), 10, **options)
    layout = ParamLayout.of(model)
    for label in range(10):
        x = torch.rand(1, 1, 8, 8)
        loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([label]))
        update = -0.1 * torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])
        assert idlg_label(layout, update, 10) == label


def test_last_layer_of_the_registered_models():
    cnn, resnet = build_model("cnn", (1, 8, 8), 10), build_model("resnet18", (3, 16, 16), 10)
    assert last_layer(ParamLayout.of(cnn), 10).module == "classifier.2"
    layer = last_layer(ParamLayout.of(resnet), 10)
    assert (layer.weight, layer.bias) == ("fc.weight", "fc.bias")
    with pytest.raises(ConfigError, match="no 7-row classifier"):
        last_layer(ParamLayout.of(cnn), 7)


def test_round_counts_keeps_the_total():
    assert round_counts(torch.tensor([2.7, -1.0, 0.8, 0.5]), 4).tolist() == [3, 0, 1, 0]
    counts = round_counts(torch.tensor([0.2, 0.3, 0.5]), 7)
    assert counts.sum() == 7 and counts.min() >= 0
    assert round_counts(torch.zeros(3), 3).tolist() == [1, 1, 1]


def test_batch_of_32_one_epoch_counts():
    """A client of exactly 32 digits, one full-batch step: the zero-shot counts (auxiliary probe)."""
    world, record, knowledge = attacked_round(clients=1, partition="iid", max_samples=132, batch_size=32)
    assert record.server_view.num_samples == (32,)
    assert label_accuracy(LabelInference(), world, record, knowledge) >= 0.9


def test_noise_probe_and_weight_evidence():
    """Without auxiliary data (uniform-noise probe), from the weight rows (Geng et al.)."""
    world, record, knowledge = attacked_round(clients=1, partition="iid", max_samples=32, batch_size=32, auxiliary_samples=0)
    assert knowledge.auxiliary is None
    assert label_accuracy(LabelInference(LabelParams(evidence="weight")), world, record, knowledge) >= 0.9


@pytest.mark.parametrize("method", ["dlf", "rlu"])
def test_multi_step_update_of_the_study_setting(method):
    """E=5, B=50, 100 clients, Dirichlet 0.5: DLF's interpolated and RLU's least-squares counts
    on the first participant."""
    world, record, knowledge = attacked_round(
        clients=100, partition="dirichlet", alpha=0.5, sample_fraction=0.1, local_epochs=5, batch_size=50
    )
    assert label_accuracy(LabelInference(LabelParams(method=method)), world, record, knowledge) >= 0.9


def test_counts_sum_to_the_sample_count_on_an_estimated_update():
    """The peer attack calls it on an estimate, not a real upload: any finite vector gives
    counts that sum to the sample count."""
    model = build_model("cnn", (1, 8, 8), 10)
    layout = ParamLayout.of(model)
    spec = TrainingSpec(epochs=2, batch_size=8, lr=0.05, momentum=0.9, weight_decay=0.0)
    update = torch.randn(layout.numel) * 1e-3
    counts = infer_label_counts(model, layout, spec, update, 37, 10, image_shape=(1, 8, 8))
    assert counts.shape == (10,) and int(counts.sum()) == 37 and counts.min() >= 0
    with pytest.raises(ConfigError, match="pass the probe images or the image_shape"):
        infer_label_counts(model, layout, spec, update, 37, 10)


def test_target_client_threat_model_and_errors():
    world, record, knowledge = attacked_round(clients=4, partition="iid", max_samples=200, batch_size=16)
    second = record.server_view.participants[1]
    output = LabelInference(LabelParams(target_client=second)).reconstruct(record.server_view, knowledge)
    assert output.target_clients == (second,) and len(output.labels) == record.server_view.num_samples[1]
    assert "only the aggregate" in LabelInference().not_applicable(world.config, [SecAgg()])
    with pytest.raises(FlauditError, match="target_client=99 did not take part"):
        LabelInference(LabelParams(target_client=99)).reconstruct(record.server_view, knowledge)
    hidden = dataclasses.replace(record.server_view, uploads=None)
    with pytest.raises(FlauditError, match="only the aggregate"):
        LabelInference().reconstruct(hidden, knowledge)
    with pytest.raises(ConfigError, match="must be one of"):
        LabelInference.from_table({"evidence": "logits"})


def test_simplex_least_squares_recovers_label_shares():
    """RLU's solve: an exactly linear system with a simplex solution is solved to it."""
    torch.manual_seed(0)
    shares = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0])
    matrix = torch.randn(5, 5) - torch.eye(5)
    assert torch.allclose(simplex_least_squares(matrix, matrix @ shares).float(), shares, atol=1e-4)
    projected = project_to_simplex(torch.tensor([2.0, -1.0, 0.5]))
    assert torch.allclose(projected, torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(project_to_simplex(torch.tensor([0.2, 0.3])), torch.tensor([0.45, 0.55]))


def test_heavy_ball_positions_of_constant_and_shrinking_gradients():
    """Without momentum a constant gradient spaces the steps evenly; with momentum the model
    starts slowly; a gradient that shrinks as the model moves covers the way early."""
    assert heavy_ball_positions(lambda x: 1.0, 4, 0.0, 4.0) == [0.0, 0.25, 0.5, 0.75]
    total = float(momentum_coefficients(10, 0.9).sum())
    constant = heavy_ball_positions(lambda x: 1.0, 10, 0.9, total)
    assert constant[1] < 0.1 and all(b > a for a, b in zip(constant, constant[1:])) and constant[-1] < 1
    shrinking = heavy_ball_positions(lambda x: 2.0 * max(1 - x, 0.0), 10, 0.0, 10.0)
    assert shrinking[:3] == pytest.approx([0.0, 0.2, 0.36])


def test_rlu_counts_of_the_study_setting():
    """E=5, B=10, 100 clients, Dirichlet 0.5, 16x16 digits: RLU's counts on every participant."""
    world, record, knowledge = attacked_round(
        clients=100, partition="dirichlet", alpha=0.5, sample_fraction=0.1, local_epochs=5, batch_size=10, image_size=16
    )
    view = record.server_view
    accuracies = [
        label_accuracy(LabelInference(LabelParams(target_client=client, method="rlu")), world, record, knowledge)
        for client in view.participants
    ]
    assert sum(accuracies) / len(accuracies) >= 0.93


def test_rlu_batch_of_32_and_errors():
    world, record, knowledge = attacked_round(clients=1, partition="iid", max_samples=132, batch_size=32)
    assert label_accuracy(LabelInference(LabelParams(method="rlu")), world, record, knowledge) >= 0.9
    model = build_model("cnn", (1, 8, 8), 10)
    layout, spec = ParamLayout.of(model), TrainingSpec(epochs=2, batch_size=8, lr=0.05, momentum=0.9, weight_decay=0.0)
    update = torch.randn(layout.numel) * 1e-3
    with pytest.raises(ConfigError, match="needs labelled probe images"):
        infer_label_counts(model, layout, spec, update, 37, 10, image_shape=(1, 8, 8), method="rlu")
    with pytest.raises(ConfigError, match="must be one of"):
        infer_label_counts(model, layout, spec, update, 37, 10, image_shape=(1, 8, 8), method="ilrg")
    counts = infer_label_counts(
        model, layout, spec, update, 37, 10, probe=torch.rand(20, 1, 8, 8), probe_labels=torch.arange(20) % 10, method="rlu"
    )
    assert counts.shape == (10,) and int(counts.sum()) == 37 and counts.min() >= 0


COMPARED_SETTINGS = {
    "default audit, round 3 (trained)": (
        dict(clients=8, partition="dirichlet", alpha=0.5, batch_size=8, local_epochs=1, rounds=4), 3, 0.7
    ),
    "E=5 B=10, 100 clients, 16x16, round 0": (
        dict(clients=100, partition="dirichlet", alpha=0.5, sample_fraction=0.1, local_epochs=5, batch_size=10,
             image_size=16), 0, 0.9
    ),
    "batch of 32, E=1": (dict(clients=1, partition="iid", max_samples=132, batch_size=32), 0, 0.9),
}


@pytest.mark.slow
@pytest.mark.parametrize("setting", list(COMPARED_SETTINGS))
def test_must_show_dlf_versus_rlu(setting):
    """Count accuracy of DLF's and RLU's counts, mean over every participant, seeds 0-2."""
    changes, attacked, floor = COMPARED_SETTINGS[setting]
    means = {}
    for method in ("dlf", "rlu"):
        per_seed = []
        for seed in range(3):
            world = build_world(ScenarioConfig(**{"dataset": "digits", "model": "cnn", "rounds": 1,
                                                  "auxiliary_samples": 100, "seed": seed, **changes}))
            simulation = FedAvgSimulation(world)
            record = [simulation.run_round(r) for r in range(attacked + 1)][-1]
            knowledge = AttackerKnowledge.of(world)
            attacks = [LabelInference(LabelParams(target_client=c, method=method)) for c in record.server_view.participants]
            accuracies = [label_accuracy(attack, world, record, knowledge) for attack in attacks]
            per_seed.append(sum(accuracies) / len(accuracies))
        means[method] = sum(per_seed) / len(per_seed)
        print(f"\n{setting:<40} {method}: count accuracy per seed {[round(a, 3) for a in per_seed]} mean={means[method]:.3f}")
    assert means["rlu"] >= floor and means["rlu"] >= means["dlf"] - 0.01
