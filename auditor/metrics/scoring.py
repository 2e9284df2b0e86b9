"""Scores one attack output against the ground truth of the clients it targeted.

Reconstructions are clamped to [0, 1] (what an attacker would display; this can only help the
attacker, so the audit errs on the side of reporting leakage), matched to the targets by
optimal assignment and summarised with ``flaudit.auditor.metrics.measures``. An attack that returns no images
and no labels recovered nothing (rate 0, no PSNR/SSIM); one that returns only labels is a
label-inference attack, scored order-free (``label_count_accuracy``): attacks recover a
batch's label multiset, not its order. Class representatives (``AttackOutput.represents``, the
logit-inversion attacks) are scored per class by ``auditor.class_scoring``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from flaudit.auditor.attacks.base import AttackOutput
from flaudit.auditor.metrics.class_scoring import score_representatives
from flaudit.auditor.metrics.measures import Matching, label_count_accuracy, match_reconstructions, summarize
from flaudit.scenarios.datasets import ImageDataset
from flaudit.core.errors import FlauditError
from flaudit.scenarios.logit_sharing.world import LogitWorld
from flaudit.scenarios.scenario import FLWorld
from flaudit.scenarios.views import ClientTrace


class AttackOutputError(FlauditError):
    """An attack returned something the auditor cannot score (wrong shape, unknown client)."""


@dataclass(frozen=True)
class Scored:
    metrics: dict[str, Any]
    matching: Matching | None
    targets: torch.Tensor  # [N, C, H, W]
    reconstructions: torch.Tensor  # clamped, on the CPU


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


def score_output(output: AttackOutput, world: FLWorld, ground_truth: dict[int, ClientTrace], psnr_threshold: float) -> Scored:
    """Scores class representatives (``output.represents``) by the class criterion against the
    world's public set, any other output with ``score``."""
    if output.represents is None:
        return score(output, world.data.train, ground_truth, psnr_threshold)
    if not isinstance(world, LogitWorld):
        raise AttackOutputError("class representatives are scored against a public set; this scenario has none")
    represents = output.represents.detach().cpu().long().flatten()
    images = _checked_images(output, world.data.train)
    if represents.numel() != images.shape[0] or represents.unique().numel() != represents.numel():
        raise AttackOutputError("`represents` must name one distinct class per reconstructed image")
    private = world.data.train.subset(target_indices(output, ground_truth))
    metrics, matching, means = score_representatives(images, represents, private, world.public_truth)
    return Scored(metrics, matching, means, images)


def score(
    output: AttackOutput, train: ImageDataset, ground_truth: dict[int, ClientTrace], psnr_threshold: float
) -> Scored:
    index = target_indices(output, ground_truth)
    if index.numel() == 0:
        raise AttackOutputError("the targeted clients trained on no samples in the attacked round")
    targets, true_labels = train.images[index], train.labels[index]
    images = _checked_images(output, train)
    metrics: dict[str, Any] = {"n_targets": int(index.numel()), "n_reconstructed": int(images.shape[0])}
    matching = None
    if images.shape[0] > 0:
        matching = match_reconstructions(images, targets)
        scores = summarize(matching, int(index.numel()), psnr_threshold)
        metrics.update(
            recovery_rate=scores.recovery_rate,
            n_recovered=scores.n_recovered,
            psnr_mean=scores.psnr_mean,
            psnr_median=scores.psnr_median,
            ssim_mean=scores.ssim_mean,
            mse_mean=scores.mse_mean,
        )
    elif output.labels is None:  # an image attack that isolated nothing: it recovered nothing
        metrics.update(recovery_rate=0.0, n_recovered=0)
    if output.labels is not None:
        labels = output.labels.detach().cpu().flatten()
        metrics["label_accuracy"] = label_count_accuracy(labels, true_labels, train.num_classes)
    return Scored(metrics, matching, targets, images)
