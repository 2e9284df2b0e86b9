"""DS-FL (Itahara et al. 2021): an unlabelled public set. Clients train on their private data
and share their predictions on the public set; the server averages the softmax outputs and
sharpens the mean (entropy reduction aggregation, ERA: softmax(mean / T) with T < 1); clients
distil the sharpened consensus with cross-entropy."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flaudit.core.tables import bounded
from flaudit.scenarios.logit_sharing.base import LogitSharingSimulation, PublicLoss
from flaudit.scenarios.logit_sharing.world import LogitOptions


@dataclass(frozen=True)
class DSFLOptions(LogitOptions):
    era_temperature: float = bounded(
        0.1, min=0.0, exclusive_min=True, doc="ERA temperature T: below 1 sharpens the averaged predictions"
    )


def entropy_reduction_aggregate(logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """ERA: the log of softmax(mean_k softmax(l_k) / T), i.e. logits of the sharpened consensus."""
    mean = torch.stack([l.softmax(1) for l in logits]).mean(0)
    return torch.log_softmax(mean / temperature, 1)


class DSFL(LogitSharingSimulation):
    kind = "dsfl"
    summary = "DS-FL: unlabelled public set, entropy-reduction aggregation"
    Options = DSFLOptions
    labelled_public = False

    def aggregate(self, round_index: int, logits: dict[int, torch.Tensor]) -> torch.Tensor:
        return entropy_reduction_aggregate(list(logits.values()), self.options.era_temperature)

    def distillation_loss(self, consensus: torch.Tensor) -> PublicLoss:
        def soft_cross_entropy(outputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            target = consensus[rows.cpu()].exp().to(outputs.device)
            return -(target * torch.log_softmax(outputs, 1)).sum(1).mean()

        return soft_cross_entropy

