"""``flaudit gate``: exit 0 without regressions, 1 with a table of the offending cells, 2 for
unusable input; JUnit XML either way."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from flaudit.auditor.cli import main
from flaudit.auditor.running import catalog
from test_audit_toys import run_toy, toy_catalog

MATRIX = """
[audit]
threads = 1

[[defense]]
name = "toy_noise"
std = {std}

[[attack]]
name = "linear_leakage"

[[attack]]
name = "logit_only"
"""


@pytest.fixture(autouse=True)
def toys(monkeypatch):  # the gate verifies each scorecard by rebuilding it with the registries
    monkeypatch.setattr(catalog, "registered", toy_catalog)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Baseline: noise strong enough to stop the leak; candidate: the same defense, weakened."""
    folders = {}
    for name, std in (("baseline", 0.01), ("same", 0.01), ("weaker", 1e-7)):
        folders[name] = tmp_path_factory.mktemp(name)
        run_toy(folders[name], MATRIX.format(std=std))
    return folders


def test_equal_leakage_passes(runs, capsys):
    assert main(["gate", str(runs["baseline"] / "scorecard.json"), str(runs["same"])]) == 0
    out = capsys.readouterr().out
    assert out.startswith("flaudit gate: pass: no leakage regression in 2 applicable cell(s)")
    suite = ET.parse(runs["same"] / "gate-junit.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "0", "2")


def test_a_weaker_defense_fails_with_the_offending_cells(runs, capsys, tmp_path):
    junit = tmp_path / "gate.xml"
    assert main(["gate", str(runs["baseline"]), str(runs["weaker"]), "--junit", str(junit)]) == 1
    out = capsys.readouterr().out
    assert "FAIL: 1 of 4 cell(s) leak more than the baseline" in out
    rows = [line for line in out.splitlines() if line.startswith("digits-mlp/toy_noise/linear_leakage")]
    assert [row.split()[1] for row in rows] == ["leakage"]  # in leakage units, not PSNR
    assert rows[0].split()[2:6] == ["0", "1", "+1", "0.02"]  # baseline, candidate, delta, tolerance
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("failures") == "1"
    failed = [c for c in suite.iter("testcase") if c.find("failure") is not None]
    assert [(c.get("classname"), c.get("name")) for c in failed] == [("digits-mlp.toy_noise", "linear_leakage")]
    assert "leakage 0 -> 1" in failed[0].find("failure").get("message")


def test_the_reverse_direction_and_loose_tolerances_pass(runs, tmp_path):
    assert main(["gate", str(runs["weaker"]), str(runs["baseline"])]) == 0  # less leakage is fine
    config = tmp_path / "gate.toml"
    config.write_text("[gate]\nleakage = 1.0\n")
    assert main(["gate", str(runs["baseline"]), str(runs["weaker"]), "--config", str(config)]) == 0


V2_ONLY = (
    "leakage", "null_recovery_rate", "n_null_recovered", "null_psnr_rate", "label_null_accuracy", "label_leakage",
    "psnr_rate", "n_psnr_recovered", "psnr_recovered_mean", "n_reconstructed", "n_labels",
)


def as_v1(document: dict) -> dict:
    """``document`` as a flaudit.scorecard/1 scorecard: no nulls, no rating evidence, the old
    risk cut-offs and gate tolerances."""
    old = json.loads(json.dumps(document))
    old["schema"] = "flaudit.scorecard/1"
    del old["audit"]["identifiable_margin_db"]
    cutoffs = {"low": 0.0, "medium": 0.05, "high": 0.25}
    old["audit"]["risk_thresholds"] = {"recovery_rate": cutoffs, "label_accuracy": {"low": 0.5, "medium": 0.8, "high": 0.95}}
    old["audit"]["gate"] = {"recovery_rate": 0.02, "psnr_mean": 1.0, "ssim_mean": 0.02, "label_accuracy": 0.05}
    for scenario in old["audit"]["scenarios"]:  # v1 ran every column and row on every scenario
        for key in ("defenses", "attacks", "description"):
            scenario.pop(key, None)
    for cell in old["cells"]:
        del cell["rated"]
        for name in V2_ONLY:
            (cell["metrics"] or {}).pop(name, None)
            for run in cell["runs"]:
                run.get("metrics", {}).pop(name, None)
    return old


def test_a_v1_scorecard_is_refused_either_way_in_one_line(runs, tmp_path, capsys):
    v1 = _write(tmp_path / "v1.json", as_v1(json.loads((runs["baseline"] / "scorecard.json").read_text())))
    assert main(["gate", v1, str(runs["same"])]) == 2
    err = capsys.readouterr().err
    assert "the baseline is a flaudit.scorecard/1 scorecard" in err and "re-run the baseline" in err and err.count("\n") == 1


def _write(path, document):
    path.write_text(json.dumps(document))
    return str(path)


def test_unusable_input_exits_2_with_one_line(runs, tmp_path, capsys):
    baseline = json.loads((runs["baseline"] / "scorecard.json").read_text())
    other_schema = _write(tmp_path / "old.json", {**baseline, "schema": "flaudit.scorecard/0"})
    (tmp_path / "corrupt.json").write_text('{"schema": "flaudit.scorecard/1", "cells": [')
    smaller = {**baseline, "cells": baseline["cells"][1:]}
    cases = {
        str(tmp_path / "missing.json"): "does not exist",
        str(tmp_path / "corrupt.json"): "is not valid JSON",
        other_schema: "has schema 'flaudit.scorecard/0'; expected 'flaudit.scorecard/2'",
        _write(tmp_path / "invalid.json", {**baseline, "cells": [{"id": 3}]}): "does not follow flaudit.scorecard/2 at cells/0",
        _write(tmp_path / "v1.json", as_v1(baseline)): "the candidate is a flaudit.scorecard/1 scorecard, which records no leakage",
        _write(tmp_path / "smaller.json", smaller): "audit different matrices; only in the baseline: digits-mlp/none/linear_leakage",
    }
    for candidate, message in cases.items():
        assert main(["gate", str(runs["baseline"]), candidate]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("[gate]\npsnr_mean = 1\n")
    assert main(["gate", str(runs["baseline"]), str(runs["same"]), "--config", str(bad_config)]) == 2
    assert "[gate] unknown key 'psnr_mean'" in capsys.readouterr().err
