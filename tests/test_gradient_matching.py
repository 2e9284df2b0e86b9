"""DLG, iDLG, Inverting Gradients and DLF through real FedAvg rounds: strong on one sample's
gradient, and (the study's point) measured on the multi-step client updates of a realistic
federation, where they are much weaker.

The slow tests (``-m slow -s``) print the must-show tables.
"""

from __future__ import annotations

import time

import pytest
import torch

from flaudit.auditor.attacks.registry import ATTACKS
from flaudit.auditor.attacks.base import AttackerKnowledge
from flaudit.auditor.attacks.toolkit.update_inversion import IgParams, invert_update
from flaudit.auditor.metrics.scoring import score
from flaudit.defenses.secagg import SecAgg
from flaudit.core.errors import ConfigError
from flaudit.scenarios.fedavg import FedAvgSimulation
from flaudit.scenarios.scenario import ScenarioConfig, build_world

AUX = 20
SIGMOID_LENET = {"model": "lenet", "model_options": {"activation": "sigmoid"}}  # DLG's setting


def single_sample(samples: int = 1, **changes) -> ScenarioConfig:
    """One client holding ``samples`` images, trained on in one full batch (one gradient)."""
    base = dict(
        dataset="digits", model="cnn", clients=1, partition="iid", rounds=1, local_epochs=1,
        batch_size=samples, max_samples=AUX + samples, auxiliary_samples=AUX, seed=0,
    )
    return ScenarioConfig(**{**base, **changes})


def study_setting(**changes) -> ScenarioConfig:
    """The study's realistic federation: 100 clients, Dirichlet 0.5, E=5 epochs of B=50 (10% of
    the clients per round, so a round runs in a second)."""
    base = dict(
        dataset="digits", image_size=16, model="cnn", clients=100, partition="dirichlet", alpha=0.5,
        sample_fraction=0.1, rounds=1, local_epochs=5, batch_size=50, auxiliary_samples=100, seed=0,
    )
    return ScenarioConfig(**{**base, **changes})


def run(attack_name: str, config: ScenarioConfig, **params) -> dict:
    """Round 0 of ``config``, attacked and scored; the metrics plus the attack's seconds."""
    world = build_world(config)
    record = FedAvgSimulation(world).run_round(0)
    knowledge = AttackerKnowledge.of(world)
    attack = ATTACKS.get(attack_name).from_table(params)
    began = time.perf_counter()
    output = attack.reconstruct(record.server_view, knowledge)
    seconds = time.perf_counter() - began
    assert output.images.shape[1:] == knowledge.image_shape
    assert output.images.numel() == 0 or 0 <= output.images.min() <= output.images.max() <= 1
    return {**score(output, world.data.train, record.ground_truth, 20.0).metrics, "seconds": seconds}


# ---- fast: the single-gradient case ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["dlg", "idlg"])
def test_dlg_recovers_one_digit_from_its_gradient(name):
    """8x8 digit, sigmoid LeNet (the DLG paper's setting): >= 25 dB and the right label."""
    metrics = run(name, single_sample(**SIGMOID_LENET), iterations=100)
    assert metrics["psnr_mean"] >= 25.0 and metrics["label_accuracy"] == 1.0, metrics


@pytest.mark.parametrize("name", ["ig", "dlf"])
def test_cosine_matching_recovers_one_digit(name):
    """8x8 digit, the study's CNN, one gradient: >= 25 dB."""
    metrics = run(name, single_sample(), iterations=200)
    assert metrics["psnr_mean"] >= 25.0 and metrics["label_accuracy"] == 1.0, metrics


def test_ig_matches_a_multi_step_update_it_can_simulate():
    """Four momentum steps (E=4) on one batch of 4 digits: the simulation is exact up to the
    unknown images, so the multi-step attack still recovers them."""
    metrics = run("ig", single_sample(4, local_epochs=4), iterations=100)
    assert metrics["psnr_mean"] >= 20.0, metrics


