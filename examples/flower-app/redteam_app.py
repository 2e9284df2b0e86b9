"""The red team on the message API: the server crafts the model it sends with a flaudit
malicious-server attack (``FLOWER_APP_ATTACK=rtf`` or ``scale_mia``) and reads the clients'
batches out of the aggregate Flower returns. ``Recording(Crafting(FedAvg))``: the recording
holds the crafted models sent and the canary's batches, against which ``redteam_scoring``
scores the attack and its nulls. Run with ``FLOWER_APP_FEDERATION=red-team`` (flower_app.py).
"""

from __future__ import annotations

import os

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flaudit.auditor.attacks.base import AttackerKnowledge
from flaudit.auditor.attacks.registry import ATTACKS
from flaudit.integrations.flower.crafting import ModelCrafter
from flaudit.integrations.flower.redteam import CraftingStrategy
from flaudit.integrations.flower.strategy import RecordingStrategy
from flower_app import FEDERATION, RECORDING, client_app, federation  # noqa: F401 - client_app: the app this server drives

ATTACK = os.environ.get("FLOWER_APP_ATTACK", "")
# The red team's settings (TOML's [[attack]] tables): RTF calibrates its block on one client of
# the round's size (it learns the sizes: num_examples arrive unmasked) and lets the block's update
# reach 0.5, which keeps it above SecAgg+'s quantisation.
PARAMS = {"rtf": {"calibration_samples": 32, "max_update": 0.5}, "scale_mia": {}}
last_strategy: list = []  # the run's crafting strategy, for the caller to score


def new_crafter() -> ModelCrafter:
    """The red team: the attack named by FLOWER_APP_ATTACK with ``PARAMS``, knowing
    the training config it sends and its own auxiliary data (disjoint from every client's)."""
    world = federation()
    attack = ATTACKS.get(ATTACK)
    return ModelCrafter(attack.from_table(PARAMS.get(ATTACK, {})), AttackerKnowledge.of(world), world.new_model)


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    crafting = CraftingStrategy(FedAvg(fraction_train=1.0, fraction_evaluate=0.0), new_crafter())
    last_strategy[:] = [crafting]
    strategy = RecordingStrategy(crafting, RECORDING)
    train_config = ConfigRecord({"lr": FEDERATION["lr"], "local-epochs": FEDERATION["local_epochs"],
                                 "batch-size": FEDERATION["batch_size"], "momentum": FEDERATION["momentum"]})
    strategy.start(grid, ArrayRecord(federation().new_model().state_dict()), num_rounds=FEDERATION["rounds"],
                   train_config=train_config)
