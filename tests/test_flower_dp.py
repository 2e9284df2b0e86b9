"""Flower's differential privacy audited from the recording: the epsilon Flower's accountant
reports next to Opacus' RDP accounting of the same mechanism, and the flags on LocalDpMod
(per-round epsilon >= 1, sensitivity other than the clipping norm, registered app-wide), as
findings of the recorded scenario in the scorecard and summary."""

from __future__ import annotations

import importlib
import json
import os
import sys

import pytest

pytest.importorskip("flwr")

from flwr.clientapp import ClientApp  # noqa: E402
from flwr.clientapp.mod import LocalDpMod  # noqa: E402
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg  # noqa: E402

from flaudit.integrations.flower.dp import findings, opacus_epsilon  # noqa: E402
from flaudit.integrations.flower.settings import recorded_settings  # noqa: E402
from test_flower import APP  # noqa: E402


def train(message, context):
    return message


def client_app(local_dp: LocalDpMod, app_wide: bool) -> ClientApp:
    app = ClientApp(mods=[local_dp] if app_wide else [])
    app.train(mods=[] if app_wide else [local_dp])(train)
    app.evaluate()(train)
    return app


def codes(found) -> dict[str, object]:
    return {f.code: f for f in found}


def test_local_dp_epsilon_at_least_one_is_flagged_with_opacus_accounting():
    found = codes(findings(recorded_settings(FedAvg(), client_app(LocalDpMod(1.0, 1.0, 2.0, 1e-5), False)), 3, 4))
    assert set(found) == {"local_dp_epsilon"}
    flag = found["local_dp_epsilon"]
    assert flag.severity == "warning" and "proven only for epsilon < 1" in flag.message
    sigma = (2 * __import__("math").log(1.25 / 1e-5)) ** 0.5 / 2.0
    assert flag.values["sigma"] == pytest.approx(sigma)
    assert flag.values["opacus_epsilon"] == pytest.approx(opacus_epsilon(sigma, 1.0, 3, 1e-5))


def test_local_dp_sensitivity_other_than_the_clipping_norm_is_flagged():
    found = codes(findings(recorded_settings(FedAvg(), client_app(LocalDpMod(1.0, 0.1, 0.5, 1e-5), False)), 2, 4))
    assert set(found) == {"local_dp_sensitivity"}
    assert "sensitivity=0.1 but clipping_norm=1" in found["local_dp_sensitivity"].message


def test_dp_mod_registered_app_wide_is_flagged_and_train_only_is_not():
    wide = codes(findings(recorded_settings(FedAvg(), client_app(LocalDpMod(1.0, 1.0, 0.5, 1e-5), True)), 2, 4))
    assert wide["dp_mod_app_wide"].severity == "warning" and "@app.train(mods=[...])" in wide["dp_mod_app_wide"].message
    train_only = codes(findings(recorded_settings(FedAvg(), client_app(LocalDpMod(1.0, 1.0, 0.5, 1e-5), False)), 2, 4))
    assert set(train_only) == {"epsilon"} and train_only["epsilon"].severity == "info"  # a sound setting: its accounting only


def test_central_dp_without_an_accountant_gets_opacus_epsilon_and_a_warning():
    strategy = DifferentialPrivacyServerSideFixedClipping(FedAvg(), 1.2, 1.0, 4)
    (found,) = findings(recorded_settings(strategy), 5, 4)
    assert found.code == "epsilon" and found.severity == "warning" and "has no accountant" in found.message
    assert found.values["opacus_epsilon"] == pytest.approx(opacus_epsilon(1.2, 1.0, 5, 1e-5))


@pytest.fixture(scope="module")
def dp_recording(tmp_path_factory):
    """dp_app on the in-process grid: central DP with Flower's RDP accountant, LocalDpMod on training."""
    pytest.importorskip("dp_accounting")
    recording = tmp_path_factory.mktemp("flower-dp") / "recording"
    os.environ.update(FLOWER_APP_RECORDING=str(recording), FLOWER_APP_FEDERATION="red-team",
                      FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    if str(APP) not in sys.path:
        sys.path.insert(0, str(APP))
    for name in ("flower_app", "dp_app"):
        sys.modules.pop(name, None)
    try:
        app = importlib.import_module("dp_app")
        from flaudit.integrations.flower.grid import run_local

        run_local(app.server_app, app.client_app, app.FEDERATION["clients"])
    finally:
        for name in ("flower_app", "dp_app"):
            sys.modules.pop(name, None)
        os.environ.pop("FLOWER_APP_FEDERATION")
    return recording


def test_flowers_epsilon_matches_opacus_for_the_same_mechanism(dp_recording):
    settings = json.loads((dp_recording / "recording.json").read_text())["settings"]
    spent = settings["privacy_spent"]
    assert spent["wrapper"] == "DifferentialPrivacyServerSideFixedClipping" and spent["num_releases"] == 2
    found = codes(findings(settings, 2, 4))
    assert set(found) == {"epsilon", "local_dp_epsilon"}
    epsilon = found["epsilon"]
    assert epsilon.severity == "info" and epsilon.values["flower_epsilon"] == spent["epsilon"]
    assert epsilon.values["opacus_epsilon"] == pytest.approx(spent["epsilon"], rel=0.05)


def test_findings_reach_the_scorecard_and_summary(dp_recording, tmp_path):
    from flaudit.auditor.cli import main

    config = tmp_path / "audit.toml"
    text = (APP / "audit-dp.toml").read_text().replace('"runs/flower-app/dp-recording"', json.dumps(str(dp_recording)))
    config.write_text(text.replace('[[attack]]\nname = "idlg"\n', ""))
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "out")]) == 0
    card = json.loads((tmp_path / "out" / "scorecard.json").read_text())
    (scenario,) = card["audit"]["scenarios"]
    assert {f["code"] for f in scenario["findings"]} == {"epsilon", "local_dp_epsilon"}
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "local" in summary and "proven only for epsilon" in summary
    assert "<h3>Settings</h3>" in (tmp_path / "out" / "report.html").read_text()