def sequential_restarts(shape, objective, iterations, restarts, lr, seed):
    """The restarts one after another (the reference the batched pass must reproduce): each
    restart's images and final loss."""
    from flaudit.auditor.attacks.toolkit.update_inversion import DECAY_POINTS

    generator, results = torch.Generator().manual_seed(seed), []
    milestones = sorted({max(1, int(iterations * f)) for f in DECAY_POINTS})
    for _ in range(restarts):
        x = torch.rand(shape, generator=generator).requires_grad_()
        optimizer = torch.optim.Adam([x], lr=lr)
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
        for _ in range(iterations):
            (grad,) = torch.autograd.grad(objective(x[None])[0], x)
            x.grad = grad.sign()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                x.clamp_(0, 1)
        results.append((x.detach(), float(objective(x.detach()[None])[0].detach())))
    return results


@pytest.mark.parametrize("epochs", [1, 3])
def test_batched_restarts_follow_the_sequential_ones(epochs):
    """R restarts in one batched pass (``simulate_updates``) reach the images and losses of the
    same restarts run one after another, on one gradient (E=1) and on a multi-step update."""
    from flaudit.auditor.attacks.toolkit.update_inversion import optimise_images, update_objective

    world = build_world(single_sample(4, local_epochs=epochs))
    view = FedAvgSimulation(world).run_round(0).server_view
    labels = world.data.train.labels[world.clients[0].train_indices]
    objective = update_objective(view.uploads[0].update, view.model, view.layout, view.training, labels,
                                 distance="cosine", tv_weight=1e-4)
    shape, restarts = (4, 1, 8, 8), 3
    sequential = sequential_restarts(shape, objective, 12, restarts, 0.1, seed=5)
    best, loss = optimise_images(shape, objective, iterations=12, restarts=restarts, lr=0.1, signed=True, seed=5,
                                 device=torch.device("cpu"), desc="test")
    losses = [final for _, final in sequential]
    assert loss == pytest.approx(min(losses), rel=1e-3)
    assert len(set(losses)) == restarts  # distinct restarts: the pick is not a tie
    torch.testing.assert_close(best, sequential[losses.index(min(losses))][0], atol=2e-3, rtol=0)


def test_dlg_fails_on_the_study_federation():
    """The study's point: read as one gradient, a 5-epoch client update gives DLG noise."""
    metrics = run("dlg", study_setting(), iterations=20)
    assert metrics["recovery_rate"] == 0.0 and metrics["psnr_mean"] < 15.0, metrics


def test_invert_update_takes_a_regularizer():
    """The peer attack's hook: a prior that dominates the (zero-weighted) matching term decides
    the images."""
    world = build_world(single_sample(2))
    record = FedAvgSimulation(world).run_round(0)
    view = record.server_view
    params = IgParams(iterations=100, tv_weight=0.0)
    images = invert_update(
        view.uploads[0].update * 0, view.model, view.layout, view.training, torch.tensor([0, 1]), (1, 8, 8),
        params, regularizer=lambda x: 1e3 * (x - 0.25).square().mean(),
    )
    assert images.shape == (2, 1, 8, 8) and float((images - 0.25).abs().max()) < 0.02


def test_threat_model_and_config_errors():
    for name in ("dlg", "idlg", "ig", "dlf"):
        attack = ATTACKS.get(name)()
        assert "only the aggregate" in attack.not_applicable(single_sample(), [SecAgg()])
        assert attack.not_applicable(single_sample(), []) is None
        assert attack.profiles["full"]["iterations"] >= 300
    with pytest.raises(ConfigError, match="attack.ig.distance: must be one of"):
        ATTACKS.get("ig").from_table({"distance": "wasserstein"})
    with pytest.raises(ConfigError, match="attack.dlf.iterations: must be >= 1"):
        ATTACKS.get("dlf").from_table({"iterations": 0})


# ---- slow: the must-show tables -----------------------------------------------------------------------


