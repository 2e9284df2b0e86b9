"""A small Flower app (flwr 1.42 message API) audited with flaudit: embedded digits, the
study's CNN, N clients on a Dirichlet split, FedAvg. The server wraps its strategy in
``RecordingStrategy``; client 0 is the consenting canary (``CanaryMod`` + ``log_batch``).

The data split and the model's initialisation are flaudit's (``build_world`` of the same
scenario table as ``audit-simulated.toml``), so flaudit can simulate this very federation and
the two audits compare cell by cell. Everything else is ordinary Flower code.

``FLOWER_APP_FEDERATION=red-team`` picks the red-team federation (redteam_app.py): a few
samples per client and one local step (the FedSGD regime the crafted-model attacks were
published for), the MLP whose hidden layer Scale-MIA crafts. This app lets the server choose
the architecture (``received_model``), which RTF's threat model needs; an app that builds its
own model is immune to RTF's imprint block (its clients reject the crafted state dict).
"""

from __future__ import annotations

import functools
import os

import torch
from torch import nn

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flaudit.integrations.flower import log_batch
from flaudit.integrations.flower.canary import CanaryMod
from flaudit.integrations.flower.crafting import ARCHITECTURE, MODULE_KEY, module_from_blob
from flaudit.integrations.flower.strategy import RecordingStrategy
from flaudit.scenarios.client import make_loader
from flaudit.scenarios.scenario import FLWorld, ScenarioConfig, build_world, derive_seed

RECORDING = os.environ.get("FLOWER_APP_RECORDING", "runs/flower-app/recording")
FEDERATIONS = {
    "honest": dict(dataset="digits", model="cnn", clients=6, rounds=2, local_epochs=1, batch_size=16, lr=0.05,
                   momentum=0.9, partition="dirichlet", alpha=0.5, auxiliary_samples=100, seed=0),
    "red-team": dict(dataset="digits", model="mlp", clients=4, rounds=2, local_epochs=1, batch_size=32, lr=0.05,
                     momentum=0.9, partition="iid", auxiliary_samples=200, max_samples=200 + 4 * 32, seed=0),
}
FEDERATION = FEDERATIONS[os.environ.get("FLOWER_APP_FEDERATION", "honest")]


@functools.cache
def federation() -> FLWorld:
    """The clients' shards (what each SuperNode would hold) and the initial model."""
    return build_world(ScenarioConfig(**FEDERATION))


def train_locally(model: nn.Module, partition: int, server_round: int, config: ConfigRecord) -> int:
    world = federation()
    indices = world.clients[partition].train_indices
    data = world.data.train
    loader = make_loader(data.images[indices], data.labels[indices], indices, int(config["batch-size"]),
                         derive_seed(FEDERATION["seed"], 4, server_round - 1, partition))
    optimizer = torch.optim.SGD(model.parameters(), lr=float(config["lr"]), momentum=float(config["momentum"]))
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(int(config["local-epochs"])):
        for images, labels, _ in loader:
            log_batch(images, labels)  # no-op unless this client is the canary of a recorded round
            optimizer.zero_grad()
            loss_fn(model(images), labels).backward()
            optimizer.step()
    return len(indices)


def received_model(content: RecordDict) -> nn.Module:
    """The model to train: the architecture the server sent, if it sent one (this app trusts the
    server with it), else the app's own; then the server's arrays."""
    if ARCHITECTURE in content.config_records:
        model = module_from_blob(content.config_records[ARCHITECTURE][MODULE_KEY])
    else:
        model = federation().new_model()
    model.load_state_dict(content["arrays"].to_torch_state_dict())
    return model


client_app = ClientApp(mods=[CanaryMod(RECORDING, partition_id=0)])


@client_app.train()
def train(message: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    model = received_model(message.content)
    config = message.content["config"]
    examples = train_locally(model, int(context.node_config["partition-id"]), int(config["server-round"]), config)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({"num-examples": examples})})
    return Message(content=content, reply_to=message)


@client_app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    world = federation()
    model = world.new_model()
    model.load_state_dict(message.content["arrays"].to_torch_state_dict())
    model.eval()
    test = world.test_set
    with torch.no_grad():
        correct = int((model(test.images).argmax(1) == test.labels).sum())
    metrics = MetricRecord({"accuracy": correct / len(test), "num-examples": len(test)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=message)


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    strategy = RecordingStrategy(FedAvg(fraction_train=1.0, fraction_evaluate=0.0), RECORDING)
    train_config = ConfigRecord({"lr": FEDERATION["lr"], "local-epochs": FEDERATION["local_epochs"],
                                 "batch-size": FEDERATION["batch_size"], "momentum": FEDERATION["momentum"]})
    strategy.start(grid, ArrayRecord(federation().new_model().state_dict()), num_rounds=FEDERATION["rounds"],
                   train_config=train_config)
