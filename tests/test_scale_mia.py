"""Scale-MIA: the crafted latent layer leaks each lone sample's latent exactly, the selection
keeps exactly the lone ones from observations alone, for ``cnn`` (autoencoder), ``mlp`` (exact
pixels) and ``resnet18`` (class rows), on the plain aggregate and through secure aggregation.

The slow tests (``-m slow``) train the autoencoder for a few minutes and produce the issue's
numbers: 4 clients x 32 images with 500 auxiliary images, and the batch from 32 to 256, with
grids saved under ``$FLAUDIT_GRID_DIR`` (default ``out/grids``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses

import pytest
import torch

from flaudit.auditor.attacks.base import AttackerKnowledge
from flaudit.auditor.attacks.toolkit import nulls
from flaudit.auditor.attacks.toolkit.imprint import gradient_estimate, isolated_fraction, isolation_bound, subtract_readout_drift
from flaudit.auditor.attacks.toolkit.preparation import Preparations
from flaudit.auditor.attacks.scale_mia import (
    AUTOENCODER_PARAMS,
    LEAKAGE_LAYERS,
    MODEL_ADAPTERS,
    ScaleMia,
    ScaleMiaParams,
    ScaleMiaServer,
    adapter_for,
    clean_solve_count,
    dihedral_copies,
    drift_by_group,
    install,
    lone_solve_errors,
    merge_visits,
)
from flaudit.auditor.metrics.measures import match_reconstructions, summarize
from flaudit.defenses.base import compose
from flaudit.defenses.secagg import SecAgg
from flaudit.core.errors import ConfigError, FlauditError
from flaudit.scenarios.fedavg import FedAvgSimulation
from flaudit.scenarios.hooks import FLHooks
from flaudit.scenarios.scenario import ScenarioConfig, build_world
from test_rtf import Attacked, attack_round, patches, save_grid, scores

FAST_AE = ScaleMiaParams(ae_epochs=10)


def solved_round(result: Attacked, attack: ScaleMia):
    """The attack's per-interval solve of the round, and the ground truth: each target's
    interval (its number of active bins - 1) and true latent, from the sent model."""
    model = result.view.model
    layers = adapter_for(model).layers(model, result.knowledge.image_shape)
    update = result.view.layout.unflatten(result.view.aggregate)
    view = result.view
    weight = gradient_estimate(update[f"{layers.imprint_name}.weight"], view.num_samples, view.training)
    bias = gradient_estimate(update[f"{layers.imprint_name}.bias"], view.num_samples, view.training)
    solved = LEAKAGE_LAYERS["binned"].solve(weight, bias, view, attack.server.sent_for(view.model).crafting.layers, attack.params)
    with torch.no_grad():
        latents = layers.encoder(result.targets).flatten(1)
        interval = (layers.imprint(latents) > 0).sum(1) - 1
    return solved, latents, interval


@pytest.fixture(scope="module")
def cnn_round():
    attack = ScaleMia(FAST_AE)
    return attack, attack_round(attack, patches(2, 32, batch_size=32))


def test_lone_samples_latents_are_recovered_exactly(cnn_round):
    attack, result = cnn_round
    solved, latents, interval = solved_round(result, attack)
    counts = torch.bincount(interval, minlength=512)
    lone = counts[interval] == 1
    assert lone.float().mean() >= isolation_bound(64, 512) - 0.15
    for latent in latents[lone]:  # each lone latent is one of the solves, to float32 rounding
        error = (solved.latents - latent).norm(dim=1).min() / latent.norm()
        assert error < 1e-3


def test_selection_counts_samples_from_observations(cnn_round):
    """Kept = the intervals that hold one sample, decided from the bias-gradient differences
    (one unit per sample) and the latents; the ground truth agrees exactly, and the lone
    samples decode to recognisable images even with a 10-epoch autoencoder."""
    attack, result = cnn_round
    solved, _, interval = solved_round(result, attack)
    truth = isolated_fraction(interval)
    assert int(solved.one_sample.sum()) == round(truth * 64)
    assert result.output.diagnostics["selected_bins"] == round(truth * 64)
    _, at15 = scores(result, 15.0)
    assert at15.recovery_rate >= 0.9 * truth


def test_reconstruction_reads_the_aggregate_only(cnn_round):
    attack, result = cnn_round
    hidden = dataclasses.replace(result.view, uploads=None, transcript={})
    assert torch.equal(attack.reconstruct(hidden, result.knowledge).images, result.output.images)


def blind_rate(result: Attacked, threshold: float) -> float:
    """What a data-blind attacker matches: as many of its own auxiliary images as there are
    targets (photo_patches holds many flat patches, so this is far from 0 at 18 dB)."""
    guess = nulls.drawn(result.knowledge.auxiliary.images, len(result.targets), torch.Generator().manual_seed(0))
    return summarize(match_reconstructions(guess, result.targets), len(result.targets), threshold).recovery_rate


def test_balanced_encoder_keeps_the_function_and_slows_the_bins(cnn_round):
    """The encoder's ReLU scale invariance: with the balanced scales the crafted model computes
    the same logits as without, and one simulated local step moves its bins several times less
    (the imprint rows' own update, which grows with the latent's squared norm, dominates)."""
    attack, result = cnn_round
    world, hook = result.world, attack.server
    balanced = hook.before_round(0, world.new_model())
    sent = hook.sent_for(balanced)
    assert len(sent.scales) == 2 and float(sent.scales[-1]) < 1.0
    plain = world.new_model()
    adapter = adapter_for(plain)
    install(adapter.layers(plain, (3, 32, 32)), sent.crafting.autoencoder.encoder, sent.crafting.layers, torch.ones(0))
    images, labels = world.auxiliary.images[:8], world.auxiliary.labels[:8]
    with torch.no_grad():
        torch.testing.assert_close(balanced(images), plain(images), rtol=1e-4, atol=1e-5)

    def drift(model):
        return sum(drift_by_group(model, adapter.layers(model, (3, 32, 32)), images, labels, 0.05).values())

    assert drift(balanced) < drift(plain) / 3, (drift(balanced), drift(plain))


def test_merge_visits_sums_one_samples_shares():
    """Two visits of one latent (halves of a share) are one sample; a lone full share is one;
    two distinct latents' full shares stay two; an over-full group is dropped."""
    a, b, c = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])
    latents = torch.stack([a, a * 1.001, b, c, c])
    shares = torch.tensor([0.5, 0.5, 1.0, 1.0, 1.0])
    kept = merge_visits(latents, shares, (0.4, 1.3), 0.01)
    assert len(kept) == 2  # a (merged visits), b; the two c's sum to two samples
    assert torch.cdist(kept, torch.stack([a * 1.0005, b])).min(0).values.max() < 1e-6
    assert len(merge_visits(latents, shares, (0.4, 1.3), 0.0)) == 3  # only identical latents merge: a, a', b


