"""Runs the example federation: ``python run.py --out DIR [--backend local|ray] [--secagg [--red-team]]``.

``local``: Flower's ServerApp and ClientApp on flaudit's in-process grid (seconds, no daemons).
``ray``: ``flwr.simulation.run_simulation`` (Ray backend, one CPU per client).
``--secagg``: the legacy-API app under SecAgg+ (secagg_app.py); ``--red-team``: its server
isolates the canary (on the local grid, whose node ids the red team knows).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/flower-app/recording", help="the recording folder (must not hold one)")
    parser.add_argument("--backend", choices=("local", "ray"), default="local")
    parser.add_argument("--secagg", action="store_true", help="SecAgg+ (Flower's legacy API)")
    parser.add_argument("--red-team", action="store_true", help="with --secagg: the server isolates the canary")
    args = parser.parse_args(argv)
    if args.red_team and not (args.secagg and args.backend == "local"):
        parser.error("--red-team needs --secagg and the local backend")
    os.environ["FLOWER_APP_RED_TEAM"] = "1" if args.red_team else "0"
    os.environ["FLOWER_APP_RECORDING"] = str(Path(args.out).resolve())
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    here = str(Path(__file__).resolve().parent)
    sys.path.insert(0, here)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))  # Ray workers import the app
    import flower_app

    app = importlib.import_module("secagg_app" if args.secagg else "flower_app")
    clients = flower_app.FEDERATION["clients"]
    if args.backend == "local":
        from flaudit.integrations.flower.grid import run_local

        run_local(app.server_app, app.client_app, clients)
    else:
        from flwr.simulation import run_simulation

        run_simulation(app.server_app, app.client_app, num_supernodes=clients,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})


if __name__ == "__main__":
    main()
