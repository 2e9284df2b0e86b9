"""Unusable input is refused before any job runs: one line, exit 2, nothing written. A fuzz over
malformed configs and scorecards, NaN/inf and absurd values, unmet attack preconditions, bad
paths; and an unexpected exception is one line with a log pointer, exit 3."""

from __future__ import annotations

import json
import random
import re
import shutil

import pytest

from flaudit.auditor import cli
from flaudit.auditor.cli import main
from flaudit.auditor.running import catalog
from test_audit_cli import CONFIG, _config
from test_audit_toys import toy_catalog
from test_run_safety import finished  # noqa: F401 - the shared finished-run fixture


@pytest.fixture(autouse=True)
def toys(monkeypatch):
    monkeypatch.setattr(catalog, "registered", toy_catalog)


def _refused(capsys, argv, out=None, needle=""):
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("flaudit: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err, err
    if out is not None:
        assert not out.exists(), "an input error wrote files"
    return err


BAD_SCENARIO = [
    ("lr = nan", "scenario.lr: must be a finite number, got nan"),
    ("lr = inf", "scenario.lr: must be a finite number, got inf"),
    ("lr = 1e30", "scenario.lr: must be <= 100.0"),
    ("momentum = nan", "scenario.momentum: must be a finite number"),
    ("weight_decay = inf", "scenario.weight_decay: must be a finite number"),
    ("sample_fraction = nan", "scenario.sample_fraction: must be a finite number"),
    ("image_size = 100000", "scenario.image_size: must be <= 1024, got 100000"),
    ("extra_classes = 1000000000", "scenario.extra_classes: must be <= 100000"),
    ('device = "tpu"', "scenario.device='tpu': expected cpu, cuda"),
    ("local_epochs = 99999999", "scenario.local_epochs: must be <= 10000"),
]


@pytest.mark.parametrize("line, needle", BAD_SCENARIO)
def test_impossible_scenario_values(tmp_path, capsys, line, needle):
    text = CONFIG.replace('partition = "iid"', f'partition = "iid"\n{line}')
    out = tmp_path / "run"
    _refused(capsys, ["run", "--config", _config(tmp_path, text), "--out", str(out), "--no-progress"], out, needle)


BAD_TABLES = [
    ('[[defense]]\nname = "toy_noise"\nlabel = "n2"\nstd = nan\n', "std: must be a finite number"),
    ("[gate]\nleakage = nan\n", "gate.leakage: must be a finite number"),
    ("[gate]\nlabel_leakage = -1.0\n", "gate.label_leakage: must be >= 0.0"),
    ('[[attack]]\nname = "linear_leakage"\nlabel = "x"\ntimeout_s = nan\n', "timeout_s: must be a finite number"),
    ('[[attack]]\nname = "linear_leakage"\nlabel = "' + "x" * 260 + '"\n', "label: at most 100 characters, got 260"),
    ('[[attack]]\nname = "linear_leakage"\nlabel = "a\\u0000b"\n', "label: expected a non-empty printable string"),
]


@pytest.mark.parametrize("extra, needle", BAD_TABLES)
def test_non_finite_and_unreasonable_component_values(tmp_path, capsys, extra, needle):
    out = tmp_path / "run"
    _refused(capsys, ["run", "--config", _config(tmp_path, CONFIG + extra), "--out", str(out), "--no-progress"], out, needle)


def test_audit_options_are_finite(tmp_path, capsys):
    for key in ("psnr_threshold = nan", "job_timeout_s = inf", "max_memory_gb = nan", "max_memory_gb = 0"):
        text = CONFIG.replace("[scenario]", f"[audit]\n{key}\n\n[scenario]")
        _refused(capsys, ["run", "--config", _config(tmp_path, text), "--out", str(tmp_path / "run")], tmp_path / "run", "audit.")


def test_attack_preconditions_are_checked_before_any_job(tmp_path, capsys, monkeypatch):
    from flaudit.auditor.attacks.base import Attack
    from test_audit_toys import ATTACK_CLASSES, DEFENSE_CLASSES, LinearLeakage

    class NeedsAux(LinearLeakage):
        name = "needs_aux"
        needs_auxiliary = True

    monkeypatch.setattr(catalog, "registered", lambda: toy_catalog((*ATTACK_CLASSES, NeedsAux), DEFENSE_CLASSES))
    out = tmp_path / "run"
    text = CONFIG.replace("auxiliary_samples = 4", "auxiliary_samples = 0") + '[[attack]]\nname = "needs_aux"\n'
    _refused(capsys, ["run", "--config", _config(tmp_path, text), "--out", str(out)], out,
             "cell digits-mlp/none/needs_aux: needs_aux needs the attacker's auxiliary data")
    text = CONFIG.replace("[scenario]", "[audit]\nattacker_client = 4\n\n[scenario]")
    _refused(capsys, ["run", "--config", _config(tmp_path, text), "--out", str(out)], out,
             "audit.attacker_client=4, but scenario 'digits-mlp' has 4 clients (0..3)")

    class Targeted:  # a Params with target_client, as dlg/ig/... have
        target_client = 99
    attack = LinearLeakage(Targeted())
    assert Attack.missing_input(attack, toy_config_scenario()) == \
        "linear_leakage target_client=99, but the scenario has 4 clients (0..3)"


def toy_config_scenario():
    from test_audit_toys import toy_config

    return toy_config().scenarios[0].config


def test_a_data_root_that_is_not_a_dataset_is_refused_at_once(tmp_path, capsys):
    text = CONFIG.replace('dataset = "digits"', 'dataset = "imagefolder"\ndata_root = "/"')
    _refused(capsys, ["run", "--config", _config(tmp_path, text), "--out", str(tmp_path / "run")], tmp_path / "run",
             "holds no images")


def test_unusable_config_files_and_out_paths(tmp_path, capsys):
    out = tmp_path / "run"
    _refused(capsys, ["run", "--config", str(tmp_path), "--out", str(out)], out, "is a folder, not a TOML file")
    (tmp_path / "latin1.toml").write_bytes(b'[audit]\nname = "caf\xe9"\n')
    _refused(capsys, ["run", "--config", str(tmp_path / "latin1.toml"), "--out", str(out)], out, "is not UTF-8 text")
    (tmp_path / "deep.toml").write_text("[audit]\nname = " + "[" * 50000 + "]" * 50000 + "\n")
    _refused(capsys, ["run", "--config", str(tmp_path / "deep.toml"), "--out", str(out)], out, "deep.toml")
    afile = tmp_path / "afile"
    afile.write_text("x")
    _refused(capsys, ["run", "--config", _config(tmp_path), "--out", str(afile)], None, "is a file, not a folder")
    _refused(capsys, ["run", "--config", _config(tmp_path), "--out", str(afile / "sub")], None, "cannot be created")
    assert afile.read_text() == "x"


def _fuzzed_configs(seed: int, count: int):
    """Valid TOML that is not a valid audit: wrong types, NaN/inf, unknown keys, huge values."""
    rng = random.Random(seed)
    keys = ["lr", "momentum", "clients", "rounds", "batch_size", "image_size", "sample_fraction", "seed", "extra_classes",
            "weight_decay", "alpha", "client_test_fraction", "unknown_key", "partition", "dataset", "model"]
    values = ["nan", "inf", "-inf", "-1", "1e300", "99999999999", '"x"', "[]", "{ a = 1 }", "true"]
    for _ in range(count):
        yield rng.choice(keys), rng.choice(values)


@pytest.mark.parametrize("key, value", list(_fuzzed_configs(14, 24)))
def test_fuzzed_configs_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, key, value):
    line = re.compile(rf"^{key} = .*$", re.M)
    if line.search(CONFIG):
        text = line.sub(f"{key} = {value}", CONFIG)
    else:
        text = CONFIG.replace('partition = "iid"', f'partition = "iid"\n{key} = {value}')
    out = tmp_path / "run"
    _refused(capsys, ["run", "--config", _config(tmp_path, text), "--out", str(out), "--no-progress"], out)


