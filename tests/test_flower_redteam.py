"""The red team in a live Flower federation (in-process grid, seconds): the server crafts the
model it sends with flaudit's RTF and Scale-MIA, reads the canary's batches out of the
aggregate Flower returns (message API, and SecAgg+ on the legacy API), and the rounds are
scored like any audit cell: against the canary's recorded batches, next to the attack's nulls."""

from __future__ import annotations

import importlib
import os
import sys

import pytest

pytest.importorskip("flwr")

from flaudit.auditor.running.jobs import DIVERGED  # noqa: E402
from flaudit.integrations.flower.recording import load_recording  # noqa: E402
from flaudit.integrations.flower.redteam_scoring import score_red_team  # noqa: E402
from flaudit.scenarios.scenario import ScenarioConfig  # noqa: E402
from test_flower import APP  # noqa: E402

APPS = ("flower_app", "redteam_app", "secagg_app")


def red_team_run(module: str, attack: str, recording, params: dict | None = None, training: dict | None = None):
    """Runs the example's red-team federation with ``attack`` crafted by the server of
    ``module`` (redteam_app: message API; secagg_app: SecAgg+), fresh imports of the app."""
    os.environ.update(FLOWER_APP_RECORDING=str(recording), FLOWER_APP_FEDERATION="red-team", FLOWER_APP_ATTACK=attack,
                      FLOWER_APP_RED_TEAM="0", FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    if str(APP) not in sys.path:
        sys.path.insert(0, str(APP))
    for name in APPS:
        sys.modules.pop(name, None)
    try:
        app = importlib.import_module(module)
        if params is not None:
            sys.modules["redteam_app"].PARAMS[attack] = params
        app.FEDERATION.update(training or {})
        from flaudit.integrations.flower.grid import run_local

        run_local(app.server_app, app.client_app, app.FEDERATION["clients"])
        config = ScenarioConfig(kind="recorded", recording=recording, dataset=app.FEDERATION["dataset"],
                                model=app.FEDERATION["model"], rounds=app.FEDERATION["rounds"], seed=0)
        return app, score_red_team(app.last_strategy[0].crafter, config)
    finally:
        for name in APPS:  # the next test imports the app afresh under its own settings
            sys.modules.pop(name, None)
        for key in ("FLOWER_APP_FEDERATION", "FLOWER_APP_ATTACK"):
            os.environ.pop(key)


@pytest.mark.parametrize("module", ["redteam_app", "secagg_app"])
@pytest.mark.parametrize("attack", ["rtf", "scale_mia"])
def test_red_team_recovers_the_canarys_images_above_its_null(tmp_path, module, attack):
    recording = tmp_path / "recording"
    app, results = red_team_run(module, attack, recording)
    loaded = load_recording(recording)
    secure = module == "secagg_app"
    assert [r.aggregation for r in loaded.rounds] == ["aggregate_only" if secure else "per_client"] * 2
    assert all(n.sent is not None for r in loaded.rounds for n in r.nodes)  # the crafted models sent are recorded
    assert len(results) == app.FEDERATION["rounds"]
    for result in results:
        metrics = result.metrics
        assert result.result.target_clients == (0,) and metrics["n_targets"] == 32  # the canary's batch
        assert result.result.null is not None and metrics["null_recovery_rate"] <= 0.05
        assert metrics["recovery_rate"] >= 0.5 and metrics["leakage"] >= 0.45, metrics
        assert "failure" not in result.result.diagnostics
    if attack == "scale_mia":  # the server scored both trial spreads on Flower's aggregates
        assert set(app.last_strategy[0].crafter.hook.clean) == {0.01, 0.05}
        assert [result.result.diagnostics["logit_spread"] for result in results] == [0.01, 0.05]


def test_a_diverging_crafted_model_is_the_attacks_failure(tmp_path):
    """The study's large fixed RTF gain with several local steps: the clients' training goes
    non-finite; each round is the attack's failure, and the federation keeps its model."""
    params = {"bins": 128, "input_gain": 1e4, "readout_rms": 10.0}
    app, results = red_team_run("redteam_app", "rtf", tmp_path / "recording", params, {"batch_size": 8, "local_epochs": 2})
    assert len(results) == 2
    for result in results:
        assert result.metrics["recovery_rate"] == 0.0 and result.metrics["leakage"] == 0.0
        assert result.result.diagnostics["failure"] == DIVERGED
        assert "non-finite" in result.result.diagnostics["invalid_update"]
    crafter = app.last_strategy[0].crafter
    assert not crafter.changes_architecture(crafter.model)  # the federation is left with its own architecture


def test_the_crafted_architecture_is_recorded_by_digest(tmp_path):
    """Under SecAgg+ RTF's architecture travels in each node's config: the recording keeps its
    sha256 and size, not the pickled module."""
    red_team_run("secagg_app", "rtf", tmp_path / "recording")
    node = load_recording(tmp_path / "recording").rounds[0].nodes[0]
    blob = node.config["architecture"]
    assert set(blob) == {"bytes_sha256", "size"} and blob["size"] > 1024
    assert (tmp_path / "recording" / "recording.json").stat().st_size < 100_000