def row(label: str, m: dict) -> str:
    psnr, ssim = m.get("psnr_mean", float("nan")), m.get("ssim_mean", float("nan"))
    return (f"{label:<44} targets={m['n_targets']:>3} images={m['n_reconstructed']:>3} PSNR={psnr:6.2f} dB "
            f"SSIM={ssim:5.3f} rate@20dB={m.get('recovery_rate', float('nan')):5.3f} "
            f"labels={m.get('label_accuracy', float('nan')):5.3f} {m['seconds']:6.1f}s")


EASY = [
    ("DLG, sigmoid LeNet, digit 16x16", "dlg", dict(image_size=16, **SIGMOID_LENET), dict(iterations=300)),
    ("iDLG, sigmoid LeNet, digit 16x16", "idlg", dict(image_size=16, **SIGMOID_LENET), dict(iterations=300)),
    ("IG, CNN, digit 16x16", "ig", dict(image_size=16), dict(iterations=500, restarts=2)),
    ("DLF, CNN, digit 16x16", "dlf", dict(image_size=16), dict(iterations=400)),
    ("IG, CNN, photo_patches 32x32", "ig", dict(dataset="photo_patches"), dict(iterations=500, tv_weight=1e-3)),
]


@pytest.mark.slow
def test_must_show_single_gradient():
    """The easy side: one image's gradient, mean over 3 seeds."""
    print("\nsingle gradient (one image, E=1), mean over seeds 0-2")
    for label, name, scenario, params in EASY:
        runs = [run(name, single_sample(seed=seed, **scenario), **params) for seed in range(3)]
        mean = {k: sum(r[k] for r in runs) / len(runs) for k in ("psnr_mean", "ssim_mean", "recovery_rate", "label_accuracy", "seconds")}
        print(row(label, {**runs[0], **mean}), "per seed:", [round(r["psnr_mean"], 1) for r in runs])
        floor = 18.0 if "photo" in label else 25.0
        assert mean["psnr_mean"] >= floor and mean["label_accuracy"] == 1.0


REALISTIC = [
    ("labels", {}),
    ("dlg", dict(iterations=300)),
    ("idlg", dict(iterations=300)),
    ("idlg", dict(iterations=300, images=1)),
    ("ig", dict(iterations=500)),
    ("dlf", dict(iterations=400)),
]


@pytest.mark.slow
@pytest.mark.parametrize("clients, batch", [(100, 50), (20, 50), (100, 10)], ids=["100x50", "20x50", "100x10"])
def test_must_show_realistic_federation(clients, batch):
    """The study's FedAvg client update: E=5 epochs, Dirichlet 0.5, digits 16x16 with the CNN,
    the first participant of round 0. With 100 clients and B=50 a client holds ~14 digits (one
    batch per epoch: five full-batch momentum steps, which the simulation reproduces up to the
    images); with 20 clients ~50-70 (two reshuffled batches per epoch); with B=10 (the study's
    easier batch) two reshuffled batches per epoch of ~14 digits."""
    print(f"\nrealistic FedAvg update: {clients} clients, Dirichlet 0.5, E=5, B={batch}, digits 16x16, CNN")
    for name, params in REALISTIC:
        metrics = run(name, study_setting(clients=clients, batch_size=batch), **params)
        print(row(f"{name} {params}", metrics))
        if name == "labels":
            assert metrics["label_accuracy"] >= 0.8
        elif name in ("dlg", "idlg"):
            assert metrics["recovery_rate"] <= 0.1


@pytest.mark.slow
def test_must_show_label_counts_batch_of_32():
    """Label counts of a client of 32 digits after one epoch of one batch, over 5 seeds, with
    the auxiliary probe and with the noise probe."""
    print("\nlabel counts, batch of 32, E=1")
    for aux in (100, 0):
        accuracies = []
        for seed in range(5):
            config = single_sample(32, seed=seed, auxiliary_samples=aux, max_samples=aux + 32)
            accuracies.append(run("labels", config)["label_accuracy"])
        mean = sum(accuracies) / len(accuracies)
        print(f"probe={'auxiliary' if aux else 'noise':<9} count accuracy per seed {[round(a, 3) for a in accuracies]} mean={mean:.3f}")
        assert mean >= 0.9