def test_readout_drift_is_read_from_empty_intervals_and_subtracted():
    """Cumulative bins whose readout columns drifted apart while a client trained: bin k's
    upstream for sample i is ``1 + d_i * rho(e_k)``, ``rho`` piecewise linear in the threshold
    with a knot at every sample (its own step's readout update). Every sample above an
    interval adds its latent to the interval's difference, in proportion to the interval's
    width; the empty interval above shows that alone. Subtracted, the lone samples solve to
    their latents several times more closely, and to about one sample's bias-gradient share."""
    g = torch.Generator().manual_seed(0)
    K, D = 64, 24
    widths = 0.5 + torch.rand(K, generator=g, dtype=torch.float64)
    edges = torch.cat([torch.zeros(1, dtype=torch.float64), widths.cumsum(0)])[:K]
    occupied = torch.randperm(K - 1, generator=g)[:20].sort().values  # every third interval or so holds a sample
    position = edges[occupied] + widths[occupied] * (0.1 + 0.8 * torch.rand(20, generator=g, dtype=torch.float64))
    latents = torch.rand(20, D, generator=g, dtype=torch.float64)
    d = torch.randn(20, generator=g, dtype=torch.float64)  # each sample's (p - y) along the drift
    gamma = 0.02 * (1 + 0.3 * torch.randn(20, generator=g, dtype=torch.float64))  # momentum keeps the drift's sign
    rho = ((position[None, :] - edges[:, None]).clamp(min=0) * gamma[None, :]).sum(1)  # [K]
    upstream = 1 + d[None, :] * rho[:, None]  # [K, samples]
    above = (position[None, :] > edges[:, None]).double()
    weight, bias = (above * upstream) @ latents, (above * upstream).sum(1)
    empty = torch.ones(K, dtype=torch.bool)
    empty[occupied] = False
    fixed_w, fixed_b = subtract_readout_drift(weight.float(), bias.float(), (widths * 0.01).float(), empty)

    def errors(w, b):
        w, b = torch.cat([w.double(), torch.zeros(1, D, dtype=torch.float64)]), torch.cat([b.double(), torch.zeros(1, dtype=torch.float64)])
        solved = (w[:-1] - w[1:])[occupied] / (b[:-1] - b[1:])[occupied, None]
        return (solved - latents).norm(dim=1) / latents.norm(dim=1), (b[:-1] - b[1:])[occupied]

    plain, plain_share = errors(weight, bias)
    fixed, fixed_share = errors(fixed_w, fixed_b)
    assert float(plain.median()) > 0.05 and float(fixed.median()) < float(plain.median()) / 5, (plain, fixed)
    assert float((fixed_share - upstream[occupied, torch.arange(20)]).abs().max()) < float((plain_share - upstream[occupied, torch.arange(20)]).abs().max()) / 3


