"""Training-based inversion (TBI, Yang et al. 2019) machinery shared by PLI and TBI.

An inversion network maps a prediction vector back to an image: a linear layer to a small
feature map, then transposed convolutions (the TBI architecture, sized to the image). It is
trained by regression on data the attacker holds, optionally with anchor points (PLI's prior
terms, Eq. 3 and 10). ``fit``, the minibatch loop, also trains PLI's own server model and
its prior's translation model. Eq. 11's best-of-K pick is here too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from flaudit.auditor.attacks.toolkit.image_priors import total_variation
from flaudit.auditor.metrics.measures import ssim
from flaudit.core.progress import step_bar

Loss = Callable[[torch.Tensor, nn.Module], torch.Tensor]  # (minibatch row indices, model) -> loss


class InversionNet(nn.Module):
    """Prediction vector -> image in [0, 1]: fc to a (4w, s, s) map, two stride-2 transposed
    convolutions (BatchNorm, Tanh between), sigmoid, cropped to the image size."""

    def __init__(self, in_features: int, image_shape: tuple[int, int, int], width: int) -> None:
        super().__init__()
        self.image_shape = image_shape
        channels, height, wide = image_shape
        self.side = math.ceil(max(height, wide) / 4)
        self.project = nn.Sequential(nn.Linear(in_features, 4 * width * self.side**2), nn.Tanh())
        self.decode = nn.Sequential(
            nn.ConvTranspose2d(4 * width, 2 * width, 4, 2, 1), nn.BatchNorm2d(2 * width), nn.Tanh(),
            nn.ConvTranspose2d(2 * width, channels, 4, 2, 1), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, height, wide = self.image_shape
        features = self.project(x).view(x.shape[0], -1, self.side, self.side)
        return self.decode(features)[:, :, :height, :wide]


@dataclass(frozen=True)
class Anchor:
    """Extra regression targets with a weight: PLI's prior terms."""

    inputs: torch.Tensor
    targets: torch.Tensor
    weight: float


def fit(model: nn.Module, n_rows: int, loss: Loss, steps: int, batch_size: int, lr: float, desc: str) -> nn.Module:
    """``steps`` Adam steps on random minibatches of ``n_rows`` rows; ``loss(rows, model)``."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in step_bar(range(steps), desc=desc):
        rows = torch.randint(n_rows, (min(batch_size, n_rows),))
        optimizer.zero_grad(set_to_none=True)
        loss(rows, model).backward()
        optimizer.step()
    return model.eval()


def train_inversion(
    inputs: torch.Tensor, images: torch.Tensor, anchors: list[Anchor], width: int, steps: int, batch_size: int,
    lr: float, desc: str, anchor_steps: int = 0,
) -> InversionNet:
    """``steps`` of min ||G(inputs) - images||^2, then ``anchor_steps`` fine-tuning it with the
    anchors added, ``weight * ||G(anchor.inputs) - anchor.targets||^2`` (PLI's Algorithm 1:
    Eq. 3, then Eq. 10). The anchors' inputs are never data inputs, so nothing but the data
    fit's extrapolation resists them: trained throughout, G would return their targets exactly
    and the attack would be its prior; a bounded fine-tune only pulls towards them."""
    net = InversionNet(inputs.shape[1], tuple(images.shape[1:]), width)

    def data(rows: torch.Tensor, model: nn.Module) -> torch.Tensor:
        return F.mse_loss(model(inputs[rows]), images[rows])

    def anchored(rows: torch.Tensor, model: nn.Module) -> torch.Tensor:
        total = data(rows, model)
        for anchor in anchors:
            total = total + anchor.weight * F.mse_loss(model(anchor.inputs), anchor.targets)
        return total

    fit(net, len(inputs), data, steps, batch_size, lr, desc)
    if anchors and anchor_steps:
        fit(net, len(inputs), anchored, anchor_steps, batch_size, lr, f"{desc}, Eq. 10")
    return net


def pick_distinct(candidates: torch.Tensor, beta: float) -> torch.Tensor:
    """PLI's Eq. 11 per class: of the K clients' reconstructions ``[K, N, C, H, W]``, the one
    least similar to the others (summed SSIM) plus ``beta`` x its total variation; ``[N]``."""
    k, n = candidates.shape[:2]
    if k == 1:
        return torch.zeros(n, dtype=torch.long)
    flat = candidates.flatten(0, 1)
    scores = torch.zeros(k, n, dtype=torch.float64)
    for other in range(k):
        similar = ssim(flat, candidates[other].repeat(k, 1, 1, 1)).view(k, n)
        similar[other] = 0.0  # the sum runs over k' != k
        scores += similar
    scores += beta * total_variation(flat).double().view(k, n)
    return scores.argmin(0)
