"""FedGEMS (Cheng et al. 2021): a larger server model learns from the clients by selective
knowledge fusion and teaches them back.

Per public sample the server model learns the label (cross-entropy); where it errs it also
distils a teacher (weight ``1 - fusion_epsilon``): its own cached logits from a round where it
was right, else the clients' logits, those that predict the label weighted by inverse entropy
(all clients equally when none does). The consensus sent back is the server model's logits;
clients distil it (KL) and the public labels (cross-entropy), so they train on both their
private and the hard-labelled public data, as the PLI paper notes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from flaudit.core.tables import bounded
from flaudit.scenarios.hooks import FLHooks
from flaudit.scenarios.logit_sharing.base import LabelledPublicOptions, LabelledPublicSimulation, PublicLoss, predict
from flaudit.scenarios.logit_sharing.world import LogitWorld
from flaudit.scenarios.models import build_model
from flaudit.scenarios.scenario import derive_seed

SERVER_CLIENT_ID = 1 << 20  # seeds the server model's public-set passes apart from every client's


@dataclass(frozen=True)
class FedGEMSOptions(LabelledPublicOptions):
    server_model: str = "cnn"
    server_model_options: dict[str, Any] = bounded({"width": 64}, doc="the larger server model's options")
    server_epochs: int = bounded(2, min=1, doc="server epochs of selective knowledge fusion per round")
    fusion_epsilon: float = bounded(0.75, min=0.0, max=1.0, doc="weight of the label against the teacher")


def inverse_entropy_ensemble(logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Per sample, the mean of the clients' softmax outputs weighted by 1/entropy among the
    clients that predict ``labels``; the plain mean where none does."""
    probs = torch.stack([l.softmax(1) for l in logits])  # [K, N, J]
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(2)
    right = probs.argmax(2) == labels
    weights = torch.where(right, 1.0 / entropy.clamp_min(1e-6), torch.zeros_like(entropy))
    weights = torch.where(right.any(0), weights, torch.ones_like(weights))
    weights = weights / weights.sum(0)
    return (weights.unsqueeze(2) * probs).sum(0)


def kl_to(teacher_probs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(teacher || softmax(outputs))."""
    log_teacher = teacher_probs.clamp_min(1e-12).log()
    return (teacher_probs * (log_teacher - torch.log_softmax(outputs, 1))).sum(1)


class FedGEMS(LabelledPublicSimulation):
    kind = "fedgems"
    summary = "FedGEMS: larger server model, selective knowledge fusion"
    Options = FedGEMSOptions

    def __init__(self, world: LogitWorld, hooks: FLHooks | None = None) -> None:
        super().__init__(world, hooks)
        train, cfg = world.data.train, world.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, SERVER_CLIENT_ID))
            self.server = build_model(self.options.server_model, train.image_shape, train.num_classes,
                                      **self.options.server_model_options)
        self.server.to(next(self.models[0].parameters()).device)
        if self.options.public_epochs:  # the server starts from the labelled public set too
            self.train_on_public(self.server, self.public_label_loss(), self.options.public_epochs,
                                 self.public_seed(0, SERVER_CLIENT_ID))
        n_public, n_classes = len(world.public.images), train.num_classes
        self.cache = torch.zeros(n_public, n_classes)  # server's own soft labels where it was right
        self.cached = torch.zeros(n_public, dtype=torch.bool)

    def selective_fusion_loss(self, ensemble: torch.Tensor) -> PublicLoss:
        labels, epsilon = self.world.public.labels, self.options.fusion_epsilon

        def loss(outputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            rows = rows.cpu()
            target = labels[rows].to(outputs.device)
            right = outputs.argmax(1) == target
            self.cache[rows[right.cpu()]] = outputs[right].detach().softmax(1).cpu()
            self.cached[rows[right.cpu()]] = True
            teacher = torch.where(self.cached[rows].unsqueeze(1), self.cache[rows], ensemble[rows]).to(outputs.device)
            cross_entropy = F.cross_entropy(outputs, target, reduction="none")
            fused = epsilon * cross_entropy + (1 - epsilon) * kl_to(teacher, outputs)
            return torch.where(right, cross_entropy, fused).mean()

        return loss

    def aggregate(self, round_index: int, logits: dict[int, torch.Tensor]) -> torch.Tensor:
        ensemble = inverse_entropy_ensemble(list(logits.values()), self.world.public.labels)
        self.train_on_public(self.server, self.selective_fusion_loss(ensemble), self.options.server_epochs,
                             self.public_seed(round_index + 1, SERVER_CLIENT_ID))
        return predict(self.server, self.world.public.images)

    def distillation_loss(self, consensus: torch.Tensor) -> PublicLoss:
        teacher, labels = consensus.softmax(1), self.world.public.labels

        def loss(outputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            rows = rows.cpu()
            hard = F.cross_entropy(outputs, labels[rows].to(outputs.device))
            return hard + kl_to(teacher[rows].to(outputs.device), outputs).mean()

        return loss

