"""What each party observes, per the threat-model table of DESIGN.md.

Attacks receive one of these views and nothing else; the ground truth (which samples each
client trained on) stays in ``RoundRecord.ground_truth`` for scoring only, save a client's own
samples, which its ``PeerView`` carries because that client holds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from flaudit.scenarios.datasets import ImageDataset
from flaudit.scenarios.updates import ParamLayout


@dataclass(frozen=True)
class TrainingSpec:
    """The local-training hyperparameters the server sets and therefore knows."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float


@dataclass(frozen=True)
class ClientUpload:
    """One client's upload as it reaches the server (after the client's update transforms)."""

    client_id: int
    num_samples: int
    update: torch.Tensor


@dataclass(frozen=True)
class ServerView:
    """The server's view of one round.

    ``uploads`` is None when the aggregation protocol (secure aggregation) hides individual
    updates; ``aggregate`` is the sample-weighted mean update the server applies either way.
    ``transcript`` holds whatever else the protocol showed the server (e.g. masked vectors).
    """

    round_index: int
    model: nn.Module
    layout: ParamLayout
    training: TrainingSpec
    participants: tuple[int, ...]
    num_samples: tuple[int, ...]
    uploads: tuple[ClientUpload, ...] | None
    aggregate: torch.Tensor
    transcript: dict[str, Any] = field(default_factory=dict)
    # The config each client was sent, where the server sent clients different ones (None: all
    # got ``training``). The server chose them, so it knows them.
    client_training: dict[int, TrainingSpec] | None = None

    @property
    def sees_individual_updates(self) -> bool:
        return self.uploads is not None


@dataclass(frozen=True)
class PeerView:
    """An honest-but-curious client's view: consecutive global models, its own update, and its
    own training data of the round (``own_data``: the samples it trained on, none of its
    peers'), which it holds as any client does."""

    round_index: int
    client_id: int
    model_before: nn.Module
    model_after: nn.Module
    layout: ParamLayout
    training: TrainingSpec
    own_update: torch.Tensor
    own_num_samples: int
    own_data: ImageDataset
    num_participants: int | None

    @property
    def global_change(self) -> torch.Tensor:
        return self.layout.flatten(self.model_after) - self.layout.flatten(self.model_before)


@dataclass(frozen=True, eq=False)
class PublicSet:
    """The public dataset every party of a logit-sharing federation holds: ``D_0`` (clean images
    of the public labels) and ``D_a`` (the target labels' images in another, insensitive domain,
    e.g. blurred), as the PLI paper splits it. ``labels`` is None when it is unlabelled (DS-FL)."""

    images: torch.Tensor  # [N, C, H, W] in [0, 1]
    labels: torch.Tensor | None  # [N], in the task's class space
    auxiliary_domain: torch.Tensor  # bool [N]: True for D_a


@dataclass(frozen=True)
class LogitView:
    """The logit-sharing server's view (FedMD family): each client's logits on the public set
    (rows follow ``public``), the consensus it sent back, the public data, and the target labels
    (the classes held privately, in the task's class space)."""

    round_index: int
    public: PublicSet
    target_labels: tuple[int, ...]
    client_logits: dict[int, torch.Tensor]  # client id -> [N_public, classes]
    consensus_logits: torch.Tensor


@dataclass(frozen=True)
class ClientTrace:
    """Ground truth of one client's round: which samples it trained on, batch by batch."""

    client_id: int
    sample_indices: torch.Tensor
    batches: tuple[torch.Tensor, ...]
