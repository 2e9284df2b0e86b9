"""PLI and TBI on logit-sharing FL: the closed-form optimum (Eq. 6), the best-of-K pick
(Eq. 11), the paper's success criterion, and both attacks end to end through the auditor.

The slow test (``-m slow -s``) is the must-show: attack accuracy of PLI and TBI under the PLI
paper's FaceScrub protocol on digits and photo_patches, for FedMD, DS-FL and FedGEMS with K=1
and K=10 clients (the paper's Table 2).
"""

from __future__ import annotations

import dataclasses
import tomllib

import pytest
import torch

from flaudit.auditor.attacks.toolkit.inversion_net import pick_distinct
from flaudit.auditor.attacks.logit_inversion import (
    PairedLogitsInversion, PLIParams, TrainingBasedInversion, confidence_gap_optimum, label_priors,
)
from flaudit.auditor.results import risk
from flaudit.auditor.running.catalog import Catalog, registered
from flaudit.core.registry import Registry
from flaudit.auditor.metrics.class_scoring import class_means, score_representatives
from flaudit.auditor.running.config import audit_from_document
from flaudit.auditor.running.plan import build_plan
from flaudit.auditor.running.runner import RunOptions, run_audit
from flaudit.scenarios.kinds import scenario_kind
from flaudit.scenarios.scenario import ScenarioConfig
from flaudit.scenarios.views import LogitView


def quality(p_server: torch.Tensor, p_client: torch.Tensor, j: int, alpha: float) -> torch.Tensor:
    """Eq. 4: p^k_j + p^0_j + alpha H(p^0)."""
    entropy = -(p_server * p_server.clamp_min(1e-12).log()).sum(-1)
    return p_client[..., j] + p_server[..., j] + alpha * entropy


@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
def test_confidence_gap_optimum_maximises_q(alpha):
    server, client = confidence_gap_optimum((2, 0), 6, alpha)
    assert torch.allclose(server.sum(1), torch.ones(2)) and torch.equal(client[0], torch.eye(6)[2])
    best = quality(server[0], client[0], 2, alpha)
    random_server = torch.distributions.Dirichlet(torch.ones(6)).sample((5000,))
    random_client = torch.distributions.Dirichlet(torch.ones(6)).sample((5000,))
    assert (quality(random_server, random_client, 2, alpha) < best).all()
    ratio = server[0, 2] / server[0, 0]
    assert torch.isclose(ratio, torch.tensor(torch.e ** (1 / alpha)))  # e^(1/alpha) : 1


def test_best_of_k_picks_the_distinct_clean_reconstruction():
    generator = torch.Generator().manual_seed(0)
    common = torch.rand(1, 1, 1, 8, 8, generator=generator).expand(4, 2, 1, 8, 8).clone()
    distinct = torch.zeros(1, 8, 8)
    distinct[:, 2:6, 3:5] = 1.0  # a clean bar: little like the others, little variation
    common[2, 1] = distinct
    noisy = torch.rand(1, 8, 8, generator=generator)  # also unlike the others, but noisy
    common[1, 1] = noisy
    assert pick_distinct(common, beta=1.0)[1] == 2
    assert pick_distinct(common[:1], beta=1.0).tolist() == [0, 0]


def test_success_criterion_accepts_private_class_means_and_rejects_public_ones():
    world = scenario_kind("fedmd").build_world(ScenarioConfig(kind="fedmd", clients=1))
    private, public = world.data.train, world.public_truth
    references = class_means(public.images, public.labels)[1]
    labels, means = class_means(private.images, private.labels)
    scores = score_representatives(means, labels, private, references)
    assert scores.n_recovered == scores.n_targets == len(world.target_labels)
    assert scores.matching.psnr.isinf().all()
    auxiliary = public.subset(torch.nonzero(world.public.auxiliary_domain).flatten())
    blurred_labels, blurred = class_means(auxiliary.images, auxiliary.labels)
    assert torch.equal(blurred_labels, labels)
    assert score_representatives(blurred, labels, private, references).n_recovered == 0  # the public domain is no leak
    scores = score_representatives(means[:2], labels[:2], private, references)
    assert scores.n_recovered == 2 and scores.n_targets == 2  # only the classes it reconstructed are scored


def audit(scenarios: str, attacks: tuple[str, ...], seeds: list[int], attack_tables: str = ""):
    tables = "".join(f'\n[[attack]]\nname = "{name}"\n' for name in attacks) + attack_tables
    document = tomllib.loads(f"[audit]\nthreads = 1\n{scenarios}{tables}")
    document["scenario"] = [{**s, "seeds": seeds} for s in document["scenario"]]
    return audit_from_document(document, "<test_pli>", None)


