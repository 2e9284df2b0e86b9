"""The matrix runner end to end with honest toy components: statuses, scores, utility,
executors agreeing, failure isolation and resume."""

from __future__ import annotations

import json

import jsonschema
import pytest

from flaudit.auditor.results import scorecard as scorecards
from flaudit.auditor.running.store import CELLS
from test_audit_toys import cell, run_toy

MATRIX = """
[audit]
threads = 1

[[defense]]
name = "toy_noise"
std = 0.01

[[defense]]
name = "toy_secure_sum"

[[attack]]
name = "*"
"""


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    return out, run_toy(out, MATRIX)


def test_cells_get_status_reason_scores_and_risk(local_run):
    out, run = local_run
    card = run.scorecard
    leak = cell(card, "digits-mlp/none/linear_leakage")
    assert leak["status"] == "ok" and leak["risk"] == "high"
    assert leak["metrics"]["recovery_rate"]["values"] == [1.0, 1.0]  # one SGD step on one sample: exact
    assert leak["metrics"]["psnr_mean"]["mean"] > 60 and leak["metrics"]["n_targets"]["mean"] == 4
    noisy = cell(card, "digits-mlp/toy_noise/linear_leakage")
    assert noisy["risk"] == "none" and noisy["metrics"]["psnr_mean"]["mean"] < 20
    hidden = cell(card, "digits-mlp/toy_secure_sum/linear_leakage")
    assert hidden["status"] == "not_applicable" and hidden["runs"] == []
    assert "toy_secure_sum shows the server only the aggregate" in hidden["reason"]
    logits = cell(card, "digits-mlp/none/logit_only")
    assert logits["status"] == "not_applicable" and "logit-sharing server's view" in logits["reason"]
    # A malicious server's hook shapes the model it sends, through secure aggregation too.
    assert cell(card, "digits-mlp/toy_secure_sum/malicious_aggregate")["status"] == "ok"
    # A curious client targets its peers, not itself; a blind guess recovers nothing.
    peer = cell(card, "digits-mlp/none/auxiliary_mean")
    assert peer["risk"] == "none" and peer["runs"][0]["target_clients"] == [1, 2, 3]


def test_a_failing_cell_is_recorded_and_the_run_goes_on(local_run):
    _, run = local_run
    crashed = cell(run.scorecard, "digits-mlp/none/crashes")
    assert crashed["status"] == "error" and crashed["risk"] == "unknown" and crashed["metrics"] is None
    assert [e["seed"] for e in crashed["errors"]] == [0, 1]
    # the toy attacks live outside flaudit, so their errors name them as plugins
    assert crashed["errors"][0]["type"] == "RuntimeError"
    assert crashed["errors"][0]["message"] == "attack plugin 'crashes' (test_audit_toys.Crashes): toy attack failure"
    assert "in reconstruct" in crashed["errors"][0]["traceback"]
    summary = run.scorecard["summary"]
    assert summary == {**summary, "cells": 15, "ok": 8, "not_applicable": 4, "error": 3}


def test_utility_compares_each_defense_with_the_same_seeds_baseline(local_run):
    _, run = local_run
    utility = {u["defense"]: u for u in run.scorecard["utility"]}
    baseline = utility["none"]["test_accuracy"]["values"]
    for entry in utility.values():
        assert entry["baseline_test_accuracy"]["values"] == baseline
        drops = [b - a for b, a in zip(baseline, entry["test_accuracy"]["values"])]
        assert entry["accuracy_drop"]["values"] == pytest.approx(drops)
    assert utility["toy_noise"]["figures"] == {"toy_noise": {"noise_std": {"mean": 0.01, "ci95": [0.01, 0.01], "n": 2, "values": [0.01, 0.01]}}}
    leak = cell(run.scorecard, "digits-mlp/toy_noise/linear_leakage")
    assert leak["utility"]["test_accuracy"] == utility["toy_noise"]["test_accuracy"]
    assert leak["defense"]["figures"] == utility["toy_noise"]["figures"]


