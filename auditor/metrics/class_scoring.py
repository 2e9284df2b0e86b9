"""Scoring of class representatives (PLI, TBI): the PLI paper's success criterion.

A logit-inversion attack recovers what a private class looks like, not a given sample, so each
reconstruction x^_j of target class j is compared with class means: it succeeds when
``SSIM(x^_j, x_j) > max(SSIM(x^_j, x_-j), SSIM(x^_j, x_p))``, where x_j is the mean private
image of class j (over the targeted clients' data), x_-j the mean private image of each other
target class, and x_p the mean public image of each label of the public set (the blurred
``D_a`` copies included: a reconstruction of the insensitive public domain is no leak).
Attack accuracy M/N (N: the reconstructions of a class the targets hold; for PLI, one per
target class) is reported as ``recovery_rate``, so risk levels read it like any recovery rate;
PSNR/SSIM/MSE are against x_j. In a FedAvg world (DMGAN's tracked class) there is no public
set: x_-j, the other classes the targets hold, are the only references.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flaudit.auditor.metrics.measures import Matching, PairScores, ssim
from flaudit.scenarios.datasets import ImageDataset


def class_means(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted distinct labels, mean image of each)."""
    classes = labels.unique()
    return classes, torch.stack([images[labels == c].mean(0) for c in classes])


def _best_similarity(image: torch.Tensor, references: torch.Tensor) -> float:
    if references.shape[0] == 0:
        return float("-inf")
    return float(ssim(image.expand_as(references), references).max())


@dataclass(frozen=True)
class ClassScores:
    """How many of the ``n_targets`` (image, class held by the targets) pairs met the class
    criterion; ``matching`` pairs each image with its class mean (for scores and grids)."""

    n_targets: int
    n_recovered: int
    matching: Matching
    means: torch.Tensor


def score_representatives(
    images: torch.Tensor, represents: torch.Tensor, private: ImageDataset, references: torch.Tensor | None,
) -> ClassScores:
    """The class criterion for each image of a class the targets hold. ``private``: the targeted
    clients' samples; ``references``: further mean images an image must beat (the public set's
    class means for logit sharing), None for none; ``images`` in [0, 1], one class each in
    ``represents`` (PLI: one image per class; DMGAN: many of its tracked class)."""
    classes, means = class_means(private.images, private.labels)
    position = {int(c): i for i, c in enumerate(classes)}
    pairs = [(position[int(c)], r) for r, c in enumerate(represents) if int(c) in position]
    target_idx = torch.tensor([t for t, _ in pairs], dtype=torch.long)
    recon_idx = torch.tensor([r for _, r in pairs], dtype=torch.long)
    extra = references if references is not None else means[:0]
    recovered = 0
    for t, r in pairs:
        own = float(ssim(images[r : r + 1], means[t : t + 1]))
        others = torch.cat([means[:t], means[t + 1 :], extra])
        recovered += own > _best_similarity(images[r : r + 1], others)
    empty = torch.zeros(0, dtype=torch.float64)
    scores = PairScores.of(images[recon_idx], means[target_idx]) if pairs else PairScores(empty, empty, empty)
    matching = Matching(target_idx, recon_idx, scores.psnr, scores.ssim, scores.mse)
    return ClassScores(len(pairs), recovered, matching, means)
