"""DMGAN (Hitaj et al.): the adversarial-client hook, the 'fake'-class precondition, the
generator against the global model, and the attack through the audit runner.

The slow test (``-m slow -s``) is the must-show: the study's setting on digits (10 clients,
E=2, B=50, class 3 tracked over 30 rounds), a table per round and the grid of the generator's
images, one row per round, in ``$FLAUDIT_GRID_DIR`` (default ``out/grids``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.utils import save_image

from flaudit.auditor.attacks.base import AttackerKnowledge
from flaudit.auditor.attacks.dmgan import Dmgan, DmganParams, GanClient
from flaudit.auditor.running.jobs import AttackJob, ResolvedComponent, Unit
from flaudit.auditor.metrics.leakage import against_nulls
from flaudit.auditor.metrics.measures import match_reconstructions
from flaudit.auditor.metrics.scoring import Criterion, score_output
from flaudit.core.errors import ConfigError, FlauditError
from flaudit.scenarios.fedavg import FedAvgSimulation
from flaudit.scenarios.hooks import FLHooks
from flaudit.scenarios.scenario import ScenarioConfig, build_world

TRACKED = 3
SMALL = ScenarioConfig(
    dataset="digits", model="cnn", clients=4, rounds=3, local_epochs=1, batch_size=16, partition="shards",
    shards_per_client=3, max_samples=600, extra_classes=1, seed=0,
)
STUDY = ScenarioConfig(  # the study's DMGAN setting (MNIST there), on the embedded digits
    dataset="digits", model="cnn", clients=10, rounds=30, local_epochs=2, batch_size=50, partition="shards",
    shards_per_client=2, extra_classes=1, seed=0,
)


def run_attack(config: ScenarioConfig, params: DmganParams = DmganParams()):
    world = build_world(config)
    knowledge = AttackerKnowledge.of(world)
    attack = Dmgan(params)
    hooks = FLHooks()
    hooks.install(attack.prepare(knowledge), 0)
    records = []
    FedAvgSimulation(world, hooks).run([records.append], progress=False)
    output = attack.reconstruct(records[-1].peer_view(0), knowledge)
    return world, attack, records, output


@pytest.fixture(scope="module")
def small():
    return run_attack(SMALL)


def test_not_applicable_without_the_fake_class_or_under_client_sampling():
    attack = Dmgan()
    reason = attack.not_applicable(SMALL.replace(extra_classes=0), [])
    assert reason is not None and "extra 'fake' output class" in reason
    assert attack.not_applicable(SMALL, []) is None
    assert "sample_fraction" in attack.not_applicable(SMALL.replace(sample_fraction=0.5), [])


def test_the_extra_class_widens_the_model_only():
    world = build_world(SMALL)
    assert world.new_model()(torch.zeros(1, 1, 8, 8)).shape == (1, 11)
    assert world.data.train.num_classes == 10 and int(world.data.train.labels.max()) == 9


def test_generator_output_is_classified_as_the_tracked_class(small):
    """After three rounds the final global model calls the generator's images the tracked class
    far above chance (1 of 11 outputs)."""
    world, attack, records, output = small
    share = output.diagnostics["tracked_class_share"]
    assert share > 0.5 > 1 / 11, output.diagnostics
    assert output.images.shape == (DmganParams().images, 1, 8, 8)
    assert 0.0 <= float(output.images.min()) and float(output.images.max()) <= 1.0
    assert len(attack.adversary.history) == SMALL.rounds + 1  # one generator round per FL round, plus the final one


def test_generator_images_match_the_victims_tracked_class_beyond_the_null(small):
    """Not on the model the generator was trained against: each image is scored on the peers'
    real data (closer to their mean 3 than to their mean of any other class) and against the
    data-blind nulls (the adversary's own images and mean image, and the same generator trained
    against the first global model, before any victim trained it; scored the same way). An
    attack that leaks nothing fails this."""
    world, attack, records, output = small
    record = records[-1]
    criterion = Criterion(20.0)
    scores = score_output(output, world, record.ground_truth, criterion).scores
    guesses = attack.nulls(record.peer_view(0), AttackerKnowledge.of(world), output, seed=1)
    nulls = {g.name: score_output(g.output, world, record.ground_truth, criterion).scores for g in guesses}
    leakage = against_nulls(scores, nulls)
    assert set(nulls) == {"data", "mean", "prior"} and leakage.null_recovery_rate <= 0.1, nulls
    assert scores.recovery_rate >= 0.4 and leakage.leakage >= 0.3, (scores, nulls)


def test_an_adversary_holding_the_tracked_class_is_refused():
    with pytest.raises(FlauditError, match="holds none of the tracked class 1; client 0 holds"):
        run_attack(SMALL.replace(rounds=1), DmganParams(tracked_class=1, generator_steps=2))


def test_adversary_uploads_from_its_own_data_only(small):
    """The adversary's trace holds its own samples only (the generated ones are not samples),
    its update reaches the aggregate, and its targets are its peers."""
    world, attack, records, output = small
    own = set(world.clients[0].train_indices.tolist())
    for record in records:
        assert set(record.ground_truth[0].sample_indices.tolist()) <= own
        assert record.server_view.uploads[0].client_id == 0
        torch.testing.assert_close(record.server_view.uploads[0].update, record.client_updates[0])
    assert output.target_clients == (1, 2, 3)
    assert output.diagnostics["own_tracked_samples"] == int((world.data.train.labels[world.clients[0].train_indices] == TRACKED).sum())


def test_a_model_without_the_fake_class_is_rejected():
    config = SMALL.replace(extra_classes=0, rounds=1)
    with pytest.raises(FlauditError, match="no 'fake' class"):
        run_attack(config)
    world = build_world(config)
    with pytest.raises(ConfigError, match="tracked_class"):
        Dmgan(DmganParams(tracked_class=10)).prepare(AttackerKnowledge.of(world))


def test_install_slots_hooks_by_type():
    class Server:
        def before_round(self, round_index, model):
            return model

    hooks, server = FLHooks(), Server()
    hooks.install(server, 3)
    assert hooks.server_model is server and hooks.adversarial_clients == {}
    adversary = Dmgan().prepare(AttackerKnowledge.of(build_world(SMALL)))
    hooks.install(adversary, 2)
    assert hooks.adversarial_clients == {2: adversary} and hooks.server_model is server


def test_runner_installs_the_adversarial_client():
    """Through ``Unit.run``: the prepared GanClient replaces client 0's training and the cell is
    scored against the peers' samples."""
    params = DmganParams(generator_steps=20, images=8)
    job = AttackJob(
        cell_id="dmgan", scenario=SMALL.replace(rounds=2), defenses=(), attack=ResolvedComponent("dmgan", Dmgan, params),
        attacked_round=1, attacker_client=None, psnr_threshold=20.0, margin_db=1.0, grid_images=4, threads=1,
    )
    assert job.shapes_model
    [(_, result)] = Unit(job.scenario, (), 1, None, (job,)).stream(lambda index: None)
    assert result["status"] == "ok", result.get("error")
    assert result["target_clients"] == [1, 2, 3]
    assert result["metrics"]["n_reconstructed"] == 8 and result["diagnostics"]["generator_rounds"] == 3.0
    assert result["metrics"]["n_targets"] == 8 and "leakage" in result["metrics"]  # each image vs the peers' class means
    assert isinstance(Dmgan(params).prepare(AttackerKnowledge.of(build_world(SMALL))), GanClient)


