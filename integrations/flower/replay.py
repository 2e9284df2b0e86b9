"""The ``recorded`` scenario kind: a federation's recorded rounds replayed to the attacks.

``[scenario] kind = "recorded"``, ``recording = "DIR"``, ``model`` (the architecture whose
state-dict names or order the recorded arrays follow), ``dataset`` (the server's evaluation data:
its test split measures the replayed global models; ``auxiliary_samples`` of its train split are
the attacker's auxiliary data). Each replayed round's ``ServerView`` holds what the server saw:
the model it sent, the training config it sent (what the attacks assume), the per-client
updates, or only the aggregate where secure aggregation hid them. Client ids are the recording's
nodes with the canary first (id 0), so attacks that target the first participant target the
canary, and a curious-client attack is the canary's. Ground truth is the canary's own batches;
no other client's data exists here, so outputs about other clients are shown unscored.

A recording is what it is: defenses cannot be added to it (every column but ``none`` is not
applicable), nor can a malicious server re-send a crafted model (the red-team strategy in
``flaudit.integrations.flower.redteam`` does that in the live federation).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from flaudit.core.errors import ConfigError
from flaudit.integrations.flower.dp import findings
from flaudit.integrations.flower.recording import (
    Arrays, Recording, RecordedRound, RecordingError, TrainingKeys, load_recording, read_manifest,
)
from flaudit.scenarios.client import accuracy, train_client
from flaudit.scenarios.datasets import DataOptions, DatasetSplits, ImageDataset, load_dataset
from flaudit.scenarios.fedavg import RoundRecord
from flaudit.scenarios.hooks import FLHooks, WeightedMeanAggregator
from flaudit.scenarios.kinds import ScenarioKind
from flaudit.scenarios.scenario import ClientData, FLWorld, ScenarioConfig, derive_seed
from flaudit.scenarios.updates import ParamLayout
from flaudit.scenarios.views import ClientTrace, ClientUpload, PeerView, ServerView, TrainingSpec

TRAINING_FIELDS = ("lr", "epochs", "batch_size", "momentum", "weight_decay")


@dataclass(frozen=True)
class RecordedWorld(FLWorld):
    recording: Recording | None = None
    node_ids: tuple[int, ...] = ()  # client id -> the recording's node id (the canary first)
    canary_samples: dict[int, torch.Tensor] = field(default_factory=dict)  # round index -> indices into data.train


def training_spec(recording: Recording, config: dict, fallback: TrainingSpec) -> TrainingSpec:
    """The local training a node was told to run: its config's values, else the app's fixed
    ``training_defaults``, else the scenario's."""
    return spec_from_config(config, recording.training_keys, recording.training_defaults, fallback)


def spec_from_config(config: Mapping[str, Any], keys: TrainingKeys, defaults: Mapping[str, Any],
                     fallback: TrainingSpec) -> TrainingSpec:
    """The ``TrainingSpec`` a config the server sent names (``keys``), else ``defaults``, else ``fallback``."""
    values = {}
    for name in TRAINING_FIELDS:
        value = config.get(getattr(keys, name), defaults.get(name, getattr(fallback, name)))
        values[name] = int(value) if name in ("epochs", "batch_size") else float(value)
    return TrainingSpec(**values)


def _node_order(recording: Recording) -> tuple[int, ...]:
    nodes = sorted({n.node_id for r in recording.rounds for n in r.nodes})
    canaries = {r.canary.node_id for r in recording.rounds if r.canary is not None}
    if len(canaries) > 1:
        raise RecordingError(f"the recording has canaries on nodes {sorted(canaries)}; one canary node per recording")
    return tuple(sorted(nodes, key=lambda n: (n not in canaries, n)))


