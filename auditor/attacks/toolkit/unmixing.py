"""Blind source separation of a linear layer's update (CPA, Kariyappa et al. 2023, eq. 22-23).

A fully-connected layer's weight update is ``sum_i c_i x_i^T``: every row is a mixture of the
inputs ``x_i`` the layer saw, and so is every row after any linear filter of the input
dimension (the attack separates images by their spatial differences, see ``cpa``). Centring
and whitening the rows (PCA to ``k`` unit-variance, uncorrelated signals) leaves an orthogonal
ambiguity; the unmixing matrix ``U`` that resolves it maximises the non-Gaussianity (log-cosh
negentropy) of each unmixed source, with a sparsity prior (mean |source|: the total variation
when the signals are image differences, CPA's L1 prior when they are ReLU embeddings), for
embeddings a sign prior (an uncentred ReLU output has one sign), and a penalty on correlated
rows of ``U`` (``exp(T |cos|)``) so that no two rows find one source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from flaudit.core.errors import FlauditError
from flaudit.core.progress import step_bar

RANK_TOLERANCE = 1e-5  # singular values below this share of the largest carry no source
QUADRATURE_POINTS = 20001  # grid over +-10 sigma for the Gaussian reference of the negentropy


@dataclass(frozen=True)
class Whitened:
    """``signals`` [k, D]: zero-mean, unit-variance, uncorrelated rows; ``projection`` [k, R]:
    maps the centred observed rows [R, D] onto them; ``offset`` [k]: what centring removed
    (the uncentred rows project to ``signals + offset[:, None]``)."""

    signals: torch.Tensor
    projection: torch.Tensor
    offset: torch.Tensor


@dataclass(frozen=True)
class UnmixingSettings:
    iterations: int
    lr: float
    negentropy_scale: float
    sparsity_weight: float
    nonnegativity_weight: float
    independence_weight: float
    temperature: float


def whiten(rows: torch.Tensor, components: int) -> Whitened:
    """PCA-whitens the centred ``rows`` [R, D] to at most ``components`` signals (fewer when the
    rows span fewer directions)."""
    means = rows.mean(1, keepdim=True)
    centred = rows - means
    left, singular, right = torch.linalg.svd(centred, full_matrices=False)
    rank = int((singular > RANK_TOLERANCE * singular[0]).sum()) if singular.numel() else 0
    k = min(components, rank)
    if k < 1:
        raise FlauditError("cpa: the attacked layer's update is zero; there is nothing to unmix")
    root_d = math.sqrt(rows.shape[1])
    projection = (root_d / singular[:k])[:, None] * left[:, :k].t()
    return Whitened(signals=root_d * right[:k], projection=projection, offset=(projection @ means)[:, 0])


def log_cosh(x: torch.Tensor) -> torch.Tensor:
    """log cosh(x), stable for large |x|."""
    return x.abs() + torch.log1p(torch.exp(-2 * x.abs())) - math.log(2)


def gaussian_log_cosh(scale: float) -> float:
    """E[log cosh(a v) / a] for a standard normal v (the negentropy's Gaussian reference)."""
    v = torch.linspace(-10.0, 10.0, QUADRATURE_POINTS, dtype=torch.float64)
    density = torch.exp(-0.5 * v.square()) / math.sqrt(2 * math.pi)
    return float((density * log_cosh(scale * v) / scale).sum() * (v[1] - v[0]))


def negentropy(sources: torch.Tensor, scale: float, reference: float) -> torch.Tensor:
    """Hyvarinen's approximation of each unit-variance row's negentropy ([k]); zero for Gaussian
    rows. ``reference``: ``gaussian_log_cosh(scale)``."""
    return (log_cosh(scale * sources).mean(1) / scale - reference).square()


def dependence(unmixing: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over row pairs of exp(T |cos|): large when two rows pick out the same source."""
    k = unmixing.shape[0]
    if k < 2:
        return unmixing.new_zeros(())
    cosine = (unmixing @ unmixing.t()).abs()
    off_diagonal = ~torch.eye(k, dtype=torch.bool, device=unmixing.device)
    return torch.exp(temperature * cosine[off_diagonal]).mean()


def sign_violation(sources: torch.Tensor) -> torch.Tensor:
    """Per row, the relative norm of its minority sign ([k]): zero when a row is all >= 0 or all
    <= 0, as the uncentred inputs of a layer behind a ReLU are (up to the unknown sign)."""
    negative, positive = torch.relu(-sources).norm(dim=1), torch.relu(sources).norm(dim=1)
    return torch.minimum(negative, positive) / sources.norm(dim=1).clamp(min=1e-12)


def unmix(whitened: Whitened, settings: UnmixingSettings) -> torch.Tensor:
    """The unit-row unmixing matrix U [k, k]; the sources are ``U @ whitened.signals``."""
    signals = whitened.signals
    k = signals.shape[0]
    reference = gaussian_log_cosh(settings.negentropy_scale)
    weights = torch.eye(k, dtype=signals.dtype, device=signals.device).requires_grad_(True)
    optimizer = torch.optim.Adam([weights], lr=settings.lr)
    for _ in step_bar(range(settings.iterations), desc="cpa unmixing"):
        optimizer.zero_grad(set_to_none=True)
        unmixing = weights / weights.norm(dim=1, keepdim=True)
        sources = unmixing @ signals
        loss = (
            -negentropy(sources, settings.negentropy_scale, reference).mean()
            + settings.sparsity_weight * sources.abs().mean()
            + settings.independence_weight * dependence(unmixing, settings.temperature)
        )
        if settings.nonnegativity_weight > 0:
            uncentred = sources + (unmixing @ whitened.offset)[:, None]
            loss = loss + settings.nonnegativity_weight * sign_violation(uncentred).mean()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return weights / weights.norm(dim=1, keepdim=True)
