"""GRNN and GGL, the generative honest-server attacks: the shared generator, GRNN's Wasserstein
term, both attacks on a single gradient and on a FedAvg round, GGL's applicability.

The slow tests (``-m slow -s``) print the must-show tables: both attacks on single 16x16
digits and on realistic client updates (E=5, B=50, Dirichlet 0.5), and GGL with its trained
versus an untrained generator, next to what the trained generator gives WITHOUT the gradient.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from flaudit.auditor.attacks.registry import ATTACKS
from flaudit.auditor.attacks.base import AttackerKnowledge, AttackOutput
from flaudit.auditor.attacks.toolkit.generators import DecoderSpec, ImageGenerator, trained_decoder
from flaudit.auditor.attacks.toolkit.preparation import Preparations
from flaudit.auditor.attacks.ggl import Ggl, GglParams
from flaudit.auditor.attacks.grnn import Grnn, GrnnParams, LayerWasserstein
from flaudit.auditor.metrics.measures import psnr
from flaudit.auditor.metrics.scoring import score
from flaudit.defenses.secagg import SecAgg
from flaudit.scenarios.client import make_loader, train_client
from flaudit.core.errors import FlauditError
from flaudit.scenarios.fedavg import FedAvgSimulation
from flaudit.scenarios.scenario import ScenarioConfig, build_world
from flaudit.scenarios.updates import ParamLayout
from flaudit.scenarios.views import ClientUpload, ServerView, TrainingSpec

SINGLE_STEP = TrainingSpec(epochs=1, batch_size=1, lr=0.05, momentum=0.0, weight_decay=0.0)
REALISTIC = ScenarioConfig(
    dataset="digits", image_size=16, model="cnn", clients=20, rounds=2, local_epochs=5, batch_size=50,
    lr=0.05, partition="dirichlet", alpha=0.5, auxiliary_samples=100, seed=0,
)


def single_gradient_view(world, index: int) -> tuple[ServerView, torch.Tensor]:
    """The server's view of one client that trained one SGD step on one image (the gradient
    inversion setting), through the real client training; returns the view and the image."""
    model = world.new_model()
    layout = ParamLayout.of(model)
    image, label = world.data.train.images[index : index + 1], world.data.train.labels[index : index + 1]
    loader = make_loader(image, label, torch.tensor([index]), 1, seed=0)
    local, _ = train_client(0, 0, model, loader, SINGLE_STEP, [])
    update = layout.flatten(local) - layout.flatten(model)
    view = ServerView(0, model, layout, SINGLE_STEP, (0,), (1,), (ClientUpload(0, 1, update),), update)
    return view, image


@pytest.fixture(scope="module")
def digits():
    world = build_world(ScenarioConfig(dataset="digits", clients=4, rounds=1, batch_size=8, auxiliary_samples=100))
    return world, AttackerKnowledge.of(world)


def test_generator_gives_images_of_any_shape_in_unit_range():
    for shape in ((1, 8, 8), (3, 32, 32), (1, 25, 25)):
        with torch.no_grad():
            images = ImageGenerator(16, shape, width=16)(torch.randn(3, 16))
        assert images.shape == (3, *shape)
        assert float(images.min()) > 0 and float(images.max()) < 1


def test_layer_wasserstein_compares_value_distributions_not_positions():
    model = build_world(ScenarioConfig(dataset="digits", clients=2)).new_model()
    layout = ParamLayout.of(model)
    observed = torch.randn(layout.numel)
    distance = LayerWasserstein(observed, layout, entries=layout.numel, seed=0)
    shuffled = torch.cat([part[torch.randperm(part.numel())] for part in observed.split([s.numel() for s in layout.shapes])])
    assert float(distance(shuffled)) == pytest.approx(0.0, abs=1e-6)
    assert float(distance(2 * observed)) == pytest.approx(float(observed.square().sum()), rel=1e-4)


def test_grnn_recovers_one_digit_from_its_single_gradient(digits):
    world, knowledge = digits
    view, image = single_gradient_view(world, int(world.clients[0].train_indices[0]))
    output = Grnn().reconstruct(view, knowledge)
    assert output.images.shape == (1, 1, 8, 8)
    assert float(output.images.min()) >= 0 and float(output.images.max()) <= 1
    grey = psnr(torch.full_like(image, float(image.mean())), image)
    assert float(psnr(output.images, image)) >= 20.0
    assert float(psnr(output.images, image)) >= float(grey) + 10.0
    assert output.labels.tolist() == world.data.train.labels[world.clients[0].train_indices[:1]].tolist()


def test_ggl_search_lowers_the_gradient_distance(digits):
    world, knowledge = digits
    view, _ = single_gradient_view(world, int(world.clients[0].train_indices[0]))
    output = Ggl(GglParams(evaluations=150, prior_steps=100)).reconstruct(view, knowledge)
    assert output.images.shape == (1, 1, 8, 8)
    assert float(output.images.min()) >= 0 and float(output.images.max()) <= 1
    assert output.diagnostics["loss"] < 0.5 * output.diagnostics["loss_start"]
    assert output.labels.tolist() == world.data.train.labels[world.clients[0].train_indices[:1]].tolist()


@pytest.fixture(scope="module")
def fedavg_view(digits):
    return FedAvgSimulation(digits[0]).run_round(0).server_view


@pytest.mark.parametrize("distance", ["cosine", "l2"])
def test_ggl_scores_one_image_against_the_client_update_scaled_to_its_steps(digits, fedavg_view, distance):
    """GGL's loss at the search's start, computed a generation at a time, is the distance of
    the prior image's simulated update, times the client's step count over one
    image's, to the observed update (relative to its energy for L2), plus the latent term."""
    from flaudit.auditor.attacks.label_inference import inferred_labels
    from flaudit.auditor.attacks.toolkit.imprint import local_steps
    from flaudit.auditor.attacks.toolkit.local_update import gradient_distance, parameter_mask, simulate_update

    world, knowledge = digits
    view = fedavg_view
    upload = view.uploads[0]
    attack = Ggl(GglParams(evaluations=2, prior_steps=20, distance=distance))
    output = attack.reconstruct(view, knowledge)
    label = torch.bincount(inferred_labels(view, upload, knowledge), minlength=knowledge.num_classes).argmax()[None]
    with torch.no_grad():
        image = attack.generator(knowledge, torch.device("cpu"))(torch.zeros(1, 16), label)
    ratio = local_steps(upload.num_samples, view.training) / local_steps(1, view.training)
    assert ratio > 1  # the scaling is exercised
    entries = parameter_mask(view.layout)
    candidate = ratio * simulate_update(view.model, view.layout, view.training, image, label, create_graph=False)
    observed = upload.update[entries]
    expected = float(gradient_distance(candidate[entries], observed, distance).detach())
    expected /= float(observed.square().sum()) if distance == "l2" else 1.0
    assert output.diagnostics["loss_start"] == pytest.approx(expected + 0.1, rel=1e-4)  # + latent_weight (0 - 1)^2


