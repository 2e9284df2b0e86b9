"""Image-reconstruction and label-inference metrics every attack is scored with.

Images are float tensors ``[N, C, H, W]`` nominally in ``[0, data_range]``. Per-image metrics
are computed in float64 (so scores do not depend on the attack's working precision) and come
back as float64 tensors ``[N]`` on the input's device. Reconstructions are matched to targets
by optimal assignment before they are scored (DESIGN.md, "Metrics"), because attacks recover
a batch in arbitrary order and may return more or fewer images than there were targets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from flaudit.core.errors import ConfigError, FlauditError

PSNR_CEILING = 100.0
"""dB. Exact copies have infinite PSNR; aggregates (means, medians) and the PSNR assignment
cost cap at this value so one perfect image does not make a whole cell's mean infinite.
Per-image PSNR values are never capped."""

SSIM_WINDOW = 7  # skimage's default uniform window
_K1, _K2 = 0.01, 0.03
_CHUNK_ELEMENTS = 1 << 22  # float64 elements per pairwise chunk (32 MiB)

Metric = Literal["psnr", "mse", "ssim"]


class MetricInputError(FlauditError, ValueError):
    """Images or labels handed to a metric have the wrong rank, shape or dtype, or bad values."""


def _check_images(a: torch.Tensor, b: torch.Tensor, *, same_batch: bool) -> None:
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, torch.Tensor):
            raise MetricInputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise MetricInputError(f"{name} must be [N, C, H, W], got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise MetricInputError(f"{name} must be a float tensor, got {x.dtype}")
        if x.shape[0] == 0:
            raise MetricInputError(f"{name} is an empty batch")
        if not torch.isfinite(x).all():
            raise MetricInputError(f"{name} contains NaN or inf")
    if a.shape[1:] != b.shape[1:] or (same_batch and a.shape[0] != b.shape[0]):
        what = "shapes" if same_batch else "image shapes [C, H, W]"
        raise MetricInputError(f"{what} differ: {tuple(a.shape)} vs {tuple(b.shape)}")


def _check_range(data_range: float) -> None:
    if not (isinstance(data_range, (int, float)) and math.isfinite(data_range) and data_range > 0):
        raise ConfigError(f"data_range must be a positive finite number, got {data_range!r}")


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image, over C, H, W."""
    _check_images(a, b, same_batch=True)
    return _mse(a, b)


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.double() - b.double()).square().flatten(1).mean(1)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB, ``10 log10(data_range^2 / mse)``.

    Identical images give ``+inf`` (not capped here; see ``PSNR_CEILING`` for aggregates).
    """
    _check_images(a, b, same_batch=True)
    _check_range(data_range)
    return _psnr_from_mse(_mse(a, b), data_range)


def _psnr_from_mse(err: torch.Tensor, data_range: float) -> torch.Tensor:
    return 10.0 * torch.log10(data_range**2 / err)


def ssim_window(height: int, width: int) -> int:
    """Side of the uniform SSIM window: 7, or the largest odd size that fits a smaller image.

    skimage raises for images under 7x7 unless ``win_size`` is given; with this rule the result
    equals ``structural_similarity(..., win_size=ssim_window(H, W))``. Windows under 3 are
    refused: a 1-pixel window has no sample covariance.
    """
    side = min(SSIM_WINDOW, height, width)
    side -= 1 - side % 2
    if side < 3:
        raise MetricInputError(f"SSIM needs images of at least 3x3, got {height}x{width}")
    return side


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity per image, equal to skimage's ``structural_similarity`` defaults.

    Uniform ``ssim_window(H, W)`` window, K1=0.01, K2=0.03, sample covariance, mean over the
    valid (uncropped) window positions of each channel, then over channels. Valid pooling
    without padding is exactly skimage's filter-then-crop, since cropped pixels are the ones
    whose window touches the border.
    """
    _check_images(a, b, same_batch=True)
    _check_range(data_range)
    return _ssim(a.double(), b.double(), data_range)


def _ssim(x: torch.Tensor, y: torch.Tensor, data_range: float) -> torch.Tensor:
    side = ssim_window(x.shape[2], x.shape[3])
    stats = F.avg_pool2d(torch.cat([x, y, x * x, y * y, x * y], 1), side, stride=1)
    ux, uy, uxx, uyy, uxy = stats.chunk(5, 1)
    cov_norm = side * side / (side * side - 1)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


@dataclass(frozen=True)
class Matching:
    """Optimal one-to-one pairing of reconstructions with targets, sorted by target index.

    ``min(M, N)`` pairs: with more reconstructions than targets the extras are dropped, with
    fewer, some targets stay unmatched (and count as not recovered).
    """

    target_idx: torch.Tensor  # int64 [K]
    recon_idx: torch.Tensor  # int64 [K]
    psnr: torch.Tensor  # float64 [K], +inf for exact copies
    ssim: torch.Tensor  # float64 [K]
    mse: torch.Tensor  # float64 [K]