def build_recorded_world(config: ScenarioConfig) -> RecordedWorld:
    if config.recording is None:
        raise ConfigError('scenario.kind="recorded" needs scenario.recording = "DIR" (a folder RecordingStrategy wrote)')
    if config.logit_options:
        raise ConfigError('scenario.logit_options is set, but kind="recorded" replays shared updates, not logits')
    recording = load_recording(config.recording)
    if config.rounds > len(recording.rounds):
        raise ConfigError(
            f"scenario.rounds={config.rounds}, but the recording {config.recording} holds {len(recording.rounds)} "
            f"rounds; set scenario.rounds = {len(recording.rounds)} (or fewer)"
        )
    data = load_dataset(config.dataset, DataOptions(config.data_root, config.image_size, config.max_samples, config.seed))
    if config.auxiliary_samples > len(data.train):
        raise ConfigError(f"scenario.auxiliary_samples={config.auxiliary_samples} exceeds the {len(data.train)} samples of {config.dataset}")
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(derive_seed(config.seed, 1)))
    auxiliary = data.train.subset(order[: config.auxiliary_samples].sort().values)
    images, labels, canary_samples, offset = [auxiliary.images], [auxiliary.labels], {}, len(auxiliary)
    for index, recorded in enumerate(recording.rounds[: config.rounds]):
        if recorded.canary is None:
            continue
        canary = torch.from_numpy(recorded.canary.images)
        if tuple(canary.shape[1:]) != data.train.image_shape:
            raise RecordingError(
                f"round {recorded.round}: the canary's images are {tuple(canary.shape[1:])}, "
                f"but scenario.dataset={config.dataset!r} has images of {data.train.image_shape}"
            )
        images.append(canary)
        labels.append(torch.from_numpy(recorded.canary.labels))
        canary_samples[index] = torch.arange(offset, offset + len(canary))
        offset += len(canary)
    train = ImageDataset(f"{config.dataset} (canary)", torch.cat(images), torch.cat(labels), data.train.classes)
    nodes = _node_order(recording)
    first = recording.rounds[0]
    sent = first.node(nodes[0]).config
    spec = training_spec(recording, sent, config.training)
    replayed = config.replace(
        clients=len(nodes), lr=spec.lr, local_epochs=spec.epochs, batch_size=spec.batch_size,
        momentum=spec.momentum, weight_decay=spec.weight_decay,
    )
    everyone = torch.cat(list(canary_samples.values())) if canary_samples else torch.empty(0, dtype=torch.long)
    empty = torch.empty(0, dtype=torch.long)
    clients = tuple(ClientData(i, everyone if i == 0 and canary_samples else empty, empty) for i in range(len(nodes)))
    world = RecordedWorld(replayed, DatasetSplits(train, data.test), clients, torch.arange(len(auxiliary)),
                          recording, nodes, canary_samples)
    load_arrays(world.new_model(), first.global_arrays, "the recording's global model")  # fail early on a wrong model
    return world


def load_arrays(model: nn.Module, arrays: Arrays, what: str) -> nn.Module:
    """Writes recorded arrays into ``model``: by state-dict name, or by position when the
    recording names them "0", "1", ... (Flower's legacy API ships unnamed ndarray lists)."""
    state = model.state_dict()
    if all(key.isdigit() for key in arrays):
        if len(arrays) != len(state):
            raise RecordingError(f"{what} has {len(arrays)} arrays; the model's state dict has {len(state)}")
        arrays = {name: arrays[str(i)] for i, name in enumerate(state)}
    missing, unexpected = sorted(set(state) - set(arrays)), sorted(set(arrays) - set(state))
    if missing or unexpected:
        raise RecordingError(
            f"{what} does not fit scenario.model: missing {missing[:3]}, unexpected {unexpected[:3]} "
            "(choose the model the federation trained)"
        )
    with torch.no_grad():
        for name, value in state.items():
            array = torch.from_numpy(np.asarray(arrays[name]))
            if tuple(array.shape) != tuple(value.shape):
                raise RecordingError(f"{what}: {name!r} is {tuple(array.shape)}, the model's is {tuple(value.shape)}")
            value.copy_(array.to(value.dtype))
    return model


def rejects_defenses(hooks: FLHooks) -> str | None:
    added = hooks.training_wrappers or hooks.update_transforms or hooks.model_preparers
    if added or not isinstance(hooks.aggregator, WeightedMeanAggregator):
        return ("a recorded federation ran with the defenses it had; flaudit cannot add one to it "
                "(audit its recording in the `none` column)")
    return None


def refuses(attack: type, config: ScenarioConfig, attacked_round: int) -> str | None:
    """Attacks a recorded round cannot serve: those that craft the model it was sent, and those
    that need each client's update where the recording holds only the aggregate."""
    if getattr(attack, "crafts_model", False):
        return ("a recorded round cannot be re-sent the model this attack crafts; red-team the live "
                "federation instead (flaudit.integrations.flower.redteam)")
    if getattr(attack, "needs_individual_updates", False) and config.recording is not None:
        rounds = read_manifest(config.recording)["rounds"]
        if attacked_round < len(rounds) and rounds[attacked_round]["aggregation"] == "aggregate_only":
            return (f"{attack.name} needs each client's update; recorded round {rounds[attacked_round]['round']} "
                    "holds only the aggregate (secure aggregation)")
    return None


def canary_trace(world: RecordedWorld, round_index: int, recorded: RecordedRound) -> ClientTrace:
    samples = world.canary_samples[round_index]
    batch = torch.from_numpy(recorded.canary.batch)
    batches = tuple(samples[batch == b] for b in range(int(batch.max()) + 1)) if len(batch) else ()
    return ClientTrace(0, samples, batches)


