"""The malicious server's model crafting for a live Flower federation: flaudit's own
malicious-server attacks (``rtf``, ``scale_mia``: their ``prepare`` hook) applied to the global
arrays Flower hands the strategy, and what the server then observes of the aggregate Flower
returns. Needs no Flower; the strategy wrappers in ``redteam`` call it.

Each round ``craft`` loads the global arrays into the model of the current architecture and
runs the attack's ``before_round`` (Scale-MIA rewrites parameters; RTF puts its imprint block in
front, a new architecture, which the clients can only train if their code accepts the one the
server sends: ``ARCHITECTURE``); ``observe`` turns Flower's aggregate into the ``ServerView``
the attack reads (the crafted model, the mean update, the unmasked sample counts, the training
config the server sent; a server that adapts its crafting, ``ObservingServer``, sees it too) or
into the attack's failure: a crafted model whose training diverged
(non-finite aggregate: clients would notice) or that no client trained.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from flaudit.auditor.running.jobs import DIVERGED
from flaudit.core.errors import InvalidUpdateError
from flaudit.integrations.flower.recording import Arrays
from flaudit.integrations.flower.replay import load_arrays
from flaudit.scenarios.hooks import ObservingServer
from flaudit.scenarios.updates import ParamLayout
from flaudit.scenarios.views import ServerView, TrainingSpec

ARCHITECTURE = "architecture"  # the config key (message API: a ConfigRecord) carrying a new architecture
MODULE_KEY = "torch-module"  # in that record: the pickled module (torch.save)
NOBODY_TRAINED = "no client trained the crafted model: every reply was an error (their code rejected it)"


def architecture_blob(model: nn.Module) -> bytes:
    """The crafted module as bytes, for clients that run the architecture the server sends."""
    buffer = io.BytesIO()
    torch.save(model, buffer)
    return buffer.getvalue()


def module_from_blob(blob: bytes) -> nn.Module:
    """The module the server sent: unpickling runs the server's code, which is exactly the trust
    an architecture-modifying attack (RTF) needs from a client; an app that builds its own model
    never calls this and is immune to it."""
    return torch.load(io.BytesIO(blob), weights_only=False)


@dataclass
class CraftedRound:
    """One attacked round as the malicious server saw it."""

    server_round: int  # Flower's, from 1
    sent: nn.Module  # the crafted model every node was sent
    node_ids: tuple[int, ...]  # the nodes whose replies were aggregated
    num_samples: tuple[int, ...]  # their num-examples (unmasked, even under SecAgg+)
    training: TrainingSpec  # the local training the server configured
    aggregate: torch.Tensor | None  # the flat mean update; None where the attack failed
    failure: str | None = None  # why it failed (DIVERGED, NOBODY_TRAINED)
    details: dict[str, Any] = field(default_factory=dict)


class ModelCrafter:
    """Runs ``attack``'s malicious-server hook on Flower's global arrays, round by round.

    ``new_model``: the app's model factory (the architecture the federation trains);
    ``knowledge``: what the red team knows (its auxiliary data, the training config it sends)."""

    def __init__(self, attack: Any, knowledge: Any, new_model: Callable[[], nn.Module]) -> None:
        if not getattr(attack, "crafts_model", False):
            raise ValueError(f"{attack.name} does not craft the server's model; use a malicious-server attack (rtf, scale_mia)")
        self.attack = attack
        self.knowledge = knowledge
        self.hook = attack.prepare(knowledge)
        self.model = new_model()  # the architecture of the current global arrays
        self.base_names = tuple(self.model.state_dict())
        self.pending: dict[int, nn.Module] = {}
        self.previous: dict[int, nn.Module] = {}  # the global model before crafting: where a failed round leaves the federation
        self.rounds: dict[int, CraftedRound] = {}

    def craft(self, server_round: int, arrays: Arrays) -> nn.Module:
        """The model to send in ``server_round``, crafted from the global ``arrays``."""
        load_arrays(self.model, arrays, f"round {server_round}'s global arrays")
        self.previous[server_round] = copy.deepcopy(self.model)  # the hook may craft in place
        crafted = self.hook.before_round(server_round - 1, self.model)
        self.model = crafted
        self.pending[server_round] = copy.deepcopy(crafted)
        return crafted

    def changes_architecture(self, model: nn.Module) -> bool:
        return tuple(model.state_dict()) != self.base_names

    def observe(self, server_round: int, node_ids: tuple[int, ...], num_samples: tuple[int, ...],
                training: TrainingSpec, aggregate: Arrays | None) -> CraftedRound:
        """Flower's aggregate of the crafted model (None: no reply to aggregate) as the server's
        observation, or the attack's failure."""
        sent, previous = self.pending.pop(server_round), self.previous.pop(server_round)
        observed = CraftedRound(server_round, sent, node_ids, num_samples, training, None)
        layout = ParamLayout.of(sent)
        if aggregate is None:
            observed.failure = NOBODY_TRAINED
        else:
            after = copy.deepcopy(sent)
            try:
                load_arrays(after, aggregate, f"round {server_round}'s aggregate")
                observed.aggregate = layout.check(layout.flatten(after) - layout.flatten(sent), "Flower's aggregate")
                self.model = after
            except InvalidUpdateError as exc:
                observed.failure, observed.details = DIVERGED, {"diverged_in_round": server_round - 1, "invalid_update": str(exc)}
        if observed.failure is not None:
            self.model = previous  # the strategy hands Flower the round's global arrays again
        elif isinstance(self.hook, ObservingServer):  # a server that adapts its crafting to what it saw
            self.hook.observe(ServerView(server_round - 1, sent, layout, training, node_ids, num_samples, None, observed.aggregate))
        self.rounds[server_round] = observed
        return observed
