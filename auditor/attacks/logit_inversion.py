"""Logit inversion against logit-sharing FL: PLI (Takahashi et al., CVPR 2023) and its TBI
baseline (Yang et al. 2019). Both recover one representative image per target label from the
logits clients share on the public set, with no gradient, parameter or private sample.

TBI trains, per client, an inversion network from the client's tempered softmax on the public
set back to the public images, and queries it with a one-hot prediction of the target label.
PLI pairs each client's softmax with that of a server model f0 the attacker trains on the public
set, trains the inversion network on the public labels' clean images ``D_0`` only, with a prior
term (Eq. 3), and queries it with the confidence-gap optimum of Eq. 6 (client certain, server
uncertain: private, not public, features). At those queries the network is pulled towards a
per-label prior (Eq. 10, a bounded fine-tune after Eq. 3, as in Algorithm 1: trained jointly
to convergence, it would return the prior itself, which the auditor's prior null shows): the
deblurred ``D_a`` images of the label when the public set is labelled (a small deblurring
network, trained on the attacker's own box-blurred ``D_0``, stands in for DeblurGAN-v2), the
mean of ``D_0`` (Eq. 8) when it is not (DS-FL). Both attacks use the attacked round's logits
only and pick one of the K clients' reconstructions per label by Eq. 11. f0's outputs and the
priors are preparations (``toolkit.preparation``): built once for the rounds and defense
columns that give them the same inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from flaudit.auditor.attacks.registry import register_attack
from flaudit.auditor.attacks.base import Attack, AttackerKnowledge, AttackOutput, ThreatModel, NullContext
from flaudit.auditor.attacks.toolkit.inversion_net import Anchor, fit, pick_distinct, train_inversion
from flaudit.auditor.attacks.toolkit.preparation import IN_PROCESS, TENSOR, Preparation, Preparations, tensor_digest
from flaudit.core.tables import bounded
from flaudit.scenarios.logit_sharing.world import box_blur
from flaudit.scenarios.models import build_model
from flaudit.scenarios.views import LogitView

EPOCH_BATCH = 64  # minibatch of the attacker's classifier and translation model


@dataclass(frozen=True)
class InversionParams:
    temperature: float = bounded(3.0, min=0.0, exclusive_min=True, doc="tau of the softmax fed to the inversion network")
    steps: int = bounded(200, min=1, doc="Adam steps per inversion network (one per client)")
    batch_size: int = bounded(64, min=1, doc="inversion-network minibatch")
    lr: float = bounded(2e-3, min=0.0, exclusive_min=True, doc="inversion-network Adam learning rate")
    width: int = bounded(16, min=1, doc="inversion-network width")
    beta: float = bounded(0.05, min=0.0, doc="Eq. 11: weight of total variation when picking one client's image")


@dataclass(frozen=True)
class PLIParams(InversionParams):
    gamma: float = bounded(0.03, min=0.0, doc="weight of the prior terms, Eq. 3 and 10 (the paper's 0.03)")
    anchor_steps: int = bounded(
        20, min=0, doc="Adam steps fine-tuning each inversion network with Eq. 10 after Eq. 3 (Algorithm 1); 0: no Eq. 10"
    )
    alpha: float = bounded(1.0, min=0.0, exclusive_min=True, doc="Eq. 4 weight of the server entropy; sets Eq. 6")
    server_model: str = "fedmd_cnn"  # the paper's server and client net: one conv, max-pool, linear
    server_epochs: int = bounded(3, min=1, doc="epochs training the attacker's server model f0 on the public set")
    translation_steps: int = bounded(
        200, min=0, doc="steps training the deblurring prior model on D_0 (labelled public sets); 0: the D_0 mean"
    )
    translation_kernel: int = bounded(3, min=1, doc="box kernel the attacker blurs D_0 with to train the deblurrer")


def tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits / temperature, 1)


def confidence_gap_optimum(labels: tuple[int, ...], num_classes: int, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6: the (server, client) outputs maximising Q = p^k_j + p^0_j + alpha H(p^0) for each
    label j: the client one-hot, the server e^(1/alpha) : 1 between j and every other class."""
    rows = torch.arange(len(labels))
    client = torch.zeros(len(labels), num_classes)
    client[rows, torch.tensor(labels)] = 1.0
    peak = math.exp(1.0 / alpha)
    server = torch.full((len(labels), num_classes), 1.0 / (num_classes - 1 + peak))
    server[rows, torch.tensor(labels)] = peak / (num_classes - 1 + peak)
    return server, client


