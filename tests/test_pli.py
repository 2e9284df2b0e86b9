"""PLI and TBI on logit-sharing FL: the closed-form optimum (Eq. 6), the best-of-K pick
(Eq. 11), the paper's success criterion, and both attacks end to end through the auditor.

The slow test (``-m slow -s``) is the must-show: attack accuracy of PLI and TBI under the PLI
paper's FaceScrub protocol on digits and photo_patches, for FedMD, DS-FL and FedGEMS with K=1
and K=10 clients (the paper's Table 2).
"""

from __future__ import annotations

import tomllib

import pytest
import torch

from flaudit.auditor.attacks.toolkit.inversion_net import pick_distinct
from flaudit.auditor.attacks.logit_inversion import PLIParams, confidence_gap_optimum, label_priors
from flaudit.auditor.running.catalog import registered
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
    labels, means = class_means(private.images, private.labels)
    metrics, matching, _ = score_representatives(means, labels, private, public)
    assert metrics["recovery_rate"] == 1.0 and metrics["n_targets"] == len(world.target_labels)
    assert matching.psnr.isinf().all()
    auxiliary = public.subset(torch.nonzero(world.public.auxiliary_domain).flatten())
    blurred_labels, blurred = class_means(auxiliary.images, auxiliary.labels)
    assert torch.equal(blurred_labels, labels)
    metrics, _, _ = score_representatives(blurred, labels, private, public)
    assert metrics["recovery_rate"] == 0.0  # the insensitive public domain is no leak
    metrics, _, _ = score_representatives(means[:2], labels[:2], private, public)
    assert metrics["recovery_rate"] == 2 / len(labels)  # a missing class is a failure


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
"""


def test_attacks_apply_only_where_their_view_exists():
    plan = build_plan(audit(FEDMD_DIGITS + FEDAVG_DIGITS, ("pli", "tbi", "rtf"), [0]), registered())
    reasons = {cell.cell_id: cell.not_applicable for cell in plan.cells}
    assert reasons["fedmd/none/pli"] is None and reasons["fedavg/none/rtf"] is None
    assert "do not produce the malicious server's view (ServerView)" in reasons["fedmd/none/rtf"]
    assert "do not produce the logit-sharing server's view (LogitView)" in reasons["fedavg/none/tbi"]


def test_pli_beats_tbi_through_the_auditor(tmp_path):
    run = run_audit(audit(FEDMD_DIGITS, ("pli", "tbi"), [0]), RunOptions(tmp_path, progress=False), registered())
    cells = {c["attack"]["name"]: c for c in run.scorecard["cells"]}
    for cell in cells.values():
        assert cell["status"] == "ok", cell["errors"]
        assert cell["runs"][0]["target_clients"] == [0] and cell["metrics"]["n_targets"]["mean"] == 5
    pli, tbi = (cells[name]["metrics"]["recovery_rate"]["mean"] for name in ("pli", "tbi"))
    assert pli >= 0.8 and pli > tbi
    assert cells["pli"]["risk"] == "high"
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


NO_PRIOR = """
[[attack]]
name = "pli"
label = "pli-no-prior"
gamma = 0.0
translation_steps = 0
"""


@pytest.mark.slow
def test_ablation_prior(tmp_path):
    """How much of PLI is its prior: PLI with gamma = 0 (confidence gap alone) against TBI, and
    the prior images alone (public data only: deblurred D_a per label, or the D_0 mean)."""
    for dataset, extra in TABLE_DATASETS.items():
        config = audit(table_scenarios(dataset, extra), ("tbi",), TABLE_SEEDS, NO_PRIOR)
        card = run_audit(config, RunOptions(tmp_path / dataset, progress=False), registered()).scorecard
        for cell in card["cells"]:
            print(f'{dataset} {cell["id"]}: {100 * cell["metrics"]["recovery_rate"]["mean"]:.1f}')
        for kind in ("dsfl", "fedmd"):
            rates = []
            for seed in TABLE_SEEDS:
                table = tomllib.loads(f'kind = "{kind}"\ndataset = "{dataset}"\nclients = 1\nseed = {seed}\n{extra}')
                world = scenario_kind(kind).build_world(ScenarioConfig(**table))
                view = LogitView(0, world.public, world.target_labels, {}, torch.zeros(1, world.data.train.num_classes))
                priors = label_priors(view, PLIParams())
                metrics, _, _ = score_representatives(priors, torch.tensor(world.target_labels), world.data.train, world.public_truth)
                rates.append(metrics["recovery_rate"])
            print(f"{dataset} prior alone ({kind} public set): {100 * sum(rates) / len(rates):.1f}")
