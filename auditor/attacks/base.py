"""The Attack interface: what an attack knows, what it observes, and what it returns.

An attack declares its threat model; the auditor hands it the matching view of the attacked
round (``ServerView``, ``PeerView`` or ``LogitView``) and ``AttackerKnowledge`` (public facts
and the attacker's own auxiliary data), never client data. A malicious server prepares the
model it sends in ``prepare``; a client-side attack, its adversarial client. The auditor
scores ``AttackOutput.images`` against the ground truth of ``target_clients`` after optimal
matching.

Every attack also has nulls (``Attack.nulls``): what a data-blind attacker returns for the same
targets without the observation, its own data (``own_data``, by threat model) and its prior
(``prior_null``, which each attack must declare). The auditor scores them exactly as the
attack and reports leakage as the attack's score minus the larger null's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Sequence

import torch

from flaudit.auditor.attacks.toolkit import nulls as guess
from flaudit.auditor.attacks.toolkit.preparation import IN_PROCESS, Preparations
from flaudit.core.component import Component
from flaudit.defenses.base import Defense
from flaudit.scenarios.datasets import ImageDataset
from flaudit.scenarios.hooks import AdversarialClient, ServerModelHook
from flaudit.scenarios.scenario import FLWorld, ScenarioConfig, resolve_device
from flaudit.scenarios.views import LogitView, PeerView, TrainingSpec


class ThreatModel(str, Enum):
    """Who attacks and what it sees (DESIGN.md, threat-model table)."""

    HONEST_SERVER = "honest-but-curious server"  # each client's update and the global model
    MALICIOUS_SERVER = "malicious server"  # sets parameters/architecture; aggregate under SA
    CURIOUS_CLIENT = "curious client"  # consecutive global models and its own update
    LOGIT_SERVER = "logit-sharing server"  # client logits on the public set


@dataclass(frozen=True)
class AttackerKnowledge:
    """What the attacker knows besides its view: public facts and its own auxiliary data; and
    ``prepared``, what it built from them (shared by every cell of a run that builds the same)."""

    image_shape: tuple[int, int, int]
    num_classes: int
    training: TrainingSpec
    num_clients: int
    auxiliary: ImageDataset | None
    device: torch.device
    seed: int
    prepared: Preparations = field(default=IN_PROCESS, compare=False, repr=False)

    @classmethod
    def of(cls, world: FLWorld, prepared: Preparations = IN_PROCESS) -> "AttackerKnowledge":
        train, cfg = world.data.train, world.config
        return cls(
            image_shape=train.image_shape,
            num_classes=train.num_classes,
            training=cfg.training,
            num_clients=cfg.clients,
            auxiliary=world.auxiliary if len(world.auxiliary_indices) else None,
            device=resolve_device(cfg.device),
            seed=cfg.seed,
            prepared=prepared,
        )


@dataclass
class AttackOutput:
    """Reconstructed images in [0, 1] (any order, any count) and, optionally, labels.

    ``represents``: set by attacks that reconstruct one representative image per class (PLI)
    rather than samples: the class of each image, scored by the class criterion of
    ``auditor.class_scoring``."""

    images: torch.Tensor
    target_clients: tuple[int, ...]
    labels: torch.Tensor | None = None
    diagnostics: dict[str, float] = field(default_factory=dict)
    represents: torch.Tensor | None = None


@dataclass(frozen=True)
class OwnData:
    """The attacker's own images (and labels when they are labelled): what it held before the
    attacked round, never a target's sample."""

    images: torch.Tensor
    labels: torch.Tensor | None


def _auxiliary(view: Any, knowledge: AttackerKnowledge) -> OwnData | None:
    aux = knowledge.auxiliary
    return None if aux is None else OwnData(aux.images, aux.labels)


def _client_data(view: PeerView, knowledge: AttackerKnowledge) -> OwnData:
    own, aux = view.own_data, _auxiliary(view, knowledge)
    if aux is None:
        return OwnData(own.images, own.labels)
    return OwnData(torch.cat([own.images, aux.images]), torch.cat([own.labels, aux.labels]))


def _public_set(view: LogitView, knowledge: AttackerKnowledge) -> OwnData:
    return OwnData(view.public.images, view.public.labels)


OWN_DATA = {  # threat model -> the data its attacker holds of its own
    ThreatModel.HONEST_SERVER: _auxiliary,
    ThreatModel.MALICIOUS_SERVER: _auxiliary,
    ThreatModel.CURIOUS_CLIENT: _client_data,  # its training data of the round and any auxiliary set
    ThreatModel.LOGIT_SERVER: _public_set,
}


