"""Image priors the optimisation attacks build on.

Natural images are piecewise smooth: their differences of adjacent pixels are sparse (heavy-
tailed, most near zero). Penalising total variation steers a reconstruction towards an image
rather than noise that fits the observation equally well; blind source separation separates
images by the non-Gaussianity of their differences, far larger than that of their pixels.
"""

from __future__ import annotations

import torch


def spatial_differences(images: torch.Tensor) -> torch.Tensor:
    """Vertical and horizontal differences of adjacent pixels of ``images`` [N, C, H, W],
    flattened per image ([N, C*((H-1)*W + H*(W-1))]). Linear, so it commutes with mixing."""
    vertical = images[..., 1:, :] - images[..., :-1, :]
    horizontal = images[..., :, 1:] - images[..., :, :-1]
    return torch.cat([vertical.flatten(1), horizontal.flatten(1)], 1)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per image (per entry of the first dimension of ``[N, ..., H,
    W]``): mean absolute vertical plus mean absolute horizontal adjacent-pixel difference. The
    optimisation attacks' TV prior is its mean over the batch."""
    vertical = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1).mean(1)
    horizontal = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).mean(1)
    return vertical + horizontal
