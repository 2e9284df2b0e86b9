"""The round every logit-sharing protocol shares.

Each client keeps its own model. A round, in FedMD's order: every client digests the previous
round's consensus on the public set (the protocol's ``distillation_loss``; in the first round
it learns what ``before_first_round`` says instead), revisits its private data (the scenario's
local training, through the defenses' training wrappers, e.g. DP-SGD) and uploads its logits on
the public set; the server turns them into the consensus (the protocol's ``aggregate``). Test
accuracy is the clients' mean after their private training.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from flaudit.scenarios.client import accuracy, make_loader, train_client
from flaudit.core.tables import bounded
from flaudit.core.errors import ConfigError
from flaudit.scenarios.hooks import FLHooks, WeightedMeanAggregator
from flaudit.scenarios.logit_sharing.world import PROTOCOL_STREAM, LogitOptions, LogitWorld, build_logit_world, parse_options
from flaudit.scenarios.scenario import ScenarioConfig, derive_seed
from flaudit.scenarios.views import ClientTrace, LogitView

PUBLIC_STEP = 1  # derive_seed(seed, PROTOCOL_STREAM, PUBLIC_STEP, step, client): public-set batch order
PREDICT_BATCH = 512

PublicLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (outputs, public indices) -> loss


@dataclass(frozen=True)
class LogitRoundRecord:
    """One round: the server's view (the logits), and ground truth for scoring only."""

    logit_view: LogitView
    ground_truth: dict[int, ClientTrace]
    test_accuracy: float

    @property
    def round_index(self) -> int:
        return self.logit_view.round_index

    @property
    def participants(self) -> tuple[int, ...]:
        return tuple(sorted(self.logit_view.client_logits))


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits of ``model`` on ``images`` in eval mode, on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits = torch.cat([model(images[i : i + PREDICT_BATCH].to(device)).cpu() for i in range(0, len(images), PREDICT_BATCH)])
    model.train(was_training)
    return logits


class LogitSharingSimulation(ABC):
    """Runs a logit-sharing protocol on a ``LogitWorld``; ``run_round`` gives its records."""

    kind: ClassVar[str]
    summary: ClassVar[str]  # one line for `flaudit list`
    Options: ClassVar[type] = LogitOptions
    labelled_public: ClassVar[bool] = True

    def __init__(self, world: LogitWorld, hooks: FLHooks | None = None) -> None:
        self.world = world
        self.hooks = hooks or FLHooks()
        if (misfit := self.rejects(self.hooks)) is not None:
            raise ConfigError(misfit)
        self.options = parse_options(self.Options, world.config)
        self.consensus: torch.Tensor | None = None
        self.models = []
        for _ in world.clients:
            model = world.new_model()
            for prepare in self.hooks.model_preparers:
                model = prepare(model)
            self.models.append(model)

    @classmethod
    def rejects(cls, hooks: FLHooks) -> str | None:
        """Why ``hooks`` cannot act on this protocol's rounds, or None: only client-side
        training wrappers (DP-SGD) can, as there are no updates to transform or aggregate."""
        misfits = {
            "update transforms": bool(hooks.update_transforms),
            "an aggregation protocol": not isinstance(hooks.aggregator, WeightedMeanAggregator),
            "a malicious server model": hooks.server_model is not None,
            "an adversarial client": bool(hooks.adversarial_clients),
        }
        found = [name for name, present in misfits.items() if present]
        if not found:
            return None
        return (f"kind={cls.kind!r} shares logits, not parameter updates: {found[0]} cannot act on it "
                "(only client-side training defenses such as DP-SGD apply)")

    @classmethod
    def build_world(cls, config: ScenarioConfig) -> LogitWorld:
        return build_logit_world(config, parse_options(cls.Options, config), cls.labelled_public)

    @abstractmethod
    def aggregate(self, round_index: int, logits: dict[int, torch.Tensor]) -> torch.Tensor:
        """The consensus logits ``[N_public, classes]`` the server sends back."""

    @abstractmethod
    def distillation_loss(self, consensus: torch.Tensor) -> PublicLoss:
        """How a client learns the consensus on a batch of the public set."""

    def before_first_round(self, client_id: int) -> None:
        """What a client learns from the public set before the first round (default: nothing)."""

    def train_on_public(self, model: nn.Module, loss: PublicLoss, epochs: int, seed: int) -> None:
        """``epochs`` of SGD over the shuffled public set (the scenario's lr and momentum)."""
        spec, images = self.world.config.training, self.world.public.images
        optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
        index = torch.arange(len(images))
        loader = make_loader(images, index, index, self.options.distill_batch_size, seed)
        device = next(model.parameters()).device
        model.train()
        for _ in range(epochs):
            for batch, rows, _ in loader:
                optimizer.zero_grad(set_to_none=True)
                loss(model(batch.to(device)), rows.to(device)).backward()
                optimizer.step()

    def public_seed(self, step: int, client_id: int) -> int:
        """Seeds a public-set pass: step 0 before the first round, else the round's index."""
        return derive_seed(self.world.config.seed, PROTOCOL_STREAM, PUBLIC_STEP, step, client_id)

    def run_round(self, round_index: int) -> LogitRoundRecord:
        world, cfg = self.world, self.world.config
        private = world.data.train
        traces = {}
        for client in world.clients:
            k = client.client_id
            if round_index == 0:
                self.before_first_round(k)
            else:
                self.train_on_public(self.models[k], self.distillation_loss(self.consensus),
                                     self.options.distill_epochs, self.public_seed(round_index, k))
            indices = client.train_indices
            loader = make_loader(
                private.images[indices], private.labels[indices], indices, cfg.batch_size,
                derive_seed(cfg.seed, 4, round_index, k),
            )
            self.models[k], traces[k] = train_client(
                k, round_index, self.models[k], loader, cfg.training, self.hooks.training_wrappers
            )
        logits = {k: predict(model, world.public.images) for k, model in enumerate(self.models)}
        self.consensus = self.aggregate(round_index, logits)
        test = world.test_set
        test_accuracy = sum(accuracy(m, test.images, test.labels) for m in self.models) / len(self.models)
        view = LogitView(round_index, world.public, world.target_labels, logits, self.consensus)
        return LogitRoundRecord(view, traces, test_accuracy)


@dataclass(frozen=True)
class LabelledPublicOptions(LogitOptions):
    public_epochs: int = bounded(2, min=0, doc="epochs on the labelled public set before the first round")


class LabelledPublicSimulation(LogitSharingSimulation):
    """A protocol whose clients start from the labelled public set (FedMD, FedGEMS)."""

    Options = LabelledPublicOptions

    def public_label_loss(self) -> PublicLoss:
        labels = self.world.public.labels
        return lambda outputs, rows: F.cross_entropy(outputs, labels[rows.cpu()].to(outputs.device))

    def before_first_round(self, client_id: int) -> None:
        if self.options.public_epochs:
            self.train_on_public(self.models[client_id], self.public_label_loss(), self.options.public_epochs,
                                 self.public_seed(0, client_id))