@pytest.fixture(scope="module")
def multi_step_round():
    """Two clients of 32 images, E=2 epochs of B=16 (four local steps each, every sample
    twice), the 10-epoch autoencoder of ``cnn_round`` (same data: the preparation is shared)."""
    attack = ScaleMia(FAST_AE)
    return attack, attack_round(attack, patches(2, 32, local_epochs=2, batch_size=16))


def test_multi_step_round_leaks_beyond_a_data_blind_guess(multi_step_round):
    """Several local steps per client: the recovery stays near the bound and well above what
    the attacker's own images match (without the balanced encoder and the merged visits, the
    attack recovers ~0.38 here, as much as the blind guess)."""
    attack, result = multi_step_round
    _, at18 = scores(result, 18.0)
    bound, blind = isolation_bound(64, 512), blind_rate(result, 18.0)
    assert at18.recovery_rate >= 0.65 * bound and at18.recovery_rate >= blind + 0.25, (at18.recovery_rate, bound, blind)


def test_multi_step_threshold_is_measured_on_a_simulated_client(cnn_round, multi_step_round):
    """One local step: the held-out latents' threshold. Several: a simulated client of the
    attacker's own images shows its lone visits' solves reprojecting worse, and the selection
    admits that much (the data-blind test below shows it still keeps nothing from a shuffled
    update)."""
    attack, result = cnn_round
    assert result.output.diagnostics["reprojection_threshold"] == attack.server.sent_for(result.view.model).crafting.reprojection_threshold
    attack, result = multi_step_round
    sent, params = attack.server.sent_for(result.view.model), attack.params
    lone = lone_solve_errors(result.view, result.knowledge, sent.crafting, params, sent.latent_scale)
    assert len(lone) >= 32  # 32 simulated images, each in one or two intervals of 512
    expected = float(torch.quantile(lone.double(), params.selection_quantile)) * params.selection_slack
    assert result.output.diagnostics["reprojection_threshold"] == pytest.approx(max(expected, sent.crafting.reprojection_threshold))
    assert expected > sent.crafting.reprojection_threshold


def test_autoencoder_is_shared_by_rows_that_differ_in_the_crafting_only():
    """The prepared autoencoder's key holds ``AUTOENCODER_PARAMS`` alone: a row with another
    crafting (another logit spread, the selection) reuses it, one with another training builds
    its own."""
    world = build_world(patches(2, 8, auxiliary_samples=40))
    saved = []

    class Store:
        def lock(self, key):
            return contextlib.nullcontext()

        def load(self, key):
            return None

        def save(self, key, state):
            saved.append(key)

    prepared = Preparations(Store())
    quick = ScaleMiaParams(ae_epochs=1)
    for params in (quick, dataclasses.replace(quick, logit_spread=0.05, selection_slack=2.0, merge_quantile=0.1),
                   dataclasses.replace(quick, ae_lr=1e-3)):
        ScaleMia(params).prepare(AttackerKnowledge.of(world, prepared)).before_round(0, world.new_model())
    assert len(saved) == 2 and len(set(saved)) == 2
    assert set(AUTOENCODER_PARAMS) <= {f.name for f in dataclasses.fields(ScaleMiaParams)}