@dataclass(frozen=True)
class NullContext:
    """What a null may use: the attacker's own data and public facts, the shape of the attack's
    output (how many images, whether it returned labels), the label-blind labels, and a seeded
    generator. Never the observation of the attacked round."""

    knowledge: AttackerKnowledge
    own: OwnData | None
    count: int  # images the attack returned
    labels: torch.Tensor | None  # the label-blind guess, as many as the attack returned; None if it returned none
    generator: torch.Generator

    def class_means(self) -> torch.Tensor | None:
        """The prior of a label-conditioned output (one image per label): the attacker's mean
        image of each label-blind label; None without own data or one label per image."""
        if self.own is None or self.labels is None or self.labels.numel() != self.count:
            return None
        return guess.class_means(self.own.images, self.own.labels, self.labels)


@dataclass(frozen=True)
class NullGuess:
    """One data-blind guess, scored like the attack's output: ``data`` (the attacker's own
    images), ``mean`` (their mean image, or mid-grey when it holds none) or ``prior`` (the
    attack's prior without the observation)."""

    name: str
    output: AttackOutput


class Attack(Component, ABC):
    """Base of every registered attack."""

    kind = "attack"
    threat_model: ClassVar[ThreatModel]
    needs_individual_updates: ClassVar[bool] = False
    crafts_model: ClassVar[bool] = False  # it sends a crafted model: a recorded federation cannot serve it
    # The attack row that already reports this attack's internal label step (e.g. "labels"):
    # its labels are still scored, but the cell is rated by its own output, the images.
    label_step: ClassVar[str | None] = None
    needs_auxiliary: ClassVar[bool] = False  # the attacker's auxiliary data (scenario.auxiliary_samples)

    def not_applicable(self, scenario: ScenarioConfig, defenses: Sequence[Defense]) -> str | None:
        """Why this attack's threat model does not fit the setting, or None if it does."""
        hiding = [d.name for d in defenses if d.hides_individual_updates]
        if self.needs_individual_updates and hiding:
            return (
                f"{self.name} needs each client's update; {hiding[0]} shows the server only "
                "the aggregate"
            )
        return None

    def missing_input(self, scenario: ScenarioConfig) -> str | None:
        """What this attack's parameters need that the scenario lacks (a client it names, its
        auxiliary data), checked before any job runs; None when nothing is missing."""
        target = getattr(self.params, "target_client", None)
        if target is not None and target >= scenario.clients:
            return f"{self.name} target_client={target}, but the scenario has {scenario.clients} clients (0..{scenario.clients - 1})"
        if self.needs_auxiliary and scenario.auxiliary_samples == 0:
            return f"{self.name} needs the attacker's auxiliary data: set scenario.auxiliary_samples (a few hundred)"
        return None

    def prepare(self, knowledge: AttackerKnowledge) -> ServerModelHook | AdversarialClient | None:
        """Offline preparation; a malicious server returns the hook that rewrites the model, a
        client-side attack the adversarial client that replaces the attacker's training."""
        return None

    @abstractmethod
    def reconstruct(self, view: Any, knowledge: AttackerKnowledge) -> AttackOutput:
        """Recovers client data from ``view`` (the view type its threat model implies)."""

    @abstractmethod
    def prior_null(self, view: Any, context: NullContext) -> torch.Tensor | None:
        """The attack's prior without the observation: ``context.count`` images it would return
        had it observed nothing (a generator's mean image, class means for label-conditioned
        outputs, ...), from public facts and its own data only (``view`` only for those, e.g. a
        logit view's public set); None when its output has no prior beyond its own data.
        Declared by every attack, so none can forget its null."""

    def nulls(self, view: Any, knowledge: AttackerKnowledge, output: AttackOutput, seed: int) -> tuple[NullGuess, ...]:
        """The data-blind guesses for ``output``'s targets: ``count`` of the attacker's own
        images, their mean, and the attack's prior; each carries the label-blind labels when
        the attack returned labels."""
        own = OWN_DATA[self.threat_model](view, knowledge)
        count = int(output.images.shape[0])
        labels = None
        if output.labels is not None:
            labels = guess.label_blind(None if own is None else own.labels, output.labels.numel(), knowledge.num_classes)
        context = NullContext(knowledge, own, count, labels, torch.Generator().manual_seed(seed))
        images = {}
        if own is None or len(own.images) == 0:
            images["mean"] = guess.constant(guess.grey(knowledge.image_shape), count)
        else:
            images["data"] = guess.drawn(own.images, count, context.generator)
            images["mean"] = guess.constant(own.images.mean(0), count)
        prior = self.prior_null(view, context) if count else None
        if prior is not None:
            images["prior"] = prior.detach().float().cpu()
        return tuple(
            NullGuess(name, AttackOutput(x, output.target_clients, labels, represents=output.represents))
            for name, x in images.items()
        )
