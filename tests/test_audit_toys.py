"""Small but honest attacks and defenses that drive the auditor's tests, independent of the
real families: they work on the views exactly as registered components do.

``linear_leakage`` is the analytic attack on a fully-connected first layer: one SGD step on one
sample changes row i of the weight by ``-lr * g_i * x`` and its bias by ``-lr * g_i``, so
``dW[i] / db[i] = x`` exactly; with more samples or steps the ratio is a mixture.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

import pytest
import torch

from flaudit.auditor.attacks.base import Attack, AttackOutput, ThreatModel
from flaudit.auditor.running.catalog import Catalog
from flaudit.defenses.base import Defense
from flaudit.scenarios.hooks import AggregationOutcome, WeightedMeanAggregator
from flaudit.core.registry import Registry
from flaudit.scenarios.scenario import ScenarioConfig, build_world, derive_seed
from flaudit.scenarios.updates import ParamLayout

FIRST_WEIGHT = "features.1.weight"  # the mlp's input layer (features = Flatten, Linear, act)
FIRST_BIAS = "features.1.bias"
MARKER = 0.125  # bias value a malicious server writes, checked in its view


def leaked_image(update: torch.Tensor, layout: ParamLayout, shape: tuple[int, int, int]) -> torch.Tensor:
    """``dW[i] / db[i]`` for the row with the largest bias change."""
    tensors = layout.unflatten(update)
    d_weight, d_bias = tensors[FIRST_WEIGHT], tensors[FIRST_BIAS]
    row = int(d_bias.abs().argmax())
    return (d_weight[row] / d_bias[row]).reshape(shape)


@dataclass(frozen=True)
class NoiseParams:
    std: float = 0.01


class ToyNoise(Defense):
    """Gaussian noise on each upload, seeded per (seed, round, client)."""

    name = "toy_noise"
    Params = NoiseParams

    def update_transform(self, world):
        std, seed = self.params.std, world.config.seed

        class AddNoise:
            def transform(self, client_id, round_index, update, layout):
                generator = torch.Generator().manual_seed(derive_seed(seed, 11, round_index, client_id))
                return update + std * torch.randn(update.shape, generator=generator)

        return AddNoise()

    def figures(self):
        return {"noise_std": self.params.std}


class HiddenSum(WeightedMeanAggregator):
    def aggregate(self, round_index, uploads):
        mean = super().aggregate(round_index, uploads).mean_update
        return AggregationOutcome(mean, individual_updates_visible=False)


class ToySecureSum(Defense):
    """Shows the server only the aggregate (what secure aggregation guarantees)."""

    name = "toy_secure_sum"
    hides_individual_updates = True

    def aggregator(self, world):
        return HiddenSum()


@dataclass(frozen=True)
class LeakageParams:
    max_clients: int = 8


class LinearLeakage(Attack):
    name = "linear_leakage"
    threat_model = ThreatModel.HONEST_SERVER
    Params = LeakageParams
    needs_individual_updates = True

    def prior_null(self, view, context):
        return None

    def reconstruct(self, view, knowledge):
        uploads = view.uploads[: self.params.max_clients]
        images = torch.stack([leaked_image(u.update, view.layout, knowledge.image_shape) for u in uploads])
        return AttackOutput(images, tuple(u.client_id for u in uploads))


class AuxiliaryMean(Attack):
    """A curious client's blind guess: the mean image of its auxiliary data, for every peer."""

    name = "auxiliary_mean"
    threat_model = ThreatModel.CURIOUS_CLIENT

    def prior_null(self, view, context):
        return None

    def reconstruct(self, view, knowledge):
        peers = tuple(c for c in range(knowledge.num_clients) if c != view.client_id)
        guess = knowledge.auxiliary.images.mean(0, keepdim=True)
        return AttackOutput(guess.expand(len(peers), -1, -1, -1), peers)


class SetBias:
    def before_round(self, round_index, model):
        with torch.no_grad():
            model.features[1].bias.fill_(MARKER)
        return model


