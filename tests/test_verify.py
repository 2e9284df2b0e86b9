"""Tamper evidence: the manifest's SHA-256 of config, data, code and stored results, and
``flaudit verify`` / ``flaudit gate`` on a run folder before and after a hand edit."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from flaudit.auditor.cli import main
from flaudit.auditor.running import catalog
from flaudit.auditor.running.provenance import code_identity, sha256_file
from test_audit_toys import run_toy, toy_catalog

MATRIX = """
[[defense]]
name = "toy_noise"
std = 1e-7

[[attack]]
name = "linear_leakage"
"""


@pytest.fixture(autouse=True)
def toys(monkeypatch):
    monkeypatch.setattr(catalog, "registered", toy_catalog)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    run_toy(folder, MATRIX)
    return folder


@pytest.fixture
def copy(run_folder, tmp_path):
    return shutil.copytree(run_folder, tmp_path / "run")


def _card(folder):
    return json.loads((folder / "scorecard.json").read_text())


def test_the_manifest_carries_the_digests_of_what_went_in_and_came_out(run_folder):
    manifest = _card(run_folder)["manifest"]
    inputs = manifest["inputs"]
    assert inputs["config_sha256"] == sha256_file(run_folder / "config.json")
    digits = inputs["data"]["digits-mlp"]
    assert digits["dataset"] == "digits" and set(digits["seeds"]) == {"0", "1"}
    assert all(re.fullmatch("[0-9a-f]{64}", d) for d in digits["seeds"].values())
    assert manifest["code"] == code_identity() and manifest["code"]["files"] > 50
    stored = {p.relative_to(run_folder).as_posix() for p in (run_folder / "cells").glob("*.json")}
    assert stored and stored <= set(manifest["outputs"])
    assert {"commit", "dirty"} <= set(manifest["git"])


def test_an_untouched_folder_verifies(run_folder, capsys):
    assert main(["verify", str(run_folder)]) == 0
    assert capsys.readouterr().out.startswith("flaudit verify: OK")


def test_a_cell_edited_by_hand_is_named(copy, capsys):
    card = _card(copy)
    cell = next(c for c in card["cells"] if c["id"] == "digits-mlp/toy_noise/linear_leakage")
    cell["metrics"]["recovery_rate"]["mean"] = 0.0  # hide the leak
    (copy / "scorecard.json").write_text(json.dumps(card))
    assert main(["verify", str(copy)]) == 1
    out = capsys.readouterr().out
    assert "cells[digits-mlp/toy_noise/linear_leakage].metrics.recovery_rate.mean: scorecard 0.0, run folder 1.0" in out
    assert main(["gate", str(copy), str(copy)]) == 2
    err = capsys.readouterr().err
    assert "does not verify against its run folder" in err and err.count("\n") == 1
    assert main(["gate", str(copy), str(copy), "--allow-unverified"]) == 0


def test_an_edited_result_or_config_file_is_named(copy, capsys):
    job = sorted((copy / "cells").glob("attack-*.json"))[0]
    record = json.loads(job.read_text())
    record["result"]["seconds"] = 0.0
    job.write_text(json.dumps(record))
    with (copy / "config.json").open("a") as stream:
        stream.write(" ")
    assert main(["verify", str(copy)]) == 1
    out = capsys.readouterr().out
    assert f"cells/{job.name}: SHA-256 differs from the manifest's" in out
    assert "config.json: SHA-256 differs from the manifest's" in out
    assert ".seconds: scorecard" in out  # the rebuild from the edited file differs as well