def test_server_sends_the_spread_whose_trial_kept_more():
    """Rounds 0 and 1 are crafted at ``logit_spread`` and ``trial_spread``; the server scores
    each by its aggregate's clean solves (observations only) and sends the better one from
    round 2 on; every round is read with the crafting it was sent with, whichever the server
    sends later."""
    world = build_world(patches(2, 16, rounds=3, local_epochs=2, batch_size=8))
    knowledge = AttackerKnowledge.of(world)
    attack = ScaleMia(FAST_AE)
    server = attack.prepare(knowledge)
    records = []
    FedAvgSimulation(world, FLHooks(server_model=server)).run([records.append], progress=False)
    assert set(server.clean) == {0.01, 0.05}
    best = max(server.spreads, key=lambda spread: server.clean[spread])
    views = [record.server_view for record in records]
    assert [attack.reconstruct(view, knowledge).diagnostics["logit_spread"] for view in views] == [0.01, 0.05, best]
    first = views[0]
    assert server.clean[0.01] == clean_solve_count(first, knowledge, server.sent_for(first.model), attack.params) > 0


def test_spread_choice_follows_the_observations():
    """Ties and rounds nobody observed keep ``logit_spread``; ``trial_spread = 0`` tries nothing."""
    world = build_world(patches(2, 8, auxiliary_samples=40))
    knowledge = AttackerKnowledge.of(world)
    server = ScaleMiaServer(ScaleMiaParams(), knowledge)
    assert server.spreads == (0.01, 0.05) and [server.spread_for(r) for r in range(3)] == [0.01, 0.05, 0.01]
    server.clean = {0.01: 3, 0.05: 7}
    assert server.spread_for(2) == server.spread_for(9) == 0.05
    server.clean = {0.01: 4, 0.05: 4}
    assert server.spread_for(2) == 0.01
    single = ScaleMiaServer(ScaleMiaParams(trial_spread=0.0), knowledge)
    assert single.spreads == (0.01,) and single.spread_for(1) == 0.01
    with pytest.raises(FlauditError, match="not one this server crafted"):
        server.sent_for(world.new_model())


def test_dihedral_copies_extend_the_held_out_images():
    images = torch.rand(3, 1, 4, 4)
    copies = dihedral_copies(images, 30)
    assert copies.shape == (30, 1, 4, 4) and torch.equal(copies[:3], images)
    assert torch.equal(copies[3:6], images.flip(3)) and torch.equal(copies[6:9], torch.rot90(images, 1, (2, 3)))
    assert torch.equal(copies[24:], copies[:6])  # the eight versions, then again


def test_multi_step_selection_reads_the_update(multi_step_round):
    """The same round with the update's crafted rows shuffled (what an attacker that ignores
    the update's structure has): nothing is kept."""
    attack, result = multi_step_round
    view = result.view
    update = view.layout.unflatten(view.aggregate)
    key = "classifier.0.weight"
    update[key] = update[key][torch.randperm(len(update[key]), generator=torch.Generator().manual_seed(0))]
    shuffled = dataclasses.replace(view, aggregate=torch.cat([update[name].flatten() for name in update]))
    assert len(attack.reconstruct(shuffled, result.knowledge).images) <= 2


def test_mlp_leaks_exact_pixels():
    """The MLP's hidden layer reads the pixels: the identity 'encoder', no autoencoder."""
    result = attack_round(ScaleMia(), patches(2, 32, model="mlp", batch_size=32))
    with torch.no_grad():
        interval = (result.view.model.features[1](result.targets.flatten(1)) > 0).sum(1) - 1
    truth = isolated_fraction(interval)
    matching, at40 = scores(result, 40.0)
    assert at40.recovery_rate == pytest.approx(truth) and truth >= isolation_bound(64, 256) - 0.15
    assert len(result.output.images) == round(truth * 64)


def test_mlp_through_secure_aggregation():
    result = attack_round(ScaleMia(), patches(3, 16, model="mlp", batch_size=16), [SecAgg()])
    assert not result.view.sees_individual_updates
    with torch.no_grad():
        interval = (result.view.model.features[1](result.targets.flatten(1)) > 0).sum(1) - 1
    _, at30 = scores(result, 30.0)
    assert at30.recovery_rate >= isolated_fraction(interval) - 0.1


