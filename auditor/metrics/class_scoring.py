"""Scoring of class representatives (PLI, TBI): the PLI paper's success criterion.

A logit-inversion attack recovers what a private class looks like, not a given sample, so each
reconstruction x^_j of target class j is compared with class means: it succeeds when
``SSIM(x^_j, x_j) > max(SSIM(x^_j, x_-j), SSIM(x^_j, x_p))``, where x_j is the mean private
image of class j (over the targeted clients' data), x_-j the mean private image of each other
target class, and x_p the mean public image of each label of the public set (the blurred
``D_a`` copies included: a reconstruction of the insensitive public domain is no leak).
Attack accuracy M/N (N: target classes the clients hold) is reported as ``recovery_rate``, so
risk levels read it like any recovery rate; PSNR/SSIM/MSE are against x_j.
"""

from __future__ import annotations

import torch

from flaudit.auditor.metrics.measures import PSNR_CEILING, Matching, psnr, ssim
from flaudit.scenarios.datasets import ImageDataset


def class_means(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted distinct labels, mean image of each)."""
    classes = labels.unique()
    return classes, torch.stack([images[labels == c].mean(0) for c in classes])


def _best_similarity(image: torch.Tensor, references: torch.Tensor) -> float:
    if references.shape[0] == 0:
        return float("-inf")
    return float(ssim(image.expand_as(references), references).max())


def score_representatives(
    images: torch.Tensor, represents: torch.Tensor, private: ImageDataset, public: ImageDataset,
) -> tuple[dict[str, float], Matching, torch.Tensor]:
    """Metrics, the class pairing (for grids) and the class means the reconstructions are
    paired with. ``private``: the targeted clients' samples; ``images`` in [0, 1], one per
    distinct class of ``represents``."""
    classes, means = class_means(private.images, private.labels)
    _, public_means = class_means(public.images, public.labels)
    position = {int(c): i for i, c in enumerate(classes)}
    pairs = [(position[int(c)], r) for r, c in enumerate(represents) if int(c) in position]
    target_idx = torch.tensor([t for t, _ in pairs], dtype=torch.long)
    recon_idx = torch.tensor([r for _, r in pairs], dtype=torch.long)
    recovered = 0
    for t, r in pairs:
        own = float(ssim(images[r : r + 1], means[t : t + 1]))
        others = torch.cat([means[:t], means[t + 1 :]])
        recovered += own > max(_best_similarity(images[r : r + 1], others), _best_similarity(images[r : r + 1], public_means))
    a, b = images[recon_idx].double(), means[target_idx].double()
    matching = Matching(target_idx, recon_idx, psnr(a, b), ssim(a, b), (a - b).pow(2).flatten(1).mean(1))
    n_classes = len(classes)
    metrics = {"n_targets": n_classes, "n_reconstructed": int(images.shape[0]),
               "recovery_rate": recovered / n_classes, "n_recovered": recovered}
    if pairs:
        capped = matching.psnr.clamp(max=PSNR_CEILING)
        metrics.update(psnr_mean=capped.mean().item(), psnr_median=capped.quantile(0.5).item(),
                       ssim_mean=matching.ssim.mean().item(), mse_mean=matching.mse.mean().item())
    return metrics, matching, means
