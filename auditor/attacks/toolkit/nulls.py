"""The guesses of a data-blind attacker: what it can return without observing the attacked
round, from its own data alone (``Attack.nulls``).

A reconstruction counts as leakage only by how far it beats these guesses on the same targets,
matching and criterion (README, "Scoring"). Every function here is seeded and reads only the
attacker's own images and labels.
"""

from __future__ import annotations

import torch

from flaudit.auditor.attacks.toolkit.label_counts import round_counts

MID_GREY = 0.5  # what an attacker holding no image at all can return


def drawn(images: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` of the attacker's own images, drawn without replacement (cycled when it holds
    fewer)."""
    rounds = -(-count // len(images))
    order = torch.cat([torch.randperm(len(images), generator=generator) for _ in range(rounds)] or [torch.zeros(0, dtype=torch.long)])
    return images[order[:count]]


def constant(image: torch.Tensor, count: int) -> torch.Tensor:
    return image[None].expand(count, -1, -1, -1).clone()


def grey(shape: tuple[int, int, int]) -> torch.Tensor:
    return torch.full(shape, MID_GREY)


def label_blind(labels: torch.Tensor | None, count: int, num_classes: int) -> torch.Tensor:
    """``count`` sorted labels in the proportions of the attacker's own label distribution
    (uniform when it holds no labels): the best label-count guess without the update."""
    shares = torch.ones(num_classes) if labels is None or labels.numel() == 0 else torch.bincount(labels, minlength=num_classes)
    counts = round_counts(shares.double(), count)
    return torch.repeat_interleave(torch.arange(num_classes), counts)


def class_means(images: torch.Tensor, labels: torch.Tensor | None, wanted: torch.Tensor) -> torch.Tensor:
    """The attacker's mean image of each ``wanted`` label (its overall mean for a label it holds
    no image of, or when it holds no labels)."""
    overall = images.mean(0)
    means = []
    for label in wanted.tolist():
        members = images[labels == label] if labels is not None else images[:0]
        means.append(members.mean(0) if len(members) else overall)
    return torch.stack(means) if means else images[:0]
