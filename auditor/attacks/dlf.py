"""Data Leakage in Federated Averaging (DLF; Dimitrov et al., TMLR 2022).

DLF attacks the multi-epoch update directly: it infers the client's label counts (the
interpolated per-step estimate of ``label_inference``), then simulates the client's E local
epochs on a dummy dataset and matches the simulated update to the observed one. Each epoch
gets its own copy of the dummy images, batched in the attacker's own random order (the
client reshuffles every epoch, so one sample meets different batch-mates each epoch), and the
epoch-order-invariant prior pulls the copies of each image to their mean; the reconstruction
is that mean over epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flaudit.auditor.attacks.registry import register_attack
from flaudit.auditor.attacks.base import AttackerKnowledge, AttackOutput, NullContext
from flaudit.auditor.attacks.toolkit.honest_server import HonestServerAttack
from flaudit.auditor.attacks.toolkit.update_inversion import IgParams, optimise_images, update_objective
from flaudit.auditor.attacks.label_inference import inferred_labels
from flaudit.core.tables import bounded
from flaudit.scenarios.views import ServerView


@dataclass(frozen=True)
class DlfParams(IgParams):
    """Inverting Gradients' optimiser and priors, plus the epoch-order-invariant prior."""

    epoch_prior: float = bounded(1.0, min=0.0, doc="weight of the epoch-order-invariant prior (copies of an image agree)")


def epoch_spread(copies: Tensor) -> Tensor:
    """DLF's epoch-order-invariant prior on ``[E, N, C, H, W]``: the mean squared distance of
    each epoch's copy of an image to the copies' mean."""
    return (copies - copies.mean(0, keepdim=True)).square().mean()


@register_attack("dlf", "DLF: simulated local epochs on per-epoch dummy copies, epoch-invariant prior, inferred label counts")
class DataLeakageFedAvg(HonestServerAttack):
    Params = DlfParams
    profiles = {"full": {"iterations": 400, "restarts": 2}}

    label_step = "labels"  # its label step is the labels row

    def prior_null(self, view, context: NullContext) -> torch.Tensor | None:
        """One image per inferred label: the attacker's class means of the label-blind labels."""
        return context.class_means()

    def reconstruct(self, view: ServerView, knowledge: AttackerKnowledge) -> AttackOutput:
        upload = self.target(view)
        device = next(view.model.parameters()).device
        labels = inferred_labels(view, upload, knowledge).to(device)
        epochs, n = view.training.epochs, len(labels)
        generator = torch.Generator().manual_seed(knowledge.seed)
        order = torch.stack([torch.randperm(n, generator=generator) for _ in range(epochs)]).to(device)
        weight = self.params.epoch_prior
        objective = update_objective(
            upload.update.detach().to(device), view.model, view.layout, view.training, labels,
            distance=self.params.distance, tv_weight=self.params.tv_weight,
            regularizer=lambda copies: weight * epoch_spread(copies), order=order,
        )
        copies, loss = optimise_images(
            (epochs, n, *knowledge.image_shape), objective, iterations=self.params.iterations,
            restarts=self.params.restarts, lr=self.params.lr, signed=self.params.signed, seed=knowledge.seed,
            device=device, desc="DLF",
        )
        images = copies.mean(0)
        diagnostics = {"loss": loss, "epoch_spread": float(epoch_spread(copies))}
        return AttackOutput(images.cpu(), (upload.client_id,), labels.cpu(), diagnostics)
