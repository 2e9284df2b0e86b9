"""The example federation under SecAgg+ (Flower's legacy API: ``SecAggPlusWorkflow`` and
``secaggplus_mod``), recorded with ``LegacyRecordingStrategy``; ``--red-team`` puts
``IsolatingStrategy`` inside it, a malicious server that isolates the canary's update from the
secure aggregate by sending every other node ``lr = 0`` (the inconsistency attack);
``FLOWER_APP_ATTACK=rtf|scale_mia`` puts ``LegacyCraftingStrategy`` there instead: the server
crafts the model and reads the canary's batches out of the SecAgg+ aggregate.
"""

from __future__ import annotations

import os

import torch
from flwr.app import Context
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid, ServerApp
from flwr.common import ndarrays_to_parameters

from flaudit.integrations.flower.canary import CanaryMod
from flaudit.integrations.flower.crafting import ARCHITECTURE, module_from_blob
from flaudit.integrations.flower.legacy import LegacyRecordingStrategy
from flaudit.integrations.flower.redteam import IsolatingStrategy, LegacyCraftingStrategy
from flower_app import FEDERATION, federation, train_locally
from redteam_app import ATTACK, new_crafter

RECORDING = os.environ.get("FLOWER_APP_RECORDING", "runs/flower-app/secagg-recording")
RED_TEAM = os.environ.get("FLOWER_APP_RED_TEAM", "") == "1"
# The server also sets SecAgg+'s precision (the clients take it from the setup stage). Flower's
# defaults scale each client's parameters by num_examples / max_weight (max_weight = 1000) and
# quantise them to 16 / 2**22: measured on this federation, RTF then recovers 21 of the canary's
# 32 images and Scale-MIA none; with max_weight = the largest client and 2**29 levels, 30 and 22,
# as without secure aggregation. Nothing in SecAgg+ binds these settings: the red team picks them.
CRAFTING_PRECISION = dict(max_weight=max(len(c.train_indices) for c in federation().clients), quantization_range=2**29)
CANARY_NODE = 1000  # the in-process grid's node of partition 0 (the canary); the red team isolates it


def weights(model: torch.nn.Module) -> list:
    return [value.detach().cpu().numpy() for value in model.state_dict().values()]


class DigitsClient(NumPyClient):
    def __init__(self, partition: int) -> None:
        self.partition = partition

    def fit(self, parameters, config):
        torch.set_num_threads(1)
        model = module_from_blob(config[ARCHITECTURE]) if ARCHITECTURE in config else federation().new_model()
        model.load_state_dict({k: torch.from_numpy(v) for k, v in zip(model.state_dict(), parameters)})
        examples = train_locally(model, self.partition, int(config["server-round"]), config)
        return weights(model), examples, {}


def client_fn(context: Context):
    return DigitsClient(int(context.node_config["partition-id"])).to_client()


client_app = ClientApp(client_fn=client_fn, mods=[CanaryMod(RECORDING, partition_id=0), secaggplus_mod])
server_app = ServerApp()
last_strategy: list = []  # the run's red-team strategy, for the caller to read what it isolated or crafted


def fit_config(server_round: int) -> dict:
    return {"server-round": server_round, "lr": FEDERATION["lr"], "local-epochs": FEDERATION["local_epochs"],
            "batch-size": FEDERATION["batch_size"], "momentum": FEDERATION["momentum"]}


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    initial = ndarrays_to_parameters(weights(federation().new_model()))
    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, on_fit_config_fn=fit_config, initial_parameters=initial)
    if RED_TEAM:
        strategy = IsolatingStrategy(strategy, lambda node_id: node_id == CANARY_NODE)
        last_strategy[:] = [strategy]
    elif ATTACK:
        strategy = LegacyCraftingStrategy(strategy, new_crafter())
        last_strategy[:] = [strategy]
    recorded = LegacyRecordingStrategy(strategy, RECORDING, num_rounds=FEDERATION["rounds"])
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=FEDERATION["rounds"]), strategy=recorded)
    DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(num_shares=FEDERATION["clients"] - 1, reconstruction_threshold=FEDERATION["clients"] // 2,
                                                    **(CRAFTING_PRECISION if ATTACK else {})))(grid, legacy)