def replay_canary(world: RecordedWorld, model: nn.Module, trace: ClientTrace, spec: TrainingSpec) -> nn.Module:
    """The canary's local training re-run on its recorded batches (every step, in order): its
    own update, which it knows even where secure aggregation hides it from the server."""
    train = world.data.train
    loader = [(train.images[b], train.labels[b], b) for b in trace.batches]
    once = TrainingSpec(1, spec.batch_size, spec.lr, spec.momentum, spec.weight_decay)
    local, _ = train_client(0, -1, model, loader, once, [])
    return local


class RecordedSimulation:
    """Replays the recorded rounds as ``RoundRecord``s; ``hooks`` must be empty (the kind's
    ``rejects`` keeps defenses out), and a malicious server's model hook cannot act on the past."""

    def __init__(self, world: RecordedWorld, hooks: FLHooks | None = None) -> None:
        if hooks is not None and hooks.server_model is not None:  # the kind's `refuses` keeps such attacks out
            raise ConfigError("a recorded round cannot be re-sent with a crafted model")
        # A client-config hook (the inconsistency attack) is not needed: the recording holds the
        # config the server sent each node, and the view shows it.
        self.world = world

    def run_round(self, round_index: int) -> RoundRecord:
        world, recording = self.world, self.world.recording
        recorded = recording.rounds[round_index]
        model = load_arrays(world.new_model(), recorded.global_arrays, f"round {recorded.round}'s global model")
        layout = ParamLayout.of(model)
        start = layout.flatten(model)
        client_of = {node: i for i, node in enumerate(world.node_ids)}
        nodes = sorted(recorded.nodes, key=lambda n: client_of[n.node_id])
        participants = tuple(client_of[n.node_id] for n in nodes)
        specs = {client_of[n.node_id]: training_spec(recording, n.config, world.config.training) for n in nodes}
        ground_truth = {0: canary_trace(world, round_index, recorded)} if recorded.canary is not None else {}
        uploads, client_updates, num_samples, sent_differs = [], {}, [], []
        for node, client in zip(nodes, participants):
            sent = model
            if node.sent is not None:
                sent = load_arrays(world.new_model(), node.sent, f"round {recorded.round}'s model for node {node.node_id}")
                sent_differs.append(client)
            count = node.num_examples
            if count is None and client in ground_truth:
                count = len(ground_truth[client].sample_indices)
            if count is None:
                raise RecordingError(f"round {recorded.round}: node {node.node_id}'s reply carries no num_examples")
            num_samples.append(count)
            if node.reply is not None:
                after = load_arrays(world.new_model(), node.reply, f"round {recorded.round}'s reply of node {node.node_id}")
                update = layout.check(layout.flatten(after) - layout.flatten(sent), f"node {node.node_id}'s update")
                uploads.append(ClientUpload(client, count, update))
                client_updates[client] = update
            elif client in ground_truth:
                local = replay_canary(world, sent, ground_truth[client], specs[client])
                client_updates[client] = layout.flatten(local) - layout.flatten(sent)
        if recorded.aggregate is None:
            raise RecordingError(f"round {recorded.round}: the strategy returned no aggregate")
        after = load_arrays(world.new_model(), recorded.aggregate, f"round {recorded.round}'s aggregate")
        visible = recorded.aggregation == "per_client" and len(uploads) == len(nodes)
        view = ServerView(
            round_index=round_index,
            model=model,
            layout=layout,
            training=specs[participants[0]],
            participants=participants,
            num_samples=tuple(num_samples),
            uploads=tuple(uploads) if visible else None,
            aggregate=layout.check(layout.flatten(after) - start, "the recorded aggregate"),
            transcript={
                "recorded_round": recorded.round, "aggregation": recorded.aggregation,
                "node_ids": [n.node_id for n in nodes], "sent_other_models": sent_differs,
            },
            client_training=specs if len(set(specs.values())) > 1 else None,
        )
        test = world.test_set
        return RoundRecord(view, copy.deepcopy(after), client_updates, ground_truth,
                           accuracy(after, test.images, test.labels), world.data.train)


def recorded_findings(config: ScenarioConfig) -> list[dict[str, Any]]:
    """The recorded federation's DP settings audited (``dp.findings``) over the replayed rounds."""
    manifest = read_manifest(config.recording)
    rounds = manifest["rounds"][: config.rounds]
    nodes = len({n["node_id"] for r in manifest["rounds"] for n in r["nodes"]})
    return [f.as_dict() for f in findings(manifest["settings"], len(rounds), nodes)]


# The kind, declared as the entry point ``recorded`` of group ``flaudit.scenario_kinds`` (setup.py).
RECORDED = ScenarioKind(build_recorded_world, RecordedSimulation, frozenset({ServerView, PeerView}), rejects_defenses,
                        refuses, "a real federation's recorded rounds (flaudit.integrations.flower)", recorded_findings)