def test_scorecard_follows_the_shipped_schema_and_names_its_environment(local_run):
    out, run = local_run
    document = json.loads((out / "scorecard.json").read_text())
    jsonschema.validate(document, scorecards.schema(), cls=jsonschema.Draft202012Validator)
    assert document == run.scorecard and document["schema"] == "flaudit.scorecard/2"
    manifest = document["manifest"]
    assert manifest["config_hash"] == document["audit"]["config_hash"]
    assert manifest["seeds"] == [0, 1] and manifest["executor"] == "local" and manifest["threads"] == 1
    assert {"torch", "numpy", "flaudit"} <= set(manifest["packages"])
    assert manifest["extension"]["built"] is True and "commit" in manifest["git"]
    assert "linear_leakage" in manifest["registered"]["attacks"]
    grids = cell(document, "digits-mlp/none/linear_leakage")["artifacts"]
    assert [g["seed"] for g in grids] == [0, 1]
    assert (out / grids[0]["grid"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob("*.tmp"))


def test_schema_rejects_a_broken_cell(local_run):
    _, run = local_run
    broken = json.loads(json.dumps(run.scorecard))
    broken["cells"][0]["status"] = "finished"
    with pytest.raises(scorecards.ScorecardError, match="does not follow flaudit.scorecard/2 at cells/0/status"):
        scorecards.validate(broken)


def _metrics_by_cell(card: dict) -> dict:
    return {
        c["id"]: (c["status"], c["risk"], c["metrics"] and {k: v and v["values"] for k, v in c["metrics"].items() if k != "attack_seconds"})
        for c in card["cells"]
    } | {f"utility:{u['defense']}": u["test_accuracy"]["values"] for u in card["utility"]}


def test_process_executor_gives_identical_metrics(local_run, tmp_path):
    _, local = local_run
    pooled = run_toy(tmp_path, MATRIX, executor="process", workers=2)
    assert pooled.scorecard["manifest"]["executor"] == "process"
    assert _metrics_by_cell(pooled.scorecard) == _metrics_by_cell(local.scorecard)


def test_resume_runs_only_what_is_missing_or_failed(local_run, tmp_path):
    _, first = local_run
    extra = MATRIX.replace('name = "*"', 'name = "linear_leakage"\n[[attack]]\nname = "crashes"')
    run_toy(tmp_path, extra)
    stored = sorted((tmp_path / CELLS).glob("*.json"))
    lost = stored[0]
    lost.unlink()  # as if the run had been killed while this job ran
    kept = {p: p.stat().st_mtime_ns for p in stored[1:]}
    resumed = run_toy(tmp_path, extra, resume=True)
    ok_jobs = sum(json.loads(p.read_text())["result"]["status"] == "ok" for p in kept)
    assert resumed.resumed_jobs == ok_jobs
    assert lost.exists()
    for path, mtime in kept.items():
        failed = json.loads(path.read_text())["result"]["status"] == "error"
        assert (path.stat().st_mtime_ns != mtime) == failed  # failed jobs are retried, finished ones kept
    assert resumed.scorecard["manifest"]["resumed_jobs"] == ok_jobs
    assert _metrics_by_cell(resumed.scorecard) == {
        k: v for k, v in _metrics_by_cell(first.scorecard).items() if k in _metrics_by_cell(resumed.scorecard)
    }
    fresh = run_toy(tmp_path, extra)  # without --resume everything runs again
    assert fresh.resumed_jobs == 0


def test_zero_attacks_still_measure_utility(tmp_path):
    from test_audit_toys import toy_catalog

    run = run_toy(tmp_path, '[[defense]]\nname = "toy_noise"\n', catalog=toy_catalog(attacks=()))
    assert run.scorecard["cells"] == [] and len(run.scorecard["utility"]) == 2
    assert "No attack is registered" in (tmp_path / "report.html").read_text()


def test_attacks_that_do_not_shape_the_model_share_the_utility_simulation():
    from flaudit.auditor.running.jobs import plan_units
    from flaudit.auditor.running.plan import build_plan
    from test_audit_toys import toy_catalog, toy_config

    plan = build_plan(toy_config(MATRIX), toy_catalog(), preflight=False)
    units = plan_units(plan.jobs)
    shared = [u for u in units if u.utility is not None]
    assert len(shared) == 3 * 2  # defense columns x seeds: one simulation each
    assert {len(u.attacks) for u in shared} == {3, 2}  # linear_leakage is n/a under toy_secure_sum
    alone = [u for u in units if u.utility is None]
    assert [u.attacks[0].attack.name for u in alone] == ["malicious_aggregate"] * 6
    assert sorted(j.key for u in units for j in u.jobs) == sorted(j.key for j in plan.jobs)
