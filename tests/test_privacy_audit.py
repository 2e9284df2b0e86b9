"""The empirical privacy audit (flaudit.auditor.privacy_audit): the one-run bound itself, a DP
defense broken on purpose (Opacus accounts for its noise, the upload carries none) caught and
flagged through scorecard, report and gate, and the real DP-SGD left standing."""

from __future__ import annotations

import math
import tomllib

import numpy as np
import pytest

from flaudit.auditor.running.catalog import registered
from flaudit.auditor.privacy_audit.bound import Guesses, best_bound, epsilon_lower_bound, guesses, p_value
from flaudit.auditor.privacy_audit.job import AuditSettings, PrivacyAuditJob
from flaudit.auditor.results import gate, report
from flaudit.auditor.running.config import audit_from_document
from flaudit.auditor.running.estimate import Calibration, plan_text
from flaudit.auditor.running.jobs import ResolvedComponent, execute
from flaudit.auditor.running.plan import build_plan
from flaudit.auditor.running.runner import RunOptions, run_audit
from flaudit.auditor.running.store import read_finished
from flaudit.defenses.dp import DPSGD, DPParams, OpacusTraining
from flaudit.scenarios.scenario import ScenarioConfig

from test_audit_toys import toy_catalog

CANARIES = 400
SMALL = ScenarioConfig(dataset="digits", model="cnn", clients=2, rounds=2, local_epochs=2, batch_size=16,
                       partition="iid", max_samples=700, seed=0)


class NoiselessUpload(OpacusTraining):
    """Opacus trains, clips and accounts for ``noise_multiplier``, but no noise reaches the update."""

    def wrap(self, client_id, round_index, model, optimizer, loader):
        model, optimizer, loader = super().wrap(client_id, round_index, model, optimizer, loader)

        def add_noise():
            for p in optimizer.params:
                p.grad = p.summed_grad.view_as(p)

        optimizer.add_noise = add_noise
        return model, optimizer, loader


class BrokenDP(DPSGD):
    name = "broken_dp"

    def training_wrapper(self, world):
        self.last_run = NoiselessUpload(self.params, world)
        return self.last_run


def audit(cls, sigma: float, scenario: ScenarioConfig = SMALL, canaries: int = CANARIES) -> dict:
    job = PrivacyAuditJob("digits", cls.name, scenario, (ResolvedComponent(cls.name, cls, DPParams(noise_multiplier=sigma)),),
                          threads=1, settings=AuditSettings(canaries, 0.95, 0))
    [(_, result)] = execute(job.unit())
    assert result["status"] == "ok", result.get("error")
    return result


# ---- the bound ----------------------------------------------------------------------------------


def test_all_correct_guesses_give_the_randomized_response_bound():
    r = 200  # with delta = 0: p^r = significance, p = e^eps / (1 + e^eps)
    p = 0.05 ** (1 / r)
    assert epsilon_lower_bound(r, r, r, 0.0, 0.05) == pytest.approx(math.log(p / (1 - p)), rel=1e-6)


def test_chance_guesses_prove_nothing_and_delta_only_weakens_the_bound():
    assert epsilon_lower_bound(1000, 400, 200, 1e-5, 0.05) == 0.0
    assert epsilon_lower_bound(1000, 400, 300, 1e-3, 0.05) < epsilon_lower_bound(1000, 400, 300, 0.0, 0.05)
    assert p_value(1000, 400, 300, 1.0, 1e-5) < p_value(1000, 400, 300, 2.0, 1e-5)  # larger epsilon explains more


def test_guesses_rank_scores_and_bonferroni_costs_confidence():
    included = np.array([True, False] * 50)
    made = guesses(np.where(included, 1.0, 0.0) + np.linspace(0, 0.1, 100), included)
    assert all(g.correct == g.made for g in made)
    one = best_bound(100, made[-1:], 0.0, 0.95)[0]
    assert best_bound(100, made, 0.0, 0.95)[0] <= one + 1e-9  # the same best guess at a stricter level
    assert best_bound(100, [Guesses(50, 100)], 0.0, 0.95)[0] == pytest.approx(one)


# ---- the federation -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broken():
    return audit(BrokenDP, 1.0)


@pytest.fixture(scope="module")
def honest():
    return audit(DPSGD, 1.0)


def test_broken_dp_is_refuted(broken):
    claim = broken["claims"]["broken_dp"]
    assert broken["observed"] == "upload" and broken["rounds_observed"] == SMALL.rounds
    assert claim["claimed_epsilon"] > 0.5  # Opacus' accountant, as for the real DP-SGD
    assert claim["epsilon_lower_bound"] > claim["claimed_epsilon"], claim