def test_resnet18_recovers_samples_alone_in_their_class():
    """ResNet-18 has no wide latent layer: with ``fc`` zeroed, the pair (absent class, class c)
    solves to class c's mean latent and its count. Batch-norm statistics are the client's own
    batch (one local step of the whole batch), so the true latents come from that batch."""
    config = ScenarioConfig(
        dataset="digits", model="resnet18", clients=1, partition="iid", rounds=1, batch_size=6,
        auxiliary_samples=100, max_samples=106, seed=0,
    )
    attack = ScaleMia(ScaleMiaParams(ae_epochs=0))
    result = attack_round(attack, config)
    model = copy.deepcopy(result.view.model).train()
    with torch.no_grad():
        trunk = MODEL_ADAPTERS["resnet18"].layers(model, (1, 8, 8)).encoder
        latents = trunk(result.targets)
    labels = result.world.data.train.labels[
        torch.cat([c.train_indices for c in result.world.clients])
    ]
    counts = torch.bincount(labels, minlength=10)
    lone = counts[labels] == 1
    assert result.output.diagnostics["bins"] == 10 and bool(lone.any())
    view = result.view
    update = view.layout.unflatten(view.aggregate)
    weight = gradient_estimate(update["fc.weight"], view.num_samples, view.training)
    bias = gradient_estimate(update["fc.bias"], view.num_samples, view.training)
    solved = LEAKAGE_LAYERS["class_rows"].solve(weight, bias, view, attack.server.sent_for(view.model).crafting.layers, attack.params)
    assert int(solved.one_sample.sum()) == int(lone.sum())
    for latent in latents[lone]:
        assert (solved.latents[solved.one_sample] - latent).norm(dim=1).min() / latent.norm() < 1e-3


def test_clear_errors():
    world = build_world(ScenarioConfig(model="lenet", clients=1, rounds=1, auxiliary_samples=50))
    attack = ScaleMia(ScaleMiaParams(ae_epochs=0))
    with pytest.raises(FlauditError, match="no crafted round to attack"):
        attack.reconstruct(None, AttackerKnowledge.of(world))
    hook = attack.prepare(AttackerKnowledge.of(world))
    with pytest.raises(ConfigError, match=r"scale_mia supports the models \['cnn', 'mlp', 'resnet18'\]"):
        FedAvgSimulation(world, FLHooks(server_model=hook)).run(progress=False)
    with pytest.raises(ConfigError, match="scale_mia needs the attacker's auxiliary data"):
        ScaleMia().prepare(AttackerKnowledge.of(build_world(ScenarioConfig(clients=1, rounds=1))))
    with pytest.raises(ConfigError, match=r"attack.scale_mia.unit_tolerance: must be <= 0.9"):
        ScaleMia.from_table({"unit_tolerance": 2.0})