def test_trained_generator_is_prepared_once_per_data_and_spec(digits):
    world, _ = digits
    prepared, cpu = Preparations(), torch.device("cpu")
    spec = DecoderSpec(latent_dim=4, width=8, steps=1, batch_size=8, lr=1e-3, seed=0)
    first = trained_decoder(prepared, world.auxiliary, spec, cpu)
    assert trained_decoder(prepared, world.auxiliary, spec, cpu) is first
    other_seed = DecoderSpec(latent_dim=4, width=8, steps=1, batch_size=8, lr=1e-3, seed=1)
    assert trained_decoder(prepared, world.auxiliary, other_seed, cpu) is not first
    assert trained_decoder(prepared, world.auxiliary.subset(range(50)), spec, cpu) is not first


def test_ggl_needs_auxiliary_data_unless_its_generator_is_untrained():
    without = ScenarioConfig(auxiliary_samples=0)
    assert "auxiliary" in Ggl().not_applicable(without, [])
    assert Ggl(GglParams(pretrained_generator=False)).not_applicable(without, []) is None
    assert Ggl().not_applicable(ScenarioConfig(auxiliary_samples=100), []) is None
    assert "aggregate" in Ggl().not_applicable(ScenarioConfig(auxiliary_samples=100), [SecAgg()])
    assert "aggregate" in Grnn().not_applicable(ScenarioConfig(), [SecAgg()])