def test_real_dp_sgd_stays_at_or_below_its_claim(honest, broken):
    claim = honest["claims"]["dp"]
    assert claim["claimed_epsilon"] == pytest.approx(broken["claims"]["broken_dp"]["claimed_epsilon"])
    assert claim["epsilon_lower_bound"] <= claim["claimed_epsilon"], claim
    # the canaries are the same and the guesses are worse with noise: the bound comes from the update
    assert honest["included"] == broken["included"]
    assert claim["epsilon_lower_bound"] < broken["claims"]["broken_dp"]["epsilon_lower_bound"]


class CrashingDP(DPSGD):
    name = "crashing_dp"

    def training_wrapper(self, world):
        raise RuntimeError("no engine today")


def test_a_failing_audit_is_an_error_result_not_a_crash():
    job = PrivacyAuditJob("digits", "crashing_dp", SMALL, (ResolvedComponent("crashing_dp", CrashingDP, DPParams()),),
                          threads=1, settings=AuditSettings(10, 0.95, 0))
    [(_, result)] = execute(job.unit())
    assert result["status"] == "error" and "no engine today" in result["error"]["message"]


BROKEN_COLUMN = f"""
[audit]
dp_audit_canaries = {CANARIES}
[[defense]]
name = "broken_dp"
[[attack]]
name = "labels"
"""


def test_a_refuted_claim_is_flagged_in_scorecard_report_and_gate(tmp_path):
    base = SMALL
    config = f"""
[scenario]
label = "digits-cnn"
dataset = "digits"
model = "cnn"
clients = {base.clients}
rounds = {base.rounds}
local_epochs = {base.local_epochs}
batch_size = {base.batch_size}
partition = "iid"
max_samples = {base.max_samples}
seeds = [0]
"""
    document = tomllib.loads(config + BROKEN_COLUMN)
    catalog = toy_catalog(attacks=(registered().attacks.get("labels"),), defenses=(BrokenDP,))
    card = run_audit(audit_from_document(document, "<test>"), RunOptions(tmp_path, progress=False), catalog).scorecard
    entry = next(u for u in card["utility"] if u["defense"] == "broken_dp")
    check = entry["privacy_audit"]["broken_dp"]
    assert check["violation"] and check["violating_seeds"] == [0] and check["canaries"] == CANARIES
    figures = entry["figures"]["broken_dp"]
    assert figures["epsilon_lower_bound"]["mean"] > figures["epsilon"]["mean"]
    assert figures["audit_confidence"]["mean"] == 0.95
    assert card["summary"]["dp_violations"] == ["digits-cnn/broken_dp:broken_dp"]
    flagged = {c["id"]: c.get("dp_violation") for c in card["cells"]}
    assert flagged == {"digits-cnn/none/labels": None, "digits-cnn/broken_dp/labels": True}
    assert "dp_violation" in report.render(card, tmp_path)
    result = gate.compare(card, card, gate.tolerances_of(card))  # no leakage growth, still fails
    assert [(f.cell_id, f.metric) for f in result.findings] == [("digits-cnn/broken_dp/labels", "dp_violation")]
    assert len(read_finished(tmp_path)) == len(list((tmp_path / "cells").glob("*.json")))  # the audit job too: --resume reuses it
    plan = build_plan(audit_from_document(document, "<test>"), catalog)
    estimate = plan_text(plan, Calibration.from_run(tmp_path), None, tmp_path)
    assert "?" not in next(line for line in estimate.splitlines() if line.startswith("dp audit (simulation)"))


@pytest.mark.slow
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_tightness_of_the_default_scenario(sigma):
    """The bound / claim ratio on the default audit's federation (printed; run with -s)."""
    default = ScenarioConfig(dataset="digits", model="cnn", clients=8, rounds=4, batch_size=8, lr=0.05,
                             partition="dirichlet", alpha=0.5, seed=0)
    claim = audit(DPSGD, sigma, default, 1000)["claims"]["dp"]
    print(f"sigma {sigma}: claimed {claim['claimed_epsilon']:.3f}, lower bound {claim['epsilon_lower_bound']:.3f}, "
          f"ratio {claim['epsilon_lower_bound'] / claim['claimed_epsilon']:.3f}")
    assert claim["epsilon_lower_bound"] <= claim["claimed_epsilon"]
