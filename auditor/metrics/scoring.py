"""Scores one attack output against the ground truth of the clients it targeted.

Reconstructions are clamped to [0, 1] (what an attacker would display; this can only help the
attacker, so the audit errs on the side of reporting leakage), matched to the targets by
optimal assignment and summarised with ``flaudit.auditor.metrics.measures`` under a
``Criterion``: a target is recovered when its match reaches the PSNR threshold and is closer to
it than to every image of a pool of non-members (the test split) by a margin. An attack that
returns no images and no labels recovered nothing (rate 0, no PSNR/SSIM); one that returns only
labels is a label-inference attack, scored order-free (``label_count_accuracy``): attacks
recover a batch's label multiset, not its order. Labels are scored only when they label the
whole batch (a partial batch's count accuracy is capped at 2B/(B+N), which says nothing).
Class representatives (``AttackOutput.represents``: PLI, TBI, DMGAN) are scored per class by
``auditor.class_scoring``. The same function scores an attack and its nulls.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from flaudit.auditor.attacks.base import AttackOutput
from flaudit.auditor.metrics.class_scoring import class_means, score_representatives
from flaudit.auditor.metrics.measures import (
    IDENTIFIABLE_MARGIN_DB, Matching, PairScores, label_count_accuracy, match_reconstructions, nearest_reference_psnr, summarize,
)
from flaudit.scenarios.datasets import ImageDataset
from flaudit.core.errors import FlauditError
from flaudit.scenarios.logit_sharing.world import LogitWorld
from flaudit.scenarios.scenario import FLWorld
from flaudit.scenarios.views import ClientTrace


class AttackOutputError(FlauditError):
    """An attack returned something the auditor cannot score (wrong shape, unknown client)."""


@dataclass(frozen=True)
class Criterion:
    """When a target counts as recovered, and what an unmatched target is scored against.

    ``reference``: non-member images of the same distribution the attacker never saw (the test
    split); a match must be closer to its target than to each of them by ``margin_db``. None:
    the PSNR threshold alone. ``fill``: the image an unmatched target is scored against in the
    all-target means (the attacker's own mean image); None: the matched pairs only."""

    psnr_threshold: float
    reference: torch.Tensor | None = None
    margin_db: float = IDENTIFIABLE_MARGIN_DB
    fill: torch.Tensor | None = None


@dataclass(frozen=True)
class RunScores:
    """One output's scores; None where they do not apply (no images, labels of part of a batch)."""

    n_targets: int
    n_reconstructed: int
    recovery_rate: float | None = None
    n_recovered: int | None = None
    psnr_rate: float | None = None
    n_psnr_recovered: int | None = None
    psnr_mean: float | None = None
    psnr_median: float | None = None
    ssim_mean: float | None = None
    mse_mean: float | None = None
    psnr_recovered_mean: float | None = None
    label_accuracy: float | None = None
    n_labels: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


LABEL_COUNT_SLACK = 0.25
"""Labels are scored when the attack names about as many as the targets: a count estimated
from the update (Poisson-sampled DP batches vary in size) may miss by a quarter of the batch; a
partial reconstruction's few labels are not scored, their count accuracy being capped by their
number, not by what leaked."""


@dataclass(frozen=True)
class Scored:
    scores: RunScores
    matching: Matching | None
    targets: torch.Tensor  # [N, C, H, W]
    reconstructions: torch.Tensor  # clamped, on the CPU

    @property
    def metrics(self) -> dict[str, Any]:
        return self.scores.as_dict()


def target_indices(output: AttackOutput, ground_truth: dict[int, ClientTrace]) -> torch.Tensor:
    """Train-set indices of every sample the targeted clients trained on in the attacked round."""
    if not output.target_clients:
        raise AttackOutputError("the attack named no target_clients")
    missing = [c for c in output.target_clients if c not in ground_truth]
    if missing:
        raise AttackOutputError(
            f"the attack targeted client {missing[0]}, which did not take part in the attacked round "
            f"(participants: {sorted(ground_truth)})"
        )
    return torch.cat([ground_truth[c].sample_indices for c in output.target_clients])


def _checked_images(output: AttackOutput, train: ImageDataset) -> torch.Tensor:
    """The output's images on the CPU, clamped to [0, 1], once their shape and values are valid."""
    images = output.images.detach().float().cpu()
    if images.dim() != 4 or tuple(images.shape[1:]) != train.image_shape:
        raise AttackOutputError(
            f"the attack returned images of shape {tuple(images.shape)}; expected [N, {', '.join(map(str, train.image_shape))}]"
        )
    if not torch.isfinite(images).all():
        raise AttackOutputError("the attack returned NaN or infinite pixel values")
    return images.clamp(0, 1)


def score_output(output: AttackOutput, world: FLWorld, ground_truth: dict[int, ClientTrace], criterion: Criterion) -> Scored:
    """Scores class representatives (``output.represents``) by the class criterion (against
    the public set's class means too in a logit-sharing world), any other output with ``score``."""
    if output.represents is None:
        return score(output, world.data.train, ground_truth, criterion)
    represents = output.represents.detach().cpu().long().flatten()
    images = _checked_images(output, world.data.train)
    if represents.numel() != images.shape[0]:
        raise AttackOutputError("`represents` must name one class per reconstructed image")
    private = world.data.train.subset(target_indices(output, ground_truth))
    public = class_means(world.public_truth.images, world.public_truth.labels)[1] if isinstance(world, LogitWorld) else None
    result = score_representatives(images, represents, private, public)
    scores = RunScores(result.n_targets, int(images.shape[0]))
    if result.n_targets:
        summary = summarize(result.matching, result.n_targets, criterion.psnr_threshold)
        scores = RunScores(
            result.n_targets, int(images.shape[0]), recovery_rate=result.n_recovered / result.n_targets,
            n_recovered=result.n_recovered, psnr_mean=summary.psnr_mean, psnr_median=summary.psnr_median,
            ssim_mean=summary.ssim_mean, mse_mean=summary.mse_mean,
        )
    return Scored(scores, result.matching, result.means, images)


def score(
    output: AttackOutput, train: ImageDataset, ground_truth: dict[int, ClientTrace], criterion: Criterion | float
) -> Scored:
    """``criterion``: a ``Criterion``, or a PSNR threshold alone."""
    criterion = criterion if isinstance(criterion, Criterion) else Criterion(float(criterion))
    index = target_indices(output, ground_truth)
    if index.numel() == 0:
        raise AttackOutputError("the targeted clients trained on no samples in the attacked round")
    n_targets = int(index.numel())
    targets, true_labels = train.images[index], train.labels[index]
    images = _checked_images(output, train)
    found: dict[str, Any] = {}
    matching = None
    if images.shape[0] > 0:
        matching = match_reconstructions(images, targets)
        reference = None
        if criterion.reference is not None and len(criterion.reference):
            reference = nearest_reference_psnr(images, criterion.reference)[matching.recon_idx]
        unmatched = None
        if criterion.fill is not None and len(matching.target_idx) < n_targets:
            left = torch.ones(n_targets, dtype=torch.bool)
            left[matching.target_idx] = False
            unmatched = PairScores.of(criterion.fill[None].expand(int(left.sum()), -1, -1, -1), targets[left])
        summary = summarize(
            matching, n_targets, criterion.psnr_threshold, reference_psnr=reference, margin_db=criterion.margin_db,
            unmatched=unmatched,
        )
        found.update(asdict(summary))
        del found["n_targets"]
    elif output.labels is None:  # an image attack that isolated nothing: it recovered nothing
        found.update(recovery_rate=0.0, n_recovered=0)
    if output.labels is not None:
        labels = output.labels.detach().cpu().flatten()
        found["n_labels"] = int(labels.numel())
        if abs(labels.numel() - n_targets) <= int(LABEL_COUNT_SLACK * n_targets):
            found["label_accuracy"] = label_count_accuracy(labels, true_labels, train.num_classes)
    return Scored(RunScores(n_targets, int(images.shape[0]), **found), matching, targets, images)
