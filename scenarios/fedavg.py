"""FedAvg over an FLWorld: sampled clients train locally, uploads pass the defenses, the
server aggregates, and every round is reported to observers as a ``RoundRecord``.

Records are handed to observers and then dropped (a round of 100 ResNet updates is gigabytes),
so whoever needs a round's views (the auditor, a test) subscribes for it.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from flaudit.core.progress import tqdm

from flaudit.scenarios.client import accuracy, make_loader, train_client
from flaudit.scenarios.datasets import ImageDataset
from flaudit.scenarios.hooks import FLHooks, ObservingServer
from flaudit.scenarios.scenario import FLWorld, derive_seed
from flaudit.scenarios.updates import ParamLayout
from flaudit.scenarios.views import ClientTrace, ClientUpload, PeerView, ServerView


@dataclass(frozen=True)
class RoundRecord:
    """Everything about one round: the server's view, and ground truth for scoring only.

    ``train_data`` is the federation's training set (a reference, not a copy): the clients' own
    data are slices of it, and a peer view carries its client's slice."""

    server_view: ServerView
    model_after: nn.Module
    client_updates: dict[int, torch.Tensor]  # each client's own update, before transforms
    ground_truth: dict[int, ClientTrace]
    test_accuracy: float
    train_data: ImageDataset

    @property
    def round_index(self) -> int:
        return self.server_view.round_index

    @property
    def participants(self) -> tuple[int, ...]:
        return self.server_view.participants

    def peer_view(self, client_id: int, participants_known: bool = True) -> PeerView:
        view = self.server_view
        position = view.participants.index(client_id)
        return PeerView(
            round_index=view.round_index,
            client_id=client_id,
            model_before=view.model,
            model_after=self.model_after,
            layout=view.layout,
            training=view.training,
            own_update=self.client_updates[client_id],
            own_num_samples=view.num_samples[position],
            own_data=self.train_data.subset(self.ground_truth[client_id].sample_indices),
            num_participants=len(view.participants) if participants_known else None,
        )


@dataclass(frozen=True)
class RoundSummary:
    round_index: int
    participants: tuple[int, ...]
    test_accuracy: float
    seconds: float


@dataclass
class SimulationResult:
    rounds: list[RoundSummary] = field(default_factory=list)
    model: nn.Module | None = None

    @property
    def final_test_accuracy(self) -> float:
        return self.rounds[-1].test_accuracy

    def to_json(self) -> dict:
        return {
            "rounds": len(self.rounds),
            "final_test_accuracy": self.final_test_accuracy,
            "test_accuracy": [r.test_accuracy for r in self.rounds],
            "seconds": sum(r.seconds for r in self.rounds),
        }


Observer = Callable[[RoundRecord], None]


def run_rounds(simulation: Any, rounds: int, observers: Iterable[Callable[[Any], None]] = (),
               progress: bool = True, desc: str = "rounds") -> SimulationResult:
    """Runs ``rounds`` rounds of any kind's simulation (its ``run_round(i)`` returns a record
    with ``participants`` and ``test_accuracy``), telling each observer every record."""
    observers = list(observers)
    result = SimulationResult()
    bar = tqdm(range(rounds), desc=desc, unit="round", disable=not progress)
    for round_index in bar:
        began = time.perf_counter()
        record = simulation.run_round(round_index)
        for observe in observers:
            observe(record)
        result.rounds.append(RoundSummary(round_index, record.participants, record.test_accuracy,
                                          time.perf_counter() - began))
        bar.set_postfix(test_acc=f"{record.test_accuracy:.3f}")
    return result


class FedAvgSimulation:
    """Runs FedAvg rounds on ``world`` with the given defense / malicious-server hooks."""

    def __init__(self, world: FLWorld, hooks: FLHooks | None = None) -> None:
        self.world = world
        self.hooks = hooks or FLHooks()
        self.model = world.new_model()
        for prepare in self.hooks.model_preparers:
            self.model = prepare(self.model)

    def sample_clients(self, round_index: int) -> tuple[int, ...]:
        cfg = self.world.config
        count = max(1, round(cfg.sample_fraction * cfg.clients))
        rng = np.random.default_rng(derive_seed(cfg.seed, 3, round_index))
        return tuple(sorted(int(c) for c in rng.choice(cfg.clients, size=count, replace=False)))

    def run_round(self, round_index: int) -> RoundRecord:
        world, hooks, cfg = self.world, self.hooks, self.world.config
        if hooks.server_model is not None:
            self.model = hooks.server_model.before_round(round_index, self.model)
        sent = self.model
        layout = ParamLayout.of(sent)
        start = layout.flatten(sent)
        train = world.data.train
        participants = self.sample_clients(round_index)
        uploads, own_updates, traces, sent_training = [], {}, {}, {}
        for client_id in participants:
            spec = sent_training[client_id] = hooks.training_for(client_id, round_index, cfg.training)
            indices = world.clients[client_id].train_indices
            loader = make_loader(
                train.images[indices], train.labels[indices], indices, cfg.batch_size,
                derive_seed(cfg.seed, 4, round_index, client_id),
            )
            adversary = hooks.adversarial_clients.get(client_id)
            if adversary is None:
                local, trace = train_client(client_id, round_index, sent, loader, spec, hooks.training_wrappers)
            else:
                local, trace = adversary.local_update(client_id, round_index, sent, loader, spec)
            update = layout.check(layout.flatten(local) - start, f"client {client_id}'s update")
            own_updates[client_id] = update
            for transform in hooks.update_transforms:
                update = transform.transform(client_id, round_index, update, layout)
                layout.check(update, f"client {client_id}'s transformed update")
            uploads.append(ClientUpload(client_id, len(indices), update))
            traces[client_id] = trace
        outcome = hooks.aggregator.aggregate(round_index, uploads)
        mean_update = layout.check(outcome.mean_update, "aggregated update")
        after = copy.deepcopy(sent)
        layout.load(after, start + mean_update)
        self.model = after
        view = ServerView(
            round_index=round_index,
            model=sent,
            layout=layout,
            training=cfg.training,
            participants=participants,
            num_samples=tuple(u.num_samples for u in uploads),
            uploads=tuple(uploads) if outcome.individual_updates_visible else None,
            aggregate=mean_update,
            transcript=outcome.transcript,
            client_training=sent_training if hooks.client_config is not None else None,
        )
        if isinstance(hooks.server_model, ObservingServer):
            hooks.server_model.observe(view)
        test = world.test_set
        return RoundRecord(view, after, own_updates, traces, accuracy(after, test.images, test.labels), train)

    def run(self, observers: Iterable[Observer] = (), progress: bool = True) -> SimulationResult:
        result = run_rounds(self, self.world.config.rounds, observers, progress, "FedAvg rounds")
        result.model = self.model
        return result
