"""The embedded default audit with the real registered attacks and defenses (``make audit``).

Slow: it runs six federations (worst case and realistic, digits and natural images, FedMD, a
GAN-ready model) through every registered attack and defense; run with
``pytest -m slow tests/test_audit_default.py -s``.
"""

from __future__ import annotations

import pytest

from flaudit.auditor.running.config import load_audit
from flaudit.auditor.running.runner import RunOptions, run_audit


@pytest.mark.slow
def test_quick_default_audit_scores_every_registered_component(tmp_path):
    run = run_audit(load_audit(None, "quick"), RunOptions(tmp_path, executor="process", workers=2, progress=False))
    card = run.scorecard
    failed = {c["id"]: c["errors"][0]["message"] for c in card["cells"] if c["status"] == "error"}
    failed |= {f"{u['scenario']}/{u['defense']} (utility)": u["errors"][0]["message"] for u in card["utility"] if u["status"] == "error"}
    assert not failed, failed
    registered = card["manifest"]["registered"]
    assert {c["attack"]["name"] for c in card["cells"] if c["status"] == "ok"} == set(registered["attacks"])
    assert {u["defense"] for u in card["utility"] if u["status"] == "ok"} == {"none", *registered["defenses"]}
    realistic = next(u for u in card["utility"] if u["scenario"] == "digits-fedavg" and u["defense"] == "none")
    assert realistic["test_accuracy"]["mean"] > 0.5  # the realistic federation learns
    assert card["manifest"]["duration_seconds"] < 600  # the quick profile's budget on 2 cores
    print((tmp_path / "summary.md").read_text())