def _pairwise(recon: torch.Tensor, targets: torch.Tensor, score) -> torch.Tensor:
    """``score`` of every (target, reconstruction) pair as an ``[N, M]`` matrix, in row chunks
    of reconstructions so memory stays bounded for large batches (5 image-sized buffers per
    pair: SSIM's pooled statistics)."""
    m, n = recon.shape[0], targets.shape[0]
    rows = max(1, _CHUNK_ELEMENTS // (5 * n * targets[0].numel()))
    chunks = []
    for start in range(0, m, rows):
        r = recon[start : start + rows]
        chunks.append(score(r.repeat_interleave(n, 0), targets.repeat(r.shape[0], 1, 1, 1)).view(-1, n))
    return torch.cat(chunks).T


@torch.no_grad()
def match_reconstructions(
    recon: torch.Tensor, targets: torch.Tensor, metric: Metric = "psnr", data_range: float = 1.0
) -> Matching:
    """Pair reconstructions ``[M, C, H, W]`` with targets ``[N, C, H, W]`` maximising total
    similarity under ``metric`` (Hungarian algorithm), then score each pair.

    "psnr" maximises summed PSNR (capped at ``PSNR_CEILING`` so exact copies give a finite
    cost), "mse" minimises summed MSE, "ssim" maximises summed SSIM. SSIM of every pair costs
    a full SSIM per pair, so it is computed pairwise only for metric="ssim"; otherwise only for
    the matched pairs. Images must be at least 3x3 (see ``ssim_window``).
    """
    _check_images(recon, targets, same_batch=False)
    _check_range(data_range)
    if metric not in ("psnr", "mse", "ssim"):
        raise ConfigError(f"metric must be 'psnr', 'mse' or 'ssim', got {metric!r}")
    recon, targets = recon.double(), targets.double()
    if metric == "ssim":
        cost = -_pairwise(recon, targets, lambda r, t: _ssim(r, t, data_range))
    else:
        cost = _pairwise(recon, targets, _mse)
        if metric == "psnr":
            cost = -_psnr_from_mse(cost, data_range).clamp(max=PSNR_CEILING)
    t_idx, r_idx = linear_sum_assignment(cost.cpu().numpy())
    t_idx = torch.as_tensor(t_idx, dtype=torch.int64, device=recon.device)
    r_idx = torch.as_tensor(r_idx, dtype=torch.int64, device=recon.device)
    a, b = recon[r_idx], targets[t_idx]
    err = _mse(a, b)
    return Matching(t_idx, r_idx, _psnr_from_mse(err, data_range), _ssim(a, b, data_range), err)


def recovery_rate(values: torch.Tensor | Sequence[float], threshold: float, n_targets: int) -> float:
    """Share of ``n_targets`` whose matched score (higher is better: PSNR, SSIM) is
    ``>= threshold``. ``values`` holds the matched pairs only, so unmatched targets count as
    not recovered."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    if n_targets < 1:
        raise ConfigError(f"n_targets must be >= 1, got {n_targets}")
    if values.numel() > n_targets:
        raise ConfigError(f"{values.numel()} matched values for only {n_targets} targets")
    if torch.isnan(values).any():
        raise MetricInputError("values contain NaN")
    return (values >= threshold).sum().item() / n_targets


def _labels(x: torch.Tensor | Sequence[int], name: str) -> torch.Tensor:
    x = torch.as_tensor(x).flatten()
    if x.numel() == 0:
        raise MetricInputError(f"{name} is empty")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise MetricInputError(f"{name} must be integer class labels, got {x.dtype}")
    return x.long().cpu()


def label_accuracy(predicted: torch.Tensor | Sequence[int], true: torch.Tensor | Sequence[int]) -> float:
    """Exact-order accuracy: share of positions where the predicted label equals the true one."""
    predicted, true = _labels(predicted, "predicted"), _labels(true, "true")
    if predicted.shape != true.shape:
        raise MetricInputError(f"{predicted.numel()} predicted labels for {true.numel()} true labels")
    return (predicted == true).double().mean().item()


def label_count_accuracy(
    predicted_labels: torch.Tensor | Sequence[int], true_labels: torch.Tensor | Sequence[int], num_classes: int
) -> float:
    """Order-free accuracy for label inference, which recovers a batch's label multiset.

    ``1 - sum_c |count_pred(c) - count_true(c)| / (n_pred + n_true)``, i.e. ``1 - L1 / (2n)``
    when both have n labels; equivalently the share of labels present in both multisets. It
    stays in [0, 1] even when the attack guesses the wrong batch size.
    """
    predicted, true = _labels(predicted_labels, "predicted_labels"), _labels(true_labels, "true_labels")
    for name, x in (("predicted_labels", predicted), ("true_labels", true)):
        if x.min() < 0 or x.max() >= num_classes:
            raise MetricInputError(f"{name} must lie in [0, {num_classes}), got {x.min().item()}..{x.max().item()}")
    diff = torch.bincount(predicted, minlength=num_classes) - torch.bincount(true, minlength=num_classes)
    return 1.0 - diff.abs().sum().item() / (predicted.numel() + true.numel())


IDENTIFIABLE_MARGIN_DB = 1.0
"""dB. A target is identifiably recovered when its matched reconstruction reaches the PSNR
threshold and is closer to it than to every non-member of the reference pool by at least this
much (README, "Scoring"): 1 dB is a 21% lower squared error than the nearest non-member's."""


@torch.no_grad()
def nearest_reference_psnr(recon: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per reconstruction ``[M, C, H, W]``, its PSNR to the closest image of ``reference``
    ``[P, C, H, W]`` (float64 ``[M]``): how well it matches *some* non-member."""
    _check_images(recon, reference, same_batch=False)
    _check_range(data_range)
    a, b = recon.double().flatten(1), reference.double().flatten(1)
    rows = max(1, _CHUNK_ELEMENTS // b.numel())  # reconstructions per chunk of [rows, P, D] differences
    best = torch.cat([(a[i : i + rows, None] - b[None]).square().mean(2).min(1).values for i in range(0, len(a), rows)])
    return _psnr_from_mse(best, data_range)


@dataclass(frozen=True)
class PairScores:
    """PSNR, SSIM and MSE of some (target, image) pairs, float64 ``[K]``."""

    psnr: torch.Tensor
    ssim: torch.Tensor
    mse: torch.Tensor

    @classmethod
    def of(cls, images: torch.Tensor, targets: torch.Tensor, data_range: float = 1.0) -> "PairScores":
        a, b = images.double(), targets.double()
        err = _mse(a, b)
        return cls(_psnr_from_mse(err, data_range), _ssim(a, b, data_range), err)


@dataclass(frozen=True)
class ReconstructionScores:
    """One attack run's image scores.

    ``recovery_rate``: share of all ``n_targets`` identifiably recovered (PSNR threshold and,
    given the matched reconstructions' PSNR to their nearest non-member, the margin over it);
    ``psnr_rate``: by the PSNR threshold alone. Means and median are over every target, with
    PSNR capped at ``PSNR_CEILING``: a target left unmatched is scored by what was put in its
    place (``unmatched``; without it, the matched pairs only). ``psnr_recovered_mean``: over
    the identifiably recovered targets, None when there are none."""

    psnr_mean: float
    psnr_median: float
    ssim_mean: float
    mse_mean: float
    recovery_rate: float
    n_targets: int
    n_recovered: int
    psnr_rate: float
    n_psnr_recovered: int
    psnr_recovered_mean: float | None


def summarize(
    matching: Matching,
    n_targets: int,
    psnr_threshold: float = 20.0,
    *,
    reference_psnr: torch.Tensor | None = None,
    margin_db: float = IDENTIFIABLE_MARGIN_DB,
    unmatched: PairScores | None = None,
) -> ReconstructionScores:
    """Aggregate a matching; a target's pair clears the threshold when its (uncapped) PSNR is
    ``>= psnr_threshold`` (default 20 dB, DESIGN.md "Metrics"). ``reference_psnr``: per matched
    pair, the reconstruction's PSNR to its nearest non-member (``nearest_reference_psnr``);
    without it identifiable recovery is the PSNR criterion alone."""
    psnr_hit = matching.psnr >= psnr_threshold
    rate = recovery_rate(matching.psnr, psnr_threshold, n_targets)
    hit = psnr_hit if reference_psnr is None else psnr_hit & (matching.psnr >= reference_psnr.to(matching.psnr) + margin_db)
    every = matching if unmatched is None else PairScores(
        torch.cat([matching.psnr, unmatched.psnr.to(matching.psnr)]),
        torch.cat([matching.ssim, unmatched.ssim.to(matching.ssim)]),
        torch.cat([matching.mse, unmatched.mse.to(matching.mse)]),
    )
    capped = every.psnr.clamp(max=PSNR_CEILING)
    recovered = matching.psnr[hit].clamp(max=PSNR_CEILING)
    return ReconstructionScores(
        psnr_mean=capped.mean().item(),
        psnr_median=capped.quantile(0.5).item(),
        ssim_mean=every.ssim.mean().item(),
        mse_mean=every.mse.mean().item(),
        recovery_rate=int(hit.sum()) / n_targets,
        n_targets=n_targets,
        n_recovered=int(hit.sum()),
        psnr_rate=rate,
        n_psnr_recovered=int(psnr_hit.sum()),
        psnr_recovered_mean=recovered.mean().item() if recovered.numel() else None,
    )
