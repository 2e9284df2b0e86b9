"""Where defenses and a malicious server plug into a FedAvg round.

A round runs: ``ServerModelHook.before_round`` (a malicious server may rewrite parameters or,
where its threat model allows, the architecture) -> per client: local training through every
``TrainingWrapper`` (e.g. Opacus DP-SGD) -> every ``UpdateTransform`` on the flat update
(noise, compression) -> the ``Aggregator`` protocol (plain weighted mean, secure aggregation)
-> ``ObservingServer.observe`` (a server that learns from the round's view before the next).
An ``AdversarialClient`` (a client-side attack such as DMGAN) replaces one client's local
training; its upload then passes the same transforms and aggregator as everyone's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import torch
from torch import nn
from torch.utils.data import DataLoader

from flaudit.scenarios.updates import ParamLayout
from flaudit.scenarios.views import ClientTrace, ClientUpload, TrainingSpec


class TrainingWrapper(Protocol):
    """Wraps a client's model, optimizer and loader before local training (DP-SGD)."""

    def wrap(
        self, client_id: int, round_index: int, model: nn.Module, optimizer: torch.optim.Optimizer,
        loader: DataLoader,
    ) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]: ...

    def unwrap(self, client_id: int, model: nn.Module) -> nn.Module:
        """Returns the plain module whose state dict has the global model's keys."""
        ...


class UpdateTransform(Protocol):
    """Transforms one client's flat update before upload (noise, compression)."""

    def transform(
        self, client_id: int, round_index: int, update: torch.Tensor, layout: ParamLayout
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class AggregationOutcome:
    """The mean update to apply and what the protocol let the server see."""

    mean_update: torch.Tensor
    individual_updates_visible: bool
    transcript: dict[str, Any] = field(default_factory=dict)


class Aggregator(Protocol):
    def aggregate(self, round_index: int, uploads: Sequence[ClientUpload]) -> AggregationOutcome: ...


class ModelPreparer(Protocol):
    """Adapts the initial global model to a defense (e.g. Opacus replaces BatchNorm)."""

    def __call__(self, model: nn.Module) -> nn.Module: ...


class ServerModelHook(Protocol):
    """A server that prepares the model it sends (malicious: parameters or architecture)."""

    def before_round(self, round_index: int, model: nn.Module) -> nn.Module: ...


@runtime_checkable
class ObservingServer(Protocol):
    """A ``ServerModelHook`` that also learns from what it observed of each round (the
    ``ServerView``: the aggregate, the clients' sample counts), before it prepares the next: a
    server adapting its crafting to the federation (Scale-MIA's logit spread)."""

    def before_round(self, round_index: int, model: nn.Module) -> nn.Module: ...

    def observe(self, view: Any) -> None: ...


@runtime_checkable
class ClientConfigHook(Protocol):
    """A server that sends each client its own training config (what a deployment lets it do:
    Flower's strategies configure each node separately). A malicious one isolates a target by
    sending the others ``lr = 0`` (Pasquini et al., CCS 2022)."""

    def training_for(self, client_id: int, round_index: int, spec: TrainingSpec) -> TrainingSpec: ...


@runtime_checkable
class AdversarialClient(Protocol):
    """A participant that trains its own way instead of honestly (client-side attacks). It gets
    what an honest client gets and returns the model it uploads and the batches of its own
    data it used. It follows no client-side defense (a malicious client skips DP-SGD)."""

    def local_update(
        self, client_id: int, round_index: int, model: nn.Module, loader: DataLoader, spec: TrainingSpec
    ) -> tuple[nn.Module, ClientTrace]: ...


class WeightedMeanAggregator:
    """Plain FedAvg: the sample-count weighted mean, with every upload visible to the server."""

    def aggregate(self, round_index: int, uploads: Sequence[ClientUpload]) -> AggregationOutcome:
        total = sum(u.num_samples for u in uploads)
        mean = torch.zeros_like(uploads[0].update)
        for upload in uploads:
            mean.add_(upload.update, alpha=upload.num_samples / total)
        return AggregationOutcome(mean, individual_updates_visible=True)


@dataclass
class FLHooks:
    """The hooks of one simulation; empty lists and the plain aggregator mean no defense."""

    training_wrappers: list[TrainingWrapper] = field(default_factory=list)
    update_transforms: list[UpdateTransform] = field(default_factory=list)
    aggregator: Aggregator = field(default_factory=WeightedMeanAggregator)
    server_model: ServerModelHook | None = None
    model_preparers: list[ModelPreparer] = field(default_factory=list)
    adversarial_clients: dict[int, AdversarialClient] = field(default_factory=dict)  # client id -> it
    client_config: ClientConfigHook | None = None

    def training_for(self, client_id: int, round_index: int, spec: TrainingSpec) -> TrainingSpec:
        """The config the server sends ``client_id`` (the scenario's, unless a hook changes it)."""
        return spec if self.client_config is None else self.client_config.training_for(client_id, round_index, spec)

    def install(self, hook: ServerModelHook | AdversarialClient | ClientConfigHook | None, attacker_client: int) -> None:
        """Puts what an attack prepared in its slot: an adversarial client replaces
        ``attacker_client``'s training, a client-config hook sets each client's config; anything
        else is the server's model hook."""
        if isinstance(hook, AdversarialClient):
            self.adversarial_clients[attacker_client] = hook
        elif isinstance(hook, ClientConfigHook):
            self.client_config = hook
        else:
            self.server_model = hook