def test_both_attack_a_fedavg_round_and_name_their_target(digits):
    world, knowledge = digits
    records = []
    FedAvgSimulation(world).run([records.append], progress=False)
    view = records[0].server_view
    for attack in (Grnn(GrnnParams(iterations=2)), Ggl(GglParams(evaluations=10, prior_steps=5, target_client=2))):
        output = attack.reconstruct(view, knowledge)
        expected = 1 if attack.name == "ggl" else 8
        assert output.images.shape == (expected, 1, 8, 8) and output.labels.shape == (expected,)
        scored = score(output, world.data.train, records[0].ground_truth, 20.0)
        assert scored.metrics["n_reconstructed"] == expected
    assert Grnn(GrnnParams(iterations=1)).reconstruct(view, knowledge).target_clients == (view.participants[0],)
    with pytest.raises(FlauditError, match="target_client=99"):
        Grnn(GrnnParams(target_client=99)).reconstruct(view, knowledge)
    assert {"grnn", "ggl"} <= set(ATTACKS.names())


# ---- must-show tables (slow) -------------------------------------------------------------------


def no_gradient_baselines(attack: Ggl, output: AttackOutput, knowledge: AttackerKnowledge, targets: torch.Tensor) -> dict:
    """What the trained generator and the auxiliary data give WITHOUT the update: the
    generator's image at the latent origin for GGL's label (all an attacker who knows the
    label gets from the prior), and two oracles that read the targets: the generator's closest
    image (latent fitted to the best-matching target's pixels) and the closest auxiliary image."""
    decoder = attack.generator(knowledge, torch.device("cpu"))
    label = output.labels[:1]
    torch.manual_seed(0)  # the projection's latent restarts
    origin = decoder(torch.zeros(1, decoder.latent_dim), label)
    latent = torch.randn(16, decoder.latent_dim, requires_grad=True)
    optimizer = torch.optim.Adam([latent], lr=0.05)
    best_projection = float("-inf")
    for target in targets:
        latent.data.normal_()
        for _ in range(150):
            loss = (decoder(latent, label.expand(16)) - target).square().flatten(1).mean(1).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            best_projection = max(best_projection, float(psnr(decoder(latent, label.expand(16)), target.expand(16, -1, -1, -1)).max()))
    aux = knowledge.auxiliary.images
    nearest_aux = max(float(psnr(aux, t.expand_as(aux)).max()) for t in targets)
    origin_psnr = max(float(psnr(origin, t[None])) for t in targets)
    return {"origin": origin_psnr, "projection": best_projection, "nearest_aux": nearest_aux}


def table(title: str, rows: dict[str, list[float]]) -> None:
    print(f"\n{title}")
    print(f"{'method':<58} {'mean PSNR':>9} {'median':>7}  per target")
    for name, values in rows.items():
        print(f"{name:<58} {statistics.mean(values):9.2f} {statistics.median(values):7.2f}  " + " ".join(f"{v:.1f}" for v in values))


GRNN_TABLE = GrnnParams(iterations=300)
GGL_TABLE = dict(evaluations=2000)


