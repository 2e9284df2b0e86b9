"""Peer reconstruction (Wilson et al.): the peers' update estimate from consecutive global
models, the inversion of it (plain and with the local autoencoder prior), and the attack
through the audit runner.

The slow test (``-m slow -s``) is the must-show: PSNR of the peers' images on digits with 4,
8 and 16 clients, plain and with the prior, and grids in ``$FLAUDIT_GRID_DIR`` (default
``out/grids``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.utils import save_image

from flaudit.auditor.attacks.base import AttackerKnowledge
from flaudit.auditor.attacks.toolkit.learned_prior import AutoencoderSpec, reconstruction_error, train_autoencoder
from flaudit.auditor.attacks.peer import PeerParams, PeerReconstruction, estimate_peers, others_update
from flaudit.auditor.running.jobs import AttackJob, ResolvedComponent, Unit
from flaudit.auditor.metrics.measures import label_count_accuracy, match_reconstructions, summarize
from flaudit.core.errors import FlauditError
from flaudit.scenarios.fedavg import FedAvgSimulation
from flaudit.scenarios.scenario import ScenarioConfig, build_world


def equal_peers(clients: int, per_client: int, **changes) -> ScenarioConfig:
    """digits with exactly ``per_client`` samples per client (one local batch of them) and no
    auxiliary data: the attacker's only images are its own training samples."""
    base = dict(
        dataset="digits", model="cnn", clients=clients, partition="iid", rounds=1, local_epochs=1,
        batch_size=per_client, max_samples=clients * per_client, seed=0,
    )
    return ScenarioConfig(**{**base, **changes})


def last_round(config: ScenarioConfig):
    world = build_world(config)
    records = []
    FedAvgSimulation(world).run([records.append], progress=False)
    return world, AttackerKnowledge.of(world), records[-1]


def true_peer_sum(record, attacker: int = 0) -> torch.Tensor:
    view = record.server_view
    return sum(n * record.client_updates[c].double() for c, n in zip(view.participants, view.num_samples) if c != attacker)


def attack(world, knowledge, record, params: PeerParams):
    output = PeerReconstruction(params).reconstruct(record.peer_view(0), knowledge)
    index = torch.cat([record.ground_truth[c].sample_indices for c in output.target_clients])
    targets, labels = world.data.train.images[index], world.data.train.labels[index]
    matching = match_reconstructions(output.images, targets)
    return output, targets, matching, label_count_accuracy(output.labels, labels, 10)


def test_others_update_is_the_peers_weighted_sum():
    """Unequal clients (Dirichlet), several local steps and rounds: given the round's total, the
    estimate is the exact sample-weighted sum of the other clients' updates."""
    config = ScenarioConfig(dataset="digits", clients=5, rounds=2, batch_size=16, max_samples=500, alpha=0.5, seed=1)
    world, knowledge, record = last_round(config)
    assert len(set(record.server_view.num_samples)) > 1
    estimate = others_update(record.peer_view(0), sum(record.server_view.num_samples))
    torch.testing.assert_close(estimate, true_peer_sum(record), rtol=0, atol=1e-5)


def test_equal_peers_need_no_side_information():
    """With peers as large as the attacker (the paper's assumption, true here) the attack's own
    estimate of their mean update is exact; with a wrong size assumption it is not."""
    world, knowledge, record = last_round(equal_peers(4, 8, batch_size=4, local_epochs=2))
    view = record.peer_view(0)
    estimate = estimate_peers(view, knowledge, None)
    assert estimate.clients == (1, 2, 3) and estimate.samples == 24
    torch.testing.assert_close(estimate.mean_update * 24, true_peer_sum(record), rtol=0, atol=1e-5)
    wrong = estimate_peers(view, knowledge, 16)
    assert float((wrong.mean_update * 48 - true_peer_sum(record)).abs().max()) > 1e-3


@pytest.fixture(scope="module")
def four_clients():
    return last_round(equal_peers(4, 4))


def test_peers_images_are_recovered_with_their_labels(four_clients):
    """4 clients of 4 digits each, one local step: the attacker inverts its 3 peers' 12 images
    from the global change; the label counts are exact and the images are far above noise."""
    world, knowledge, record = four_clients
    output, targets, matching, label_accuracy = attack(world, knowledge, record, PeerParams(iterations=100))
    assert output.target_clients == (1, 2, 3) and output.images.shape == (12, 1, 8, 8)
    assert label_accuracy == 1.0
    noise = match_reconstructions(torch.rand_like(output.images), targets)
    assert float(matching.psnr.mean()) >= 12.0 > float(noise.psnr.mean()) + 3.0, (matching.psnr.mean(), noise.psnr.mean())
    assert output.diagnostics["prior_local_autoencoder"] == 0.0 and output.diagnostics["images"] == 12


