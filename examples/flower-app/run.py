"""Runs the example federation:
``python run.py --out DIR [--backend local|ray] [--secagg [--red-team]] [--attack rtf|scale_mia] [--dp]``.

``local``: Flower's ServerApp and ClientApp on flaudit's in-process grid (seconds, no daemons).
``ray``: ``flwr.simulation.run_simulation`` (Ray backend, one CPU per client).
``--secagg``: the legacy-API app under SecAgg+ (secagg_app.py); ``--red-team``: its server
isolates the canary (on the local grid, whose node ids the red team knows).
``--attack``: the red-team federation, whose server crafts the model with flaudit's RTF or
Scale-MIA (redteam_app.py; with ``--secagg`` through SecAgg+); its rounds are then scored
against the canary's batches and the attack's nulls, printed and written to DIR/red-team.json.
``--dp``: the red-team federation's data under Flower's DP (dp_app.py).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path


def app_module(args: argparse.Namespace) -> str:
    if args.dp:
        return "dp_app"
    if args.secagg:
        return "secagg_app"
    return "redteam_app" if args.attack else "flower_app"


def score(app, out: Path) -> None:
    """The red team's rounds scored like audit cells (redteam_scoring), printed and saved."""
    from flaudit.integrations.flower.redteam_scoring import score_red_team
    from flaudit.scenarios.scenario import ScenarioConfig

    fed = app.FEDERATION
    config = ScenarioConfig(kind="recorded", recording=out, dataset=fed["dataset"], model=fed["model"], rounds=fed["rounds"],
                            seed=fed["seed"])
    results = score_red_team(app.last_strategy[0].crafter, config)
    for result in results:
        m = result.metrics
        print(f"round {result.server_round}: the canary's {m['n_targets']} images: recovered {m['recovery_rate']:.3f} "
              f"({m['n_recovered']}), null {m['null_recovery_rate']:.3f} ({result.result.null}), leakage {m['leakage']:.3f}"
              + (f" - {result.result.diagnostics['failure']}" if "failure" in result.result.diagnostics else ""))
    document = [{"server_round": r.server_round, **{k: v for k, v in r.result.items() if k != "grid_png"}} for r in results]
    (out / "red-team.json").write_text(json.dumps(document, indent=1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/flower-app/recording", help="the recording folder (must not hold one)")
    parser.add_argument("--backend", choices=("local", "ray"), default="local")
    parser.add_argument("--secagg", action="store_true", help="SecAgg+ (Flower's legacy API)")
    parser.add_argument("--red-team", action="store_true", help="with --secagg: the server isolates the canary")
    parser.add_argument("--attack", choices=("rtf", "scale_mia"), help="the server crafts the model with this attack")
    parser.add_argument("--dp", action="store_true", help="Flower's central DP with its accountant, and LocalDpMod")
    args = parser.parse_args(argv)
    if args.red_team and not (args.secagg and args.backend == "local"):
        parser.error("--red-team needs --secagg and the local backend")
    if sum(map(bool, (args.red_team, args.attack, args.dp))) > 1:
        parser.error("choose one of --red-team, --attack and --dp")
    if args.attack and args.backend != "local":
        parser.error("--attack scores the red team in this process: use the local backend")
    out = Path(args.out).resolve()
    os.environ["FLOWER_APP_RED_TEAM"] = "1" if args.red_team else "0"
    os.environ["FLOWER_APP_ATTACK"] = args.attack or ""
    os.environ["FLOWER_APP_FEDERATION"] = "red-team" if args.attack or args.dp else "honest"
    os.environ["FLOWER_APP_RECORDING"] = str(out)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    here = str(Path(__file__).resolve().parent)
    sys.path.insert(0, here)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))  # Ray workers import the app
    app = importlib.import_module(app_module(args))
    clients = app.FEDERATION["clients"]
    if args.backend == "local":
        from flaudit.integrations.flower.grid import run_local

        run_local(app.server_app, app.client_app, clients)
    else:
        from flwr.simulation import run_simulation

        run_simulation(app.server_app, app.client_app, num_supernodes=clients,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    if args.attack:
        score(app, out)


if __name__ == "__main__":
    main()