@pytest.mark.slow
def test_must_show_single_gradient_16x16():
    world = build_world(REALISTIC.replace(clients=4, rounds=1))
    knowledge = AttackerKnowledge.of(world)
    rows: dict[str, list[float]] = {}
    for index in world.clients[0].train_indices[:5].tolist():
        view, image = single_gradient_view(world, index)
        trained = Ggl(GglParams(**GGL_TABLE))
        results = {
            f"GRNN ({GRNN_TABLE.iterations} it)": Grnn(GRNN_TABLE).reconstruct(view, knowledge),
            f"GGL trained generator ({GGL_TABLE['evaluations']} ev)": trained.reconstruct(view, knowledge),
            "GGL untrained generator": Ggl(GglParams(pretrained_generator=False, **GGL_TABLE)).reconstruct(view, knowledge),
        }
        for name, output in results.items():
            rows.setdefault(name, []).append(float(psnr(output.images, image)))
        baselines = no_gradient_baselines(trained, results[next(k for k in results if "GGL trained" in k)], knowledge, image)
        for name, value in baselines.items():
            rows.setdefault(f"no gradient: {name}", []).append(value)
        rows.setdefault("grey image of the target's mean", []).append(float(psnr(torch.full_like(image, float(image.mean())), image)))
    table("single gradient, one 16x16 digit, cnn (E=1, B=1, lr 0.05)", rows)
    grnn, ggl, untrained = (statistics.mean(v) for v in list(rows.values())[:3])
    assert grnn >= 20.0
    assert ggl > untrained + 3.0


@pytest.mark.slow
def test_must_show_realistic_client_updates():
    world = build_world(REALISTIC)
    knowledge = AttackerKnowledge.of(world)
    records = []
    FedAvgSimulation(world).run([records.append], progress=False)
    record = records[-1]
    view = record.server_view
    rows: dict[str, list[float]] = {}
    samples = []
    for client in view.participants[:3]:
        targets = world.data.train.images[record.ground_truth[client].sample_indices]
        samples.append(len(targets))
        trained = Ggl(GglParams(target_client=client, **GGL_TABLE))
        held = view.num_samples[view.participants.index(client)]  # the upload's sample count, public
        results = {
            f"GRNN ({GRNN_TABLE.iterations} it, one batch)": Grnn(GrnnParams(iterations=GRNN_TABLE.iterations, target_client=client)),
            f"GRNN ({GRNN_TABLE.iterations} it, all the client's samples)": Grnn(
                GrnnParams(iterations=GRNN_TABLE.iterations, images=held, target_client=client)
            ),
            f"GGL trained generator ({GGL_TABLE['evaluations']} ev)": trained,
            "GGL untrained generator": Ggl(GglParams(pretrained_generator=False, target_client=client, **GGL_TABLE)),
        }
        labels = world.data.train.labels[record.ground_truth[client].sample_indices]
        for name, attack in results.items():
            output = attack.reconstruct(view, knowledge)
            scored = score(output, world.data.train, record.ground_truth, 20.0)
            rows.setdefault(name, []).append(scored.metrics["psnr_mean"])
            if attack.name == "grnn":
                rows.setdefault(f"{name}: label count accuracy", []).append(scored.metrics["label_accuracy"])
            else:  # one label for the whole client: is it the client's most frequent class?
                majority = int(torch.bincount(labels).argmax())
                rows.setdefault(f"{name}: label is the majority class", []).append(float(output.labels[0] == majority))
            if attack is trained:
                for base, value in no_gradient_baselines(trained, output, knowledge, targets).items():
                    rows.setdefault(f"no gradient: {base}", []).append(value)
    table(
        f"realistic updates: digits 16x16, cnn, 20 clients Dirichlet 0.5, E=5, B=50, round 2; "
        f"clients {list(view.participants[:3])} with {samples} samples (PSNR of matched pairs)",
        rows,
    )
    trained_psnr = statistics.mean(rows[f"GGL trained generator ({GGL_TABLE['evaluations']} ev)"])
    assert trained_psnr > statistics.mean(rows["GGL untrained generator"]) + 5.0