class MaliciousAggregate(Attack):
    """Writes a marker into the model it sends, then reads one image from the aggregate."""

    name = "malicious_aggregate"
    threat_model = ThreatModel.MALICIOUS_SERVER

    def prepare(self, knowledge):
        return SetBias()

    def prior_null(self, view, context):
        return None

    def reconstruct(self, view, knowledge):
        if not torch.all(view.model.features[1].bias == MARKER):
            raise AssertionError("the server's hook did not shape the model it sent")
        image = leaked_image(view.aggregate, view.layout, knowledge.image_shape)
        return AttackOutput(image[None], view.participants)


class LogitOnly(Attack):
    name = "logit_only"
    threat_model = ThreatModel.LOGIT_SERVER

    def prior_null(self, view, context):
        return None

    def reconstruct(self, view, knowledge):
        raise AssertionError("never run: no scenario produces logit views")


class Crashes(Attack):
    name = "crashes"
    threat_model = ThreatModel.HONEST_SERVER

    def prior_null(self, view, context):
        return None

    def reconstruct(self, view, knowledge):
        raise RuntimeError("toy attack failure")


ATTACK_CLASSES = (LinearLeakage, AuxiliaryMean, MaliciousAggregate, LogitOnly, Crashes)
DEFENSE_CLASSES = (ToyNoise, ToySecureSum)


def toy_catalog(attacks=ATTACK_CLASSES, defenses=DEFENSE_CLASSES) -> Catalog:
    attack_registry, defense_registry = Registry("attack"), Registry("defense")
    for cls in attacks:
        attack_registry.register(cls.name)(cls)
    for cls in defenses:
        defense_registry.register(cls.name)(cls)
    return Catalog(attack_registry, defense_registry)


# One sample per client, batch 1, one epoch: one SGD step per client, so the leak is exact.
ONE_SAMPLE_CLIENTS = """
[scenario]
label = "digits-mlp"
dataset = "digits"
model = "mlp"
clients = 4
rounds = 2
batch_size = 1
partition = "iid"
max_samples = 8
auxiliary_samples = 4
seeds = [0, 1]
"""


def test_linear_leakage_recovers_a_single_step_exactly():
    world = build_world(ScenarioConfig(dataset="digits", model="mlp", clients=1, batch_size=1, partition="iid", max_samples=1))
    model = world.new_model()
    layout = ParamLayout.of(model)
    before = layout.flatten(model)
    image = world.data.train.images[:1]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    torch.nn.functional.cross_entropy(model(image), world.data.train.labels[:1]).backward()
    optimizer.step()
    leaked = leaked_image(layout.flatten(model) - before, layout, (1, 8, 8))
    assert torch.allclose(leaked, image[0], atol=1e-4)


def test_toy_catalog_registers_by_name():
    catalog = toy_catalog()
    assert catalog.attacks.names() == sorted(c.name for c in ATTACK_CLASSES)
    assert catalog.defenses.get("toy_noise") is ToyNoise
    with pytest.raises(KeyError):
        catalog.attacks.get("nope")


def toy_config(extra: str = "", base: str = ONE_SAMPLE_CLIENTS, profile: str | None = None):
    from flaudit.auditor.running.config import audit_from_document

    return audit_from_document(tomllib.loads(base + extra), "<test config>", profile)


def run_toy(out, extra: str = "", executor: str = "local", catalog: Catalog | None = None, **options):
    """Runs the toy audit (``ONE_SAMPLE_CLIENTS`` plus ``extra`` TOML) into folder ``out``."""
    from flaudit.auditor.running.runner import RunOptions, run_audit

    run_options = RunOptions(out, executor=executor, progress=False, **options)
    return run_audit(toy_config(extra), run_options, catalog or toy_catalog())


def cell(scorecard: dict, cell_id: str) -> dict:
    return next(c for c in scorecard["cells"] if c["id"] == cell_id)