def epoch_steps(n_rows: int, epochs: int) -> int:
    return epochs * math.ceil(n_rows / EPOCH_BATCH)


def server_outputs(view: LogitView, params: PLIParams, prepared: Preparations = IN_PROCESS) -> torch.Tensor:
    """``trained_server_outputs``, a preparation: with a labelled public set it reads the public
    set only, so every round and defense column shares one f0."""
    public, consensus = view.public, view.consensus_logits
    taught_by = (public.images, public.labels, consensus if public.labels is None else None)
    key = {"model": params.server_model, "epochs": params.server_epochs, "classes": consensus.shape[1],
           "public": tensor_digest(taught_by)}
    return prepared.get(Preparation("pli.server_outputs", key, lambda: trained_server_outputs(view, params), TENSOR))


def trained_server_outputs(view: LogitView, params: PLIParams) -> torch.Tensor:
    """f0's logits on the public set: f0 learns the public labels, or, when the public set is
    unlabelled, the consensus the server computed; it never sees private data."""
    images, labels = view.public.images, view.public.labels
    num_classes = view.consensus_logits.shape[1]
    model = build_model(params.server_model, tuple(images.shape[1:]), num_classes)
    soft = view.consensus_logits.softmax(1)

    def loss(rows: torch.Tensor, m: nn.Module) -> torch.Tensor:
        if labels is not None:
            return F.cross_entropy(m(images[rows]), labels[rows])
        return -(soft[rows] * torch.log_softmax(m(images[rows]), 1)).sum(1).mean()

    fit(model, len(images), loss, epoch_steps(len(images), params.server_epochs), EPOCH_BATCH, 1e-3, "PLI server model")
    with torch.no_grad():
        return model(images)


def deblurring_model(clean: torch.Tensor, kernel: int, steps: int) -> nn.Module:
    """A small residual CNN trained to undo a box blur on the attacker's clean public images."""
    channels, width = clean.shape[1], 16
    body = nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, channels, 3, padding=1),
    )
    blurred = box_blur(clean, kernel)

    def loss(rows: torch.Tensor, m: nn.Module) -> torch.Tensor:
        return F.mse_loss(blurred[rows] + m(blurred[rows]), clean[rows])

    return fit(body, len(clean), loss, steps, EPOCH_BATCH, 1e-3, "PLI deblurring prior")


def label_priors(view: LogitView, params: PLIParams, prepared: Preparations = IN_PROCESS) -> torch.Tensor:
    """``built_label_priors``, a preparation (it reads the public set and the target labels
    only): the attack and its prior null use the same."""
    public = view.public
    key = {"kernel": params.translation_kernel, "steps": params.translation_steps, "targets": view.target_labels,
           "public": tensor_digest((public.images, public.labels, public.auxiliary_domain))}
    return prepared.get(Preparation("pli.label_priors", key, lambda: built_label_priors(view, params), TENSOR))


def built_label_priors(view: LogitView, params: PLIParams) -> torch.Tensor:
    """Eq. 9 (labelled public set): the mean deblurred D_a image of each target label; Eq. 8
    (unlabelled, or no translation model): the mean D_0 image for every label."""
    public = view.public
    clean = public.images[~public.auxiliary_domain]
    mean = clean.mean(0, keepdim=True).expand(len(view.target_labels), -1, -1, -1)
    if public.labels is None or params.translation_steps == 0:
        return mean.clone()
    deblur = deblurring_model(clean, params.translation_kernel, params.translation_steps)
    auxiliary, labels = public.images[public.auxiliary_domain], public.labels[public.auxiliary_domain]
    priors = mean.clone()
    with torch.no_grad():
        for i, label in enumerate(view.target_labels):
            members = auxiliary[labels == label]
            if len(members):
                priors[i] = (members + deblur(members)).clamp(0, 1).mean(0)
    return priors


