"""Leakage against the nulls through the auditor: what a data-blind attacker returns is rated
``none`` wherever it runs, the label-blind guess too, and a genuinely leaking cell (Robbing
the Fed on one client's single local step) stays ``high`` with leakage near its recovery."""

from __future__ import annotations

import tomllib

import pytest
import torch

from flaudit.auditor.attacks.base import Attack, AttackOutput, ThreatModel
from flaudit.auditor.attacks.rtf import RobbingTheFed
from flaudit.auditor.attacks.toolkit import nulls as guess
from flaudit.auditor.running.catalog import Catalog
from flaudit.auditor.running.config import audit_from_document
from flaudit.auditor.running.runner import RunOptions, run_audit
from flaudit.core.registry import Registry
from test_audit_toys import ToyNoise


class AuxiliaryImages(Attack):
    """Returns 64 of its own auxiliary images as one client's reconstructions; no update used."""

    name = "auxiliary_images"
    threat_model = ThreatModel.HONEST_SERVER

    def prior_null(self, view, context):
        return None

    def reconstruct(self, view, knowledge):
        return AttackOutput(knowledge.auxiliary.images[:64], (view.participants[0],))


class AuxiliaryMeanForAll(Attack):
    """The auxiliary set's mean image, once per target, for every participant."""

    name = "auxiliary_mean_for_all"
    threat_model = ThreatModel.HONEST_SERVER

    def prior_null(self, view, context):
        return None

    def reconstruct(self, view, knowledge):
        count = sum(view.num_samples)
        return AttackOutput(knowledge.auxiliary.images.mean(0, keepdim=True).expand(count, -1, -1, -1), view.participants)


class LabelBlind(Attack):
    """The label-blind guess as a label attack: the auxiliary label shares, the client's count."""

    name = "label_blind"
    threat_model = ThreatModel.HONEST_SERVER

    def prior_null(self, view, context):
        return None

    def reconstruct(self, view, knowledge):
        labels = guess.label_blind(knowledge.auxiliary.labels, view.num_samples[0], knowledge.num_classes)
        return AttackOutput(torch.empty(0, *knowledge.image_shape), (view.participants[0],), labels)


def catalog(*attacks: type) -> Catalog:
    attack_registry, defense_registry = Registry("attack"), Registry("defense")
    for cls in attacks:
        attack_registry.register(cls.name)(cls)
    defense_registry.register(ToyNoise.name)(ToyNoise)
    return Catalog(attack_registry, defense_registry)


def run(tmp_path, scenario: str, attacks: tuple[type, ...], defenses: str = ""):
    names = "".join(f'\n[[attack]]\nname = "{cls.name}"\n' for cls in attacks)
    document = tomllib.loads(f"[audit]\nthreads = 1\n\n[scenario]\n{scenario}{defenses}{names}")
    config = audit_from_document(document, "<test_nulls>", None)
    return run_audit(config, RunOptions(tmp_path, progress=False), catalog(*attacks)).scorecard


BLIND_SCENARIOS = {
    "digits": 'dataset = "digits"\nclients = 4\nrounds = 1\nbatch_size = 8\nauxiliary_samples = 100\nseeds = [0, 1]\n',
    "photo_patches": (
        'dataset = "photo_patches"\nclients = 2\nrounds = 1\nbatch_size = 8\nmax_samples = 300\n'
        "auxiliary_samples = 100\nseeds = [0]\n"
    ),
}


@pytest.mark.parametrize("dataset", sorted(BLIND_SCENARIOS))
def test_data_blind_attacks_and_the_label_blind_guess_are_rated_none(tmp_path, dataset):
    card = run(tmp_path, BLIND_SCENARIOS[dataset], (AuxiliaryImages, AuxiliaryMeanForAll, LabelBlind),
               '\n[[defense]]\nname = "toy_noise"\n')
    assert len(card["cells"]) == 6
    for cell in card["cells"]:
        assert cell["status"] == "ok", cell["errors"]
        assert cell["risk"] == "none", (cell["id"], cell["rated"], cell["metrics"]["leakage"])
        assert all(r["level"] == "none" for r in cell["rated"])
    labels = next(c for c in card["cells"] if c["attack"]["name"] == "label_blind")
    assert labels["rated"][0]["output"] == "labels" and labels["metrics"]["label_leakage"]["mean"] == 0.0


def test_a_genuinely_leaking_cell_stays_high_with_leakage_near_its_recovery(tmp_path):
    """Robbing the Fed, one client, one local step (n = 64 = B): the null recovers nothing
    identifiably, so the leakage is the recovery rate."""
    scenario = (
        'dataset = "photo_patches"\nmodel = "cnn"\nclients = 1\npartition = "iid"\nrounds = 1\nlocal_epochs = 1\n'
        "batch_size = 64\nauxiliary_samples = 500\nmax_samples = 564\n"
    )
    [cell] = run(tmp_path, scenario, (RobbingTheFed,))["cells"]
    metrics = cell["metrics"]
    assert cell["status"] == "ok" and cell["risk"] == "high", cell["rated"]
    assert metrics["recovery_rate"]["mean"] >= 0.5
    assert metrics["leakage"]["mean"] >= metrics["recovery_rate"]["mean"] - 0.02
    assert metrics["null_recovery_rate"]["mean"] <= 0.02
