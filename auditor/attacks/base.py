"""The Attack interface: what an attack knows, what it observes, and what it returns.

An attack declares its threat model; the auditor hands it the matching view of the attacked
round (``ServerView``, ``PeerView`` or ``LogitView``) and ``AttackerKnowledge`` (public facts
and the attacker's own auxiliary data), never client data. A malicious server prepares the
model it sends in ``prepare``; a client-side attack, its adversarial client. The auditor
scores ``AttackOutput.images`` against the ground truth of ``target_clients`` after optimal
matching.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Sequence

import torch

from flaudit.core.component import Component
from flaudit.defenses.base import Defense
from flaudit.scenarios.datasets import ImageDataset
from flaudit.scenarios.hooks import AdversarialClient, ServerModelHook
from flaudit.scenarios.scenario import FLWorld, ScenarioConfig, resolve_device
from flaudit.scenarios.views import TrainingSpec


class ThreatModel(str, Enum):
    """Who attacks and what it sees (DESIGN.md, threat-model table)."""

    HONEST_SERVER = "honest-but-curious server"  # each client's update and the global model
    MALICIOUS_SERVER = "malicious server"  # sets parameters/architecture; aggregate under SA
    CURIOUS_CLIENT = "curious client"  # consecutive global models and its own update
    LOGIT_SERVER = "logit-sharing server"  # client logits on the public set


@dataclass(frozen=True)
class AttackerKnowledge:
    """What the attacker knows besides its view: public facts and its own auxiliary data."""

    image_shape: tuple[int, int, int]
    num_classes: int
    training: TrainingSpec
    num_clients: int
    auxiliary: ImageDataset | None
    device: torch.device
    seed: int

    @classmethod
    def of(cls, world: FLWorld) -> "AttackerKnowledge":
        train, cfg = world.data.train, world.config
        return cls(
            image_shape=train.image_shape,
            num_classes=train.num_classes,
            training=cfg.training,
            num_clients=cfg.clients,
            auxiliary=world.auxiliary if len(world.auxiliary_indices) else None,
            device=resolve_device(cfg.device),
            seed=cfg.seed,
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


class Attack(Component, ABC):
    """Base of every registered attack."""

    kind = "attack"
    threat_model: ClassVar[ThreatModel]
    needs_individual_updates: ClassVar[bool] = False
    crafts_model: ClassVar[bool] = False  # it sends a crafted model: a recorded federation cannot serve it

    def not_applicable(self, scenario: ScenarioConfig, defenses: Sequence[Defense]) -> str | None:
        """Why this attack's threat model does not fit the setting, or None if it does."""
        hiding = [d.name for d in defenses if d.hides_individual_updates]
        if self.needs_individual_updates and hiding:
            return (
                f"{self.name} needs each client's update; {hiding[0]} shows the server only "
                "the aggregate"
            )
        return None

    def prepare(self, knowledge: AttackerKnowledge) -> ServerModelHook | AdversarialClient | None:
        """Offline preparation; a malicious server returns the hook that rewrites the model, a
        client-side attack the adversarial client that replaces the attacker's training."""
        return None

    @abstractmethod
    def reconstruct(self, view: Any, knowledge: AttackerKnowledge) -> AttackOutput:
        """Recovers client data from ``view`` (the view type its threat model implies)."""
