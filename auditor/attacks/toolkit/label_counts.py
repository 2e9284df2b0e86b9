"""Label counts as integers: shared by label inference and the label-blind guess."""

from __future__ import annotations

import torch
from torch import Tensor


def round_counts(estimate: Tensor, total: int) -> Tensor:
    """Non-negative integer counts summing to ``total``, by largest remainder."""
    estimate = estimate.double().clamp(min=0)
    if float(estimate.sum()) <= 0:
        estimate = torch.ones_like(estimate)
    scaled = estimate * total / estimate.sum()
    counts = scaled.floor().long()
    remainder = total - int(counts.sum())
    counts[(scaled - counts).argsort(descending=True)[:remainder]] += 1
    return counts
