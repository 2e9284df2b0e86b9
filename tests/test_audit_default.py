"""The embedded default audit with the real registered attacks and defenses (``make audit``).

Slow: it trains the default federation once per registered defense and runs every registered
attack; run with ``pytest -m slow tests/test_audit_default.py``.
"""

from __future__ import annotations

import pytest

from flaudit.auditor.running.config import load_audit
from flaudit.auditor.running.runner import RunOptions, run_audit


@pytest.mark.slow
def test_quick_default_audit_runs_every_registered_component(tmp_path):
    run = run_audit(load_audit(None, "quick"), RunOptions(tmp_path, progress=False))
    card = run.scorecard
    failed = {c["id"]: c["errors"][0]["message"] for c in card["cells"] if c["status"] == "error"}
    failed |= {f"{u['defense']} (utility)": u["errors"][0]["message"] for u in card["utility"] if u["status"] == "error"}
    assert not failed, failed
    utility = {u["defense"]: u for u in card["utility"]}
    assert utility["none"]["test_accuracy"]["mean"] > 0.6  # the baseline federation learns
    assert set(utility) == {"none", *card["manifest"]["registered"]["defenses"]}
    assert {c["attack"]["name"] for c in card["cells"]} == set(card["manifest"]["registered"]["attacks"])
    assert card["manifest"]["duration_seconds"] < 600  # the quick profile's budget on 2 cores
    print((tmp_path / "summary.md").read_text())