FEDMD_DIGITS = """
[[scenario]]
label = "fedmd"
kind = "fedmd"
model = "fedmd_cnn"
clients = 1
rounds = 2
batch_size = 16
local_epochs = 2
"""
FEDAVG_DIGITS = """
[[scenario]]
label = "fedavg"
model = "fedmd_cnn"
clients = 2
rounds = 1
auxiliary_samples = 50  # rtf's calibration data (checked before any job)
"""


def test_attacks_apply_only_where_their_view_exists():
    plan = build_plan(audit(FEDMD_DIGITS + FEDAVG_DIGITS, ("pli", "tbi", "rtf"), [0]), registered())
    reasons = {cell.cell_id: cell.not_applicable for cell in plan.cells}
    assert reasons["fedmd/none/pli"] is None and reasons["fedavg/none/rtf"] is None
    assert "do not produce the malicious server's view (ServerView)" in reasons["fedmd/none/rtf"]
    assert "do not produce the logit-sharing server's view (LogitView)" in reasons["fedavg/none/tbi"]


class RandomLogitsPLI(PairedLogitsInversion):
    """PLI fed random client logits (the real ones' scale): it observes nothing of the clients."""

    name = "pli_random_logits"

    def reconstruct(self, view, knowledge):
        generator = torch.Generator().manual_seed(knowledge.seed)
        fake = {k: torch.randn(l.shape, generator=generator) * l.std() + l.mean() for k, l in view.client_logits.items()}
        return super().reconstruct(dataclasses.replace(view, client_logits=fake), knowledge)


class ShuffledLogitsPLI(PairedLogitsInversion):
    """PLI with each client's logits shuffled across the public samples they belong to."""

    name = "pli_shuffled_logits"

    def reconstruct(self, view, knowledge):
        generator = torch.Generator().manual_seed(knowledge.seed)
        shuffled = {k: l[torch.randperm(len(l), generator=generator)] for k, l in view.client_logits.items()}
        return super().reconstruct(dataclasses.replace(view, client_logits=shuffled), knowledge)


def pli_catalog() -> Catalog:
    attacks = Registry("attack")
    for cls in (PairedLogitsInversion, TrainingBasedInversion, RandomLogitsPLI, ShuffledLogitsPLI):
        attacks.register(cls.name)(cls)
    return Catalog(attacks, registered().defenses)


def test_pli_is_scored_against_its_prior_and_random_logits_rate_no_higher(tmp_path):
    """Through the auditor every cell carries its null (PLI's: its prior, Eq. 10's anchors,
    public data only) and is rated by the leakage above it; PLI fed random client logits
    observes nothing, so it must not be rated above none."""
    config = audit(FEDMD_DIGITS, ("pli", "tbi", "pli_random_logits"), [0])
    run = run_audit(config, RunOptions(tmp_path, progress=False), pli_catalog())
    cells = {c["attack"]["name"]: c for c in run.scorecard["cells"]}
    for cell in cells.values():
        assert cell["status"] == "ok", cell["errors"]
        assert cell["runs"][0]["target_clients"] == [0] and cell["metrics"]["n_targets"]["mean"] == 5
        m = cell["metrics"]
        assert m["leakage"]["mean"] == pytest.approx(m["recovery_rate"]["mean"] - m["null_recovery_rate"]["mean"])
    assert cells["pli"]["runs"][0]["null"] in ("prior", "data", "mean")
    assert cells["pli_random_logits"]["risk"] == "none", cells["pli_random_logits"]["metrics"]
    assert risk.rank(cells["pli_random_logits"]["risk"]) <= risk.rank(cells["pli"]["risk"])
    utility = run.scorecard["utility"][0]
    assert utility["scenario"] == "fedmd" and utility["test_accuracy"]["mean"] > 0.8
    assert (tmp_path / "report.html").exists()


def table_scenarios(dataset: str, extra: str) -> str:
    return "".join(
        f'\n[[scenario]]\nlabel = "{kind}-K{k}"\nkind = "{kind}"\ndataset = "{dataset}"\nmodel = "fedmd_cnn"\n'
        f"clients = {k}\nrounds = 3\nbatch_size = 16\nlocal_epochs = 2\n{extra}"
        for kind in ("dsfl", "fedgems", "fedmd") for k in (1, 10)
    )


TABLE_DATASETS = {
    "digits": "",
    "photo_patches": 'image_size = 16\nlogit_options = {blur_kernel = 3}\n',
}
TABLE_SEEDS = [0, 1]