@pytest.mark.slow
def test_study_setting_generator_tracks_class_3_over_30_rounds():
    """Must-show: per round, the share of that round's generator images the FINAL global model
    calls 3, the share whose nearest real class mean (test split) is 3, and the best PSNR of
    each image against the victims' real 3s. The grid has one row per round."""
    world, attack, records, output = run_attack(STUDY)
    final = records[-1].model_after.eval()
    test = world.data.test
    means = torch.stack([test.images[test.labels == c].mean(0) for c in range(10)])
    victims = [c for c in output.target_clients]
    index = torch.cat([records[-1].ground_truth[c].sample_indices for c in victims])
    threes = world.data.train.images[index][world.data.train.labels[index] == TRACKED]
    print(f"\nDMGAN on digits: 10 clients, E=2, B=50, adversary = client 0 (holds "
          f"{int(output.diagnostics['own_tracked_samples'])} threes), tracked class {TRACKED}")
    print(f"final test accuracy {records[-1].test_accuracy:.3f}; victims' 3s: {len(threes)}")
    print("round | final model says 3 | nearest class mean is 3 | mean best PSNR vs victims' 3s (dB)")
    rows = []
    for r, images in enumerate(attack.adversary.history):
        with torch.no_grad():
            says = float((final(images).argmax(1) == TRACKED).float().mean())
        nearest = ((images[:, None] - means[None]) ** 2).flatten(2).sum(2).argmin(1)
        mse = ((images[:, None] - threes[None]) ** 2).flatten(2).mean(2).min(1).values
        psnr = float((10 * torch.log10(1 / mse.clamp(min=1e-10))).mean())
        rows.append((says, float((nearest == TRACKED).float().mean()), psnr))
        label = "final" if r == len(attack.adversary.history) - 1 else str(r)
        print(f"{label:>5} | {says:18.2f} | {rows[-1][1]:23.2f} | {psnr:6.2f}")
    matching = match_reconstructions(output.images, threes)
    print(f"output: tracked_class_share={output.diagnostics['tracked_class_share']:.2f} "
          f"fake_class_share={output.diagnostics['fake_class_share']:.2f}; Hungarian PSNR vs victims' 3s "
          f"{float(matching.psnr.mean()):.2f} dB")
    folder = Path(os.environ.get("FLAUDIT_GRID_DIR", "out/grids"))
    folder.mkdir(parents=True, exist_ok=True)
    grid = torch.cat(attack.adversary.history)
    save_image(F.interpolate(grid, scale_factor=4, mode="nearest"), folder / "dmgan_digits_rounds.png",
               nrow=attack.params.images, padding=2, pad_value=1.0)
    assert output.diagnostics["tracked_class_share"] > 0.5
    assert rows[-1][1] > 0.5  # the last rounds' images look like 3s to a classifier the attack never saw