SCORECARDS = {
    "empty": "", "not json": "{not json", "nan": '{"schema": NaN}', "deep": "[" * 1_000_000, "a list": "[]",
    "other schema": '{"schema": "x"}', "huge number": '{"schema": 1e999}', "binary": "\udcff",
}


@pytest.mark.parametrize("name", SCORECARDS)
def test_malformed_scorecards_are_one_line_exit_2(tmp_path, capsys, name):
    folder = tmp_path / "card"
    folder.mkdir()
    text = SCORECARDS[name]
    (folder / "scorecard.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    _refused(capsys, ["gate", str(folder), str(folder)], folder / "gate-junit.xml")
    _refused(capsys, ["report", str(folder)], folder / "report.html")


def test_gate_rejects_nan_metrics_and_tolerances_and_a_junit_folder(finished, tmp_path, capsys):
    card = json.loads((finished / "scorecard.json").read_text())
    scored = next(c for c in card["cells"] if c["metrics"])
    scored["metrics"]["recovery_rate"]["mean"] = float("nan")
    candidate = tmp_path / "nan.json"
    candidate.write_text(json.dumps(card))  # json writes NaN
    _refused(capsys, ["gate", str(finished), str(candidate)], None, "NaN is not a JSON number")
    (tmp_path / "gate.toml").write_text("[gate]\nleakage = nan\n")
    _refused(capsys, ["gate", str(finished), str(finished), "--config", str(tmp_path / "gate.toml")], None, "gate.leakage")
    _refused(capsys, ["gate", str(finished), str(finished), "--junit", str(tmp_path)], None, "is a folder")


def test_a_malformed_stored_job_is_run_again_on_resume(finished, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    stored = next((out / "cells").glob("attack-*.json"))
    stored.write_text(json.dumps({"key": stored.stem, "result": {"status": "ok"}}))
    assert main(["run", "--config", _config(tmp_path), "--out", str(out), "--no-progress", "--resume"]) == 0
    assert "resumed 3 finished job(s)" in capsys.readouterr().err
    assert json.loads(stored.read_text())["result"]["metrics"]


def test_an_unexpected_exception_is_one_line_with_a_log_and_exit_3(tmp_path, capsys, monkeypatch):
    def broken(args):
        raise KeyError("internal")

    monkeypatch.setattr(cli, "cmd_list", broken)
    monkeypatch.setattr(cli.tempfile, "tempdir", str(tmp_path))
    assert main(["list"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("flaudit: internal error: KeyError: 'internal'; the traceback is in ") and err.count("\n") == 1
    log = next(tmp_path.glob("flaudit-crash-*.log"))
    assert "Traceback" in log.read_text() and "KeyError" in log.read_text()