@pytest.mark.slow
def test_must_show_table_pli_vs_tbi(tmp_path):
    """Attack accuracy (%) of PLI and TBI, mean over seeds, in the layout of the paper's Table 2."""
    rows: dict[str, dict[str, float]] = {}
    for dataset, extra in TABLE_DATASETS.items():
        config = audit(table_scenarios(dataset, extra), ("pli", "tbi"), TABLE_SEEDS)
        card = run_audit(config, RunOptions(tmp_path / dataset, progress=False), registered()).scorecard
        for cell in card["cells"]:
            assert cell["status"] == "ok", cell["errors"]
            kind, k = cell["scenario"].split("-K")
            row = f'{cell["attack"]["name"].upper()} (K = {k})'
            rows.setdefault(row, {})[f"{dataset}/{kind}"] = 100 * cell["metrics"]["recovery_rate"]["mean"]
        for entry in card["utility"]:
            print(f'{dataset} {entry["scenario"]}: client test accuracy {entry["test_accuracy"]["mean"]:.3f}')
    columns = [f"{d}/{kind}" for d in TABLE_DATASETS for kind in ("dsfl", "fedgems", "fedmd")]
    print("\n| attack | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for row in ("TBI (K = 1)", "PLI (K = 1)", "TBI (K = 10)", "PLI (K = 10)"):
        print(f"| {row} | " + " | ".join(f"{rows[row][c]:.1f}" for c in columns) + " |")
    wins = sum(rows[f"PLI (K = {k})"][c] >= rows[f"TBI (K = {k})"][c] for k in (1, 10) for c in columns)
    assert wins >= 0.75 * 2 * len(columns)  # PLI at least as good as TBI in most settings


HONEST_TABLE_DATASETS = {"digits": "", "lfw_subset": "logit_options = {blur_kernel = 3}\n"}
HONEST_VARIANTS = ("pli", "pli_shuffled_logits", "pli_random_logits")


def prior_alone(kind: str, dataset: str, extra: str, seed: int) -> float:
    """Attack accuracy of PLI's prior images alone (Eq. 10's anchors: public data only)."""
    table = tomllib.loads(f'kind = "{kind}"\ndataset = "{dataset}"\nclients = 1\nseed = {seed}\n{extra}')
    world = scenario_kind(kind).build_world(ScenarioConfig(**table))
    view = LogitView(0, world.public, world.target_labels, {}, torch.zeros(1, world.data.train.num_classes))
    references = class_means(world.public_truth.images, world.public_truth.labels)[1]
    scores = score_representatives(label_priors(view, PLIParams()), torch.tensor(world.target_labels), world.data.train, references)
    return scores.n_recovered / scores.n_targets


@pytest.mark.slow
def test_must_show_pli_against_its_prior(tmp_path):
    """Attack accuracy (%) of PLI, its prior alone, and PLI fed shuffled or random client
    logits (K = 1, mean over seeds), with PLI's leakage above its larger null: PLI leaks only by
    what it does beyond the prior, and a variant that observes nothing must not leak."""
    rows: dict[str, dict[str, float]] = {}
    for dataset, extra in HONEST_TABLE_DATASETS.items():
        scenarios = "".join(
            f'\n[[scenario]]\nlabel = "{kind}"\nkind = "{kind}"\ndataset = "{dataset}"\nmodel = "fedmd_cnn"\n'
            f"clients = 1\nrounds = 3\nbatch_size = 16\nlocal_epochs = 2\n{extra}"
            for kind in ("dsfl", "fedgems", "fedmd")
        )
        card = run_audit(audit(scenarios, HONEST_VARIANTS, TABLE_SEEDS), RunOptions(tmp_path / dataset, progress=False),
                         pli_catalog()).scorecard
        for cell in card["cells"]:
            assert cell["status"] == "ok", cell["errors"]
            column, m = f'{dataset}/{cell["scenario"]}', cell["metrics"]
            rows.setdefault(cell["attack"]["name"], {})[column] = 100 * m["recovery_rate"]["mean"]
            if cell["attack"]["name"] == "pli":
                rows.setdefault("pli: leakage over its null", {})[column] = 100 * m["leakage"]["mean"]
                rows.setdefault("pli: risk", {})[column] = cell["risk"]
            elif cell["attack"]["name"] == "pli_random_logits":
                assert cell["risk"] == "none", cell["metrics"]
        for kind in ("dsfl", "fedgems", "fedmd"):
            rates = [prior_alone(kind, dataset, extra, seed) for seed in TABLE_SEEDS]
            rows.setdefault("prior alone", {})[f"{dataset}/{kind}"] = 100 * sum(rates) / len(rates)
    columns = [f"{d}/{kind}" for d in HONEST_TABLE_DATASETS for kind in ("dsfl", "fedgems", "fedmd")]
    print("\n| attack accuracy (%) | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for row in ("pli", "prior alone", "pli_shuffled_logits", "pli_random_logits", "pli: leakage over its null", "pli: risk"):
        cells = (rows[row][c] if isinstance(rows[row][c], str) else f"{rows[row][c]:.1f}" for c in columns)
        print(f"| {row} | " + " | ".join(cells) + " |")