def test_view_carries_exactly_the_attackers_own_samples(four_clients):
    """The peer view holds the images and labels the attacker trained on, and nothing of its
    peers'."""
    world, knowledge, record = four_clients
    own = record.peer_view(0).own_data
    train = world.data.train
    mine = record.ground_truth[0].sample_indices
    assert torch.equal(own.images, train.images[mine]) and torch.equal(own.labels, train.labels[mine])
    theirs = train.images[torch.cat([record.ground_truth[c].sample_indices for c in (1, 2, 3)])]
    assert not (own.images[:, None] == theirs[None]).flatten(2).all(2).any()


def test_local_autoencoder_prior(four_clients):
    """The prior is trained on the attacker's own training images (no auxiliary data in this
    world): it reconstructs them far better than noise, and the attack reports it."""
    world, knowledge, record = four_clients
    assert knowledge.auxiliary is None
    own = record.peer_view(0).own_data
    spec = AutoencoderSpec(width=16, steps=200, batch_size=64, lr=1e-3, noise=0.1, seed=0)
    autoencoder = train_autoencoder(own, spec, torch.device("cpu"))
    with torch.no_grad():
        own_error = float(reconstruction_error(autoencoder, own.images))
        noise = float(reconstruction_error(autoencoder, torch.rand_like(own.images)))
    assert own_error < noise / 3, (own_error, noise)
    assert PeerReconstruction(PeerParams(prior="local_autoencoder")).not_applicable(equal_peers(4, 4), []) is None
    output, _, matching, _ = attack(world, knowledge, record, PeerParams(prior="local_autoencoder", iterations=30))
    assert output.diagnostics["prior_local_autoencoder"] == 1.0 and output.diagnostics["prior_own_training_images"] == 4


def test_client_sampling_makes_it_not_applicable(four_clients):
    assert "sample_fraction" in PeerReconstruction().not_applicable(equal_peers(4, 4, sample_fraction=0.5), [])
    assert PeerReconstruction().not_applicable(equal_peers(4, 4), []) is None
    world, knowledge, record = four_clients
    view = record.peer_view(0)
    with pytest.raises(FlauditError, match="client sampling"):
        estimate_peers(view, dataclasses.replace(knowledge, num_clients=6), None)


def test_runner_scores_the_peers():
    """Through ``Unit.run`` with the default (cheap) parameters: the peer view of client 0, the
    output scored against its peers' samples and labels."""
    scenario = equal_peers(4, 4)
    job = AttackJob(
        cell_id="peer", scenario=scenario, defenses=(), attack=ResolvedComponent("peer", PeerReconstruction, PeerParams()),
        attacked_round=0, attacker_client=None, psnr_threshold=20.0, margin_db=1.0, grid_images=4, threads=1,
    )
    assert not job.shapes_model
    [(_, result)] = Unit(scenario, (), 1, None, (job,)).stream(lambda index: None)
    assert result["status"] == "ok", result.get("error")
    assert result["target_clients"] == [1, 2, 3]
    assert result["metrics"]["n_targets"] == 12 and result["metrics"]["label_accuracy"] == 1.0


@pytest.mark.slow
def test_psnr_falls_as_clients_grow():
    """Must-show: 8 digits per client, one local step (B=8, E=1), 500 inversion steps; the
    attacker (client 0) inverts all its peers' images, plain and with the local prior."""
    folder = Path(os.environ.get("FLAUDIT_GRID_DIR", "out/grids"))
    folder.mkdir(parents=True, exist_ok=True)
    print("\nPeer reconstruction on digits, 8 samples per client, B=8, E=1, 500 inversion steps")
    print("clients | peers' images | prior             | PSNR mean | PSNR median | SSIM  | rate@20dB | labels | seconds")
    table = {}
    for clients in (4, 8, 16):
        world, knowledge, record = last_round(equal_peers(clients, 8))
        for prior in ("none", "local_autoencoder"):
            began = time.perf_counter()
            output, targets, matching, label_accuracy = attack(world, knowledge, record, PeerParams(prior=prior, iterations=500))
            seconds = time.perf_counter() - began
            s = summarize(matching, len(targets), 20.0)
            table[clients, prior] = s.psnr_mean
            print(f"{clients:7d} | {len(targets):13d} | {prior:17s} | {s.psnr_mean:9.2f} | {s.psnr_median:11.2f} | "
                  f"{s.ssim_mean:.3f} | {s.recovery_rate:9.2f} | {label_accuracy:6.2f} | {seconds:7.1f}")
            if clients == 4:
                pairs = torch.cat([targets[matching.target_idx], output.images[matching.recon_idx]])
                save_image(F.interpolate(pairs, scale_factor=4, mode="nearest"), folder / f"peer_digits_4clients_{prior}.png",
                           nrow=len(targets), padding=2, pad_value=1.0)
    for prior in ("none", "local_autoencoder"):
        assert table[4, prior] > table[16, prior], table
    assert table[4, "local_autoencoder"] > table[4, "none"], table
