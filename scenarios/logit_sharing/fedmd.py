"""FedMD (Li & Wang 2019), as the PLI paper runs it: clients first learn the labelled public
set (transfer learning), then each round train on their private data, share their logits on
the public set, and digest the server's plain mean of the logits with an L1 loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flaudit.scenarios.logit_sharing.base import LabelledPublicSimulation, PublicLoss


class FedMD(LabelledPublicSimulation):
    kind = "fedmd"
    summary = "FedMD: labelled public set, mean of the logits, L1 distillation"

    def aggregate(self, round_index: int, logits: dict[int, torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(logits.values())).mean(0)

    def distillation_loss(self, consensus: torch.Tensor) -> PublicLoss:
        return lambda outputs, rows: F.l1_loss(outputs, consensus[rows.cpu()].to(outputs.device))