# ---- slow: the numbers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    """One world (4 clients holding 128 images each, 500 disjoint auxiliary images) and one
    attack whose autoencoder trains once (the issue's 'few minutes'); every experiment below
    gives the clients a slice of their images, so the same crafted model serves all of them."""
    world = build_world(patches(4, 128, batch_size=32))
    attack = ScaleMia()
    hook = attack.prepare(AttackerKnowledge.of(world))
    return world, attack, hook


def run_slice(trained, per_client: int, draw: int, *, epochs: int = 1, batch: int | None = None, defenses=()):
    """One FedAvg round in which each client trains on the ``draw``-th slice of its images in a
    fixed random order (its indices are sorted, and sorted indices group the photos)."""
    world, attack, hook = trained
    order = torch.randperm(len(world.clients[0].train_indices), generator=torch.Generator().manual_seed(0))
    clients = tuple(
        dataclasses.replace(c, train_indices=c.train_indices[order[draw * per_client : (draw + 1) * per_client]])
        for c in world.clients
    )
    config = world.config.replace(local_epochs=epochs, batch_size=batch or per_client)
    sliced = dataclasses.replace(world, clients=clients, config=config)
    knowledge = AttackerKnowledge.of(sliced)
    hooks = compose(list(defenses), sliced) if defenses else FLHooks()
    hooks.server_model = hook
    records = []
    FedAvgSimulation(sliced, hooks).run([records.append], progress=False)
    view = records[-1].server_view
    output = attack.reconstruct(view, knowledge)
    index = torch.cat([records[-1].ground_truth[c].sample_indices for c in view.participants])
    return Attacked(sliced, knowledge, view, output, world.data.train.images[index], hook, output.diagnostics["reconstruction_seconds"])


@pytest.mark.slow
def test_must_show_four_clients_of_32(trained):
    """4 clients x 32 images, 500 auxiliary images, cnn (K=512): rate at 18 dB >= 0.95 x bound
    and recovered images >= 27 dB on average, over 4 disjoint draws of the clients' images."""
    bound = isolation_bound(128, 512)
    rates, psnrs = [], []
    for draw in range(4):
        result = run_slice(trained, 32, draw)
        matching, at18 = scores(result, 18.0)
        rates.append(at18.recovery_rate)
        psnrs.append(float(matching.psnr[matching.psnr >= 18].clamp(max=100).mean()))
        if draw == 0:
            path = save_grid("scale_mia_4x32_cnn", result)
    rate, psnr = sum(rates) / 4, sum(psnrs) / 4
    print(f"\nScale-MIA 4x32 cnn: rate@18dB per draw {[round(r, 3) for r in rates]} mean={rate:.3f} "
          f"(bound {bound:.3f}, 0.95 x bound {0.95 * bound:.3f}), recovered PSNR mean={psnr:.2f} dB, "
          f"phase 1 {trained[2].autoencoder[1]:.0f} s, grid={path}")
    assert rate >= 0.95 * bound and psnr >= 27.0


@pytest.mark.slow
def test_batch_size_table(trained):
    """The paper's table: batch per round 32 -> 256 (4 clients), rate at 18 dB, PSNR of the
    recovered images, phase-2 seconds; and 512 images for the reconstruction time."""
    lines = ["batch | rate@18dB | bound | PSNR dB | phase-2 s"]
    for batch in (32, 64, 128, 256, 512):
        result = run_slice(trained, batch // 4, 0)
        matching, at18 = scores(result, 18.0)
        psnr = float(matching.psnr[matching.psnr >= 18].clamp(max=100).mean())
        bound = isolation_bound(batch, 512)
        lines.append(f"{batch:5d} | {at18.recovery_rate:9.3f} | {bound:5.3f} | {psnr:7.2f} | {result.seconds:.3f}")
        if batch <= 256:
            assert at18.recovery_rate >= 0.9 * bound and psnr >= 27.0
    print("\nScale-MIA cnn, 4 clients, photo_patches 32x32:\n" + "\n".join(lines))


# Floor of the local-steps table (ratio of the rate at 18 dB to the isolation bound): the issue's
# 0.9. On this draw every cell is at 0.99-1.15 (E=5, B=8: 1.00); over 4 draws the means are
# 0.97-1.18 but E=5, B=8 (20 local steps with momentum): 0.86, where the lone visits left are so
# contaminated that they decode to no image (the data-blind guess: ~0.34 of photo_patches'
# targets at 18 dB, 0.44 x bound).
LOCAL_STEP_FLOOR = 0.9


@pytest.mark.slow
def test_local_steps_table(trained):
    """4 clients x 32 images, E in {1, 2, 5} x B in {8, 16, 32}, on the plain aggregate and
    through real secure aggregation: rate at 18 dB against the bound, the recovered images'
    PSNR, and what the attacker's own images match (the data-blind guess). Secure aggregation
    changes nothing (the crafted rows' update is far above its fixed-point step)."""
    bound = isolation_bound(128, 512)
    lines = ["E | B  | secagg | rate@18dB | bound | ratio | PSNR dB | blind@18dB | returned"]
    below, apart = [], []
    for epochs in (1, 2, 5):
        for batch in (8, 16, 32):
            rates = {}
            for secure in (False, True):
                result = run_slice(trained, 32, 0, epochs=epochs, batch=batch, defenses=[SecAgg()] if secure else ())
                matching, at18 = scores(result, 18.0)
                psnr = float(matching.psnr[matching.psnr >= 18].clamp(max=100).mean())
                rates[secure] = at18.recovery_rate
                lines.append(
                    f"{epochs} | {batch:2d} | {'yes' if secure else 'no ':3s}    | {at18.recovery_rate:9.3f} | {bound:5.3f} | "
                    f"{at18.recovery_rate / bound:5.2f} | {psnr:7.2f} | {blind_rate(result, 18.0):10.3f} | {len(result.output.images)}"
                )
                if at18.recovery_rate < LOCAL_STEP_FLOOR * bound:
                    below.append(lines[-1])
            if abs(rates[True] - rates[False]) > 0.05:
                apart.append((epochs, batch))
    print("\nScale-MIA cnn, 4 clients x 32, photo_patches 32x32, K=512:\n" + "\n".join(lines))
    assert not below and not apart, (below, apart)
