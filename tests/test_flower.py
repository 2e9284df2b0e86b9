"""The Flower integration: the example federation (examples/flower-app) runs on the in-process
grid with Flower's own ServerApp, strategies, mods and SecAgg+; its recording is checked,
replayed as the ``recorded`` kind against flaudit's simulation of the same federation, and the
inconsistency attack isolates the canary from the SecAgg+ aggregate (in Flower and in flaudit)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flaudit.auditor.attacks.base import AttackerKnowledge, AttackOutput  # noqa: E402
from flaudit.auditor.attacks.inconsistency import ConfigIsolation, Inconsistency, InconsistencyParams, isolated_update  # noqa: E402
from flaudit.auditor.attacks.label_inference import LabelInference  # noqa: E402
from flaudit.auditor.running.jobs import scored_targets  # noqa: E402
from flaudit.defenses.base import compose  # noqa: E402
from flaudit.defenses.secagg import SecAggPlus, SecAggPlusParams  # noqa: E402
from flaudit.integrations.flower.recording import RecordingError, load_recording  # noqa: E402
from flaudit.integrations.flower.replay import refuses, replay_canary  # noqa: E402
from flaudit.scenarios.fedavg import FedAvgSimulation  # noqa: E402
from flaudit.scenarios.hooks import FLHooks  # noqa: E402
from flaudit.scenarios.kinds import scenario_kind  # noqa: E402
from flaudit.scenarios.scenario import ScenarioConfig, build_world  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "examples" / "flower-app"


def run_app(module: str, recording: Path, red_team: bool = False):
    """Imports the example app afresh (it reads its recording folder at import) and runs it."""
    os.environ.update(FLOWER_APP_RECORDING=str(recording), FLOWER_APP_RED_TEAM="1" if red_team else "0",
                      FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    if str(APP) not in sys.path:
        sys.path.insert(0, str(APP))
    sys.modules.pop(module, None)
    app = importlib.import_module(module)
    from flaudit.integrations.flower.grid import run_local

    run_local(app.server_app, app.client_app, app.FEDERATION["clients"])
    return app


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    recording = tmp_path_factory.mktemp("flower") / "recording"
    app = run_app("flower_app", recording)
    return app, recording


@pytest.fixture(scope="module")
def red_team(tmp_path_factory):
    recording = tmp_path_factory.mktemp("flower-secagg") / "recording"
    app = run_app("secagg_app", recording, red_team=True)
    return app, recording


def recorded_config(app, recording: Path) -> ScenarioConfig:
    return ScenarioConfig(**{**app.FEDERATION, "kind": "recorded", "recording": recording})


def test_recording_holds_every_round_and_reply(federation):
    app, path = federation
    recording = load_recording(path)
    assert recording.finished and recording.api == "message" and len(recording.rounds) == app.FEDERATION["rounds"]
    for recorded in recording.rounds:
        assert recorded.aggregation == "per_client" and len(recorded.nodes) == app.FEDERATION["clients"]
        assert recorded.canary is not None and recorded.canary.node_id == min(n.node_id for n in recorded.nodes)
        assert all(n.sent is None and n.config["lr"] == app.FEDERATION["lr"] for n in recorded.nodes)
        total = sum(n.num_examples for n in recorded.nodes)
        for key, aggregate in recorded.aggregate.items():  # FedAvg of the recorded replies is the recorded aggregate
            mean = sum(n.reply[key].astype(np.float64) * n.num_examples for n in recorded.nodes) / total
            assert np.abs(mean - aggregate).max() < 1e-6


def test_replay_matches_flauditss_simulation_of_the_same_federation(federation):
    app, path = federation
    kind = scenario_kind("recorded")
    world = kind.build_world(recorded_config(app, path))
    replay = kind.simulation(world, FLHooks())
    simulated = FedAvgSimulation(build_world(ScenarioConfig(**app.FEDERATION)))
    for round_index in range(app.FEDERATION["rounds"]):
        a, b = simulated.run_round(round_index), replay.run_round(round_index)
        assert b.server_view.participants == a.server_view.participants
        assert b.server_view.num_samples == a.server_view.num_samples
        assert b.server_view.training == a.server_view.training
        for client in a.server_view.participants:  # round 0 bit-identical; later rounds differ by float rounding
            assert (a.client_updates[client] - b.client_updates[client]).abs().max() < 1e-6
        assert (a.server_view.aggregate - b.server_view.aggregate).abs().max() < 1e-6
        assert abs(a.test_accuracy - b.test_accuracy) < 1e-9
        truth = b.ground_truth[0]  # the canary's recorded batches are client 0's real samples
        canary = world.data.train.images[truth.sample_indices]
        real = simulated.world.data.train.images[a.ground_truth[0].sample_indices]
        assert torch.equal(canary.flatten(1).sort(0).values, real.flatten(1).sort(0).values)
        replayed = replay_canary(world, b.server_view.model, truth, b.server_view.training)
        own = b.server_view.layout.flatten(replayed) - b.server_view.layout.flatten(b.server_view.model)
        assert (own - b.client_updates[0]).abs().max() < 1e-6  # the canary's batches reproduce its update


def test_peer_outputs_without_ground_truth_are_unscored(federation):
    app, path = federation
    kind = scenario_kind("recorded")
    record = kind.simulation(kind.build_world(recorded_config(app, path)), FLHooks()).run_round(0)
    images = torch.zeros(2, 1, 8, 8)
    peers = AttackOutput(images, target_clients=(1, 2))
    assert scored_targets(peers, record)[1].startswith("no ground truth for client(s) [1, 2]")
    mixed, reason = scored_targets(AttackOutput(images, target_clients=(0, 1)), record)
    assert reason is None and mixed.target_clients == (0,)


@pytest.mark.parametrize("damage", ["truncate", "foreign", "newer", "no_manifest"])
def test_loader_names_what_is_wrong(federation, tmp_path, damage):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(federation[1], copy)
    manifest = copy / "recording.json"
    document = json.loads(manifest.read_text())
    if damage == "truncate":
        target = copy / document["rounds"][1]["nodes"][2]["reply"]["file"]
        target.write_bytes(target.read_bytes()[:100])
        expected = "does not match its sha256"
    elif damage == "foreign":
        manifest.write_text(json.dumps({"format": "something.else", "rounds": []}))
        expected = "is not a flaudit Flower recording"
    elif damage == "newer":
        manifest.write_text(json.dumps({**document, "version": 2}))
        expected = "this flaudit reads version 1"
    else:
        manifest.unlink()
        expected = "is missing"
    with pytest.raises(RecordingError, match=expected):
        load_recording(copy)


def test_red_team_isolates_the_canary_through_secagg_plus(red_team):
    app, path = red_team
    recording = load_recording(path)
    assert recording.api == "legacy" and all(r.aggregation == "aggregate_only" for r in recording.rounds)
    assert all(n.reply is None and n.num_examples > 0 for r in recording.rounds for n in r.nodes)
    kind = scenario_kind("recorded")
    config = recorded_config(app, path)
    assert "holds only the aggregate" in refuses(LabelInference, config, 1)
    world = kind.build_world(config)
    record = kind.simulation(world, FLHooks()).run_round(1)
    view = record.server_view
    assert view.uploads is None and sorted(s.lr for s in view.client_training.values()) == [0.0] * 5 + [app.FEDERATION["lr"]]
    isolated = isolated_update(view, 0)
    truth = record.client_updates[0]  # the canary's update, replayed from its recorded batches
    assert (isolated - truth).abs().max() < 1e-3 < truth.abs().max()  # SecAgg+'s quantization, not more
    strategy = app.last_strategy[0]  # the red team's own reading, in Flower
    before = np.concatenate([a.ravel() for a in strategy.sent[2]])
    after = np.concatenate([a.ravel() for a in strategy.isolated[2]])
    assert np.abs((after - before) - truth.numpy()).max() < 1e-3


def test_inconsistency_attack_in_flaudits_own_secagg_plus():
    config = ScenarioConfig(dataset="digits", model="cnn", clients=4, rounds=1, batch_size=16, seed=0, auxiliary_samples=50)
    world = build_world(config)
    attack = Inconsistency(InconsistencyParams(target_client=2))
    hooks = compose([SecAggPlus(SecAggPlusParams(neighbours=2))], world)
    hooks.install(attack.prepare(AttackerKnowledge.of(world)), 0)
    assert isinstance(hooks.client_config, ConfigIsolation)
    record = FedAvgSimulation(world, hooks).run_round(0)
    view = record.server_view
    assert view.uploads is None
    truth = record.client_updates[2]
    assert all(record.client_updates[c].abs().max() == 0 for c in (0, 1, 3))  # lr = 0: nothing moved
    assert (isolated_update(view, 2) - truth).abs().max() < 1e-3 < truth.abs().max()
    output = attack.reconstruct(view, AttackerKnowledge.of(world))
    assert output.target_clients == (2,) and output.labels is not None and output.diagnostics["isolated"] == 1.0


def session_processes(session: int) -> list[str]:
    """Processes still in ``session`` (a Ray or Flower daemon the run started would be)."""
    table = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True).stdout.splitlines()
    return [line.strip() for line in table if len(parts := line.split(None, 2)) >= 2 and int(parts[1]) == session]


@pytest.mark.slow
def test_ray_backed_run_simulation_records_and_leaves_no_process(tmp_path):
    recording = tmp_path / "recording"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(APP)}
    run = subprocess.Popen([sys.executable, str(APP / "run.py"), "--out", str(recording), "--backend", "ray"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _, stderr = run.communicate(timeout=900)
    assert run.returncode == 0, stderr[-3000:]
    loaded = load_recording(recording)
    assert loaded.finished and all(r.canary is not None for r in loaded.rounds)
    assert len(loaded.rounds[0].nodes) == 6 and all(r.aggregation == "per_client" for r in loaded.rounds)
    for _ in range(30):  # Ray's workers may take a moment to exit after its driver
        if not (left := session_processes(run.pid)):
            break
        time.sleep(1)
    assert not left, f"processes left behind: {left}"


def test_unscored_peer_cell_goes_through_the_run_and_the_scorecard(federation, tmp_path):
    """The canary's curious-client attack on its peers: a cell of risk ``unscored`` (no null
    ran, no targets to count), not a failed job nor an invalid scorecard."""
    from flaudit.auditor.cli import main

    app, path = federation
    config = tmp_path / "audit.toml"
    text = (APP / "audit.toml").read_text().replace('"runs/flower-app/recording"', json.dumps(str(path)))
    config.write_text(text[: text.index("[[attack]]")] + '[[attack]]\nname = "peer"\n')
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "out")]) == 0
    card = json.loads((tmp_path / "out" / "scorecard.json").read_text())
    (cell,) = card["cells"]
    assert cell["status"] == "ok" and cell["runs"][0]["unscored"].startswith("no ground truth")
    assert "| peer | **unscored** |" in (tmp_path / "out" / "summary.md").read_text()
