"""A defense column the scenario's kind cannot run (top-k or secure aggregation on a FedMD
round, which has no updates) is not applicable, with the kind's reason, in every cell and in
the utility, instead of failing when the simulation starts; the columns that fit still run."""

from __future__ import annotations

import copy

import pytest

from flaudit.auditor.results import gate, scorecard
from flaudit.auditor.running.catalog import registered
from flaudit.auditor.running.runner import RunOptions, run_audit
from flaudit.scenarios.hooks import AggregationOutcome, FLHooks
from flaudit.scenarios.kinds import scenario_kind
from test_pli import FEDMD_DIGITS, audit

DEFENSES = "".join(f'\n[[defense]]\nname = "{name}"\n' for name in ("dp", "topk", "secagg"))
REJECTED = {"topk": "update transforms cannot act on it", "secagg": "an aggregation protocol cannot act on it"}


class SecureSum:
    """Any aggregator but the plain weighted mean is an aggregation protocol."""

    def aggregate(self, round_index, uploads):
        return AggregationOutcome(sum(u.update for u in uploads), individual_updates_visible=False)


def test_kinds_say_which_hooks_they_reject():
    transformed, protocol = FLHooks(), FLHooks(aggregator=SecureSum())
    transformed.update_transforms.append(lambda update: update)
    assert scenario_kind("fedavg").rejects(transformed) is None
    for kind in ("fedmd", "dsfl", "fedgems"):
        assert scenario_kind(kind).rejects(FLHooks()) is None
        assert "update transforms cannot act on it" in scenario_kind(kind).rejects(transformed)
        assert "an aggregation protocol cannot act on it" in scenario_kind(kind).rejects(protocol)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The finished audit and its run folder."""
    out = tmp_path_factory.mktemp("kinds")
    return run_audit(audit(FEDMD_DIGITS + DEFENSES, ("pli", "rtf"), [0]), RunOptions(out, progress=False), registered()), out


def test_rejected_columns_are_not_applicable_with_the_kinds_reason(run):
    card = run[0].scorecard
    cells = {c["id"]: c for c in card["cells"]}
    utility = {u["defense"]: u for u in card["utility"]}
    assert list(utility) == ["none", "dp", "topk", "secagg"]
    for defense, reason in REJECTED.items():
        for attack in ("pli", "rtf"):
            cell = cells[f"fedmd/{defense}/{attack}"]
            assert cell["status"] == "not_applicable" and reason in cell["reason"] and not cell["runs"]
        entry = utility[defense]
        assert entry["status"] == "not_applicable" and reason in entry["reason"]
        assert entry["test_accuracy"] is None and not entry["errors"]
    for defense in ("none", "dp"):
        assert cells[f"fedmd/{defense}/pli"]["status"] == "ok", cells[f"fedmd/{defense}/pli"]["errors"]
        assert "ServerView" in cells[f"fedmd/{defense}/rtf"]["reason"]  # the attack's own misfit
        assert utility[defense]["status"] == "ok" and utility[defense]["reason"] is None
        assert utility[defense]["test_accuracy"]["mean"] > 0.3
    assert card["summary"]["error"] == 0 and card["summary"]["ok"] == 2


def test_outputs_show_n_a_and_the_gate_passes(run):
    card, out = run[0].scorecard, run[1]
    scorecard.validate(card)
    summary = (out / "summary.md").read_text()
    accuracy = next(line for line in summary.splitlines() if line.startswith("| *test accuracy*"))
    assert accuracy.count("n/a") == 2 and "failed" not in accuracy and "0 failed" in summary
    report = (out / "report.html").read_text()
    assert "n/a: kind=&#x27;fedmd&#x27; shares logits" in report
    assert gate.compare(card, card, gate.tolerances_of(card)).passed


def test_schema_keeps_old_utility_entries_and_needs_a_reason(run):
    old = copy.deepcopy(run[0].scorecard)
    old["utility"] = [{k: v for k, v in u.items() if k != "reason"} for u in old["utility"] if u["status"] == "ok"]
    scorecard.validate(old)  # a flaudit.scorecard/1 document written before utility could be n/a
    missing = copy.deepcopy(run[0].scorecard)
    next(u for u in missing["utility"] if u["status"] == "not_applicable")["reason"] = None
    with pytest.raises(scorecard.ScorecardError, match="utility"):
        scorecard.validate(missing)