def best_of_clients(candidates: dict[int, torch.Tensor], view: LogitView, beta: float) -> AttackOutput:
    clients = tuple(sorted(candidates))
    stacked = torch.stack([candidates[k] for k in clients])  # [K, L, C, H, W]
    chosen = pick_distinct(stacked, beta)
    images = stacked[chosen, torch.arange(stacked.shape[1])]
    picked = torch.bincount(chosen, minlength=len(clients)).tolist()
    return AttackOutput(
        images, clients, represents=torch.tensor(view.target_labels),
        diagnostics={f"picked_client_{k}": n for k, n in zip(clients, picked)},
    )


@register_attack("pli")
class PairedLogitsInversion(Attack):
    """PLI: paired server/client logits, confidence-gap optimum and prior (CVPR 2023)."""

    threat_model = ThreatModel.LOGIT_SERVER
    Params = PLIParams
    profiles = {"full": {"steps": 3000, "anchor_steps": 300, "server_epochs": 20, "translation_steps": 2000, "width": 64}}

    def prior_null(self, view: LogitView, context: NullContext) -> torch.Tensor:
        """PLI's prior alone, no client logit: the per-label anchors of Eq. 10."""
        return label_priors(view, self.params, context.knowledge.prepared)

    def reconstruct(self, view: LogitView, knowledge: AttackerKnowledge) -> AttackOutput:
        p = self.params
        server = tempered(server_outputs(view, p, knowledge.prepared), p.temperature)
        clean = ~view.public.auxiliary_domain
        priors = label_priors(view, p, knowledge.prepared)
        server_hat, client_hat = confidence_gap_optimum(view.target_labels, server.shape[1], p.alpha)
        queries = torch.cat([server_hat, client_hat], 1)
        images = view.public.images[clean]
        # Eq. 3, ||G - x|| + gamma ||G - x_mean||, is (up to a constant) regression onto the blend:
        targets = (images + p.gamma * images.mean(0, keepdim=True)) / (1 + p.gamma)
        anchors = [Anchor(queries, priors, p.gamma)]  # Eq. 10
        candidates = {}
        for k, logits in view.client_logits.items():
            inputs = torch.cat([server, tempered(logits, p.temperature)], 1)[clean]
            net = train_inversion(
                inputs, targets, anchors, p.width, p.steps, p.batch_size, p.lr, f"PLI client {k}", p.anchor_steps
            )
            with torch.no_grad():
                candidates[k] = net(queries)
        return best_of_clients(candidates, view, p.beta)


@register_attack("tbi")
class TrainingBasedInversion(Attack):
    """TBI baseline: inversion network on one client's logits, trained on the public set."""

    threat_model = ThreatModel.LOGIT_SERVER
    Params = InversionParams
    profiles = {"full": {"steps": 3000, "width": 64}}

    def prior_null(self, view, context: NullContext) -> None:
        """No prior: the inversion network is trained on the public set, which the ``data`` null draws from."""
        return None

    def reconstruct(self, view: LogitView, knowledge: AttackerKnowledge) -> AttackOutput:
        p = self.params
        num_classes = view.consensus_logits.shape[1]
        queries = F.one_hot(torch.tensor(view.target_labels), num_classes).float()
        candidates = {}
        for k, logits in view.client_logits.items():
            inputs = tempered(logits, p.temperature)
            net = train_inversion(inputs, view.public.images, [], p.width, p.steps, p.batch_size, p.lr, f"TBI client {k}")
            with torch.no_grad():
                candidates[k] = net(queries)
        return best_of_clients(candidates, view, p.beta)
