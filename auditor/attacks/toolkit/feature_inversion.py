"""Feature inversion (CPA's eq. 24): images whose embedding points where a recovered one does.

CPA recovers the embeddings a CNN's first fully-connected layer saw (approximately: ICA is
imperfect and, after several local steps, the embeddings drifted with the convolutions); images
are found by projected Adam in the pixel box [0, 1], maximising the cosine similarity of their
embedding to the recovered one (blind to a wrong overall scale) under a total-variation prior.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from flaudit.auditor.attacks.toolkit.image_priors import total_variation
from flaudit.core.progress import step_bar

Embedder = Callable[[torch.Tensor], torch.Tensor]  # images [N, C, H, W] -> embeddings [N, D]


@dataclass(frozen=True)
class InversionSettings:
    iterations: int
    lr: float
    tv_weight: float


def invert_features(
    embed: Embedder,
    targets: torch.Tensor,
    image_shape: tuple[int, int, int],
    settings: InversionSettings,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, C, H, W] in [0, 1] for the target embeddings [N, D], and the cosine similarity
    each reached ([N])."""
    start = torch.rand((len(targets), *image_shape), generator=generator)
    images = start.to(targets.device).requires_grad_(True)
    optimizer = torch.optim.Adam([images], lr=settings.lr)
    for _ in step_bar(range(settings.iterations), desc="feature inversion"):
        optimizer.zero_grad(set_to_none=True)
        similarity = F.cosine_similarity(embed(images), targets, dim=1)
        loss = (1 - similarity).mean() + settings.tv_weight * total_variation(images).mean()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            images.clamp_(0, 1)
    with torch.no_grad():
        similarity = F.cosine_similarity(embed(images), targets, dim=1)
    return images.detach(), similarity
