"""The PLI paper's FaceScrub protocol, generalised to any labelled dataset.

Target labels L are drawn from the seed. Half of each target label's training images are the
private data (clean), split among the clients by the scenario's partition scheme; a blurred
(box kernel) copy of the other half joins the public set as the insensitive domain ``D_a``.
Every other label is public: its clean images form ``D_0``. The clients' task and test set are
the target labels' clean images; a kind with an unlabelled public set (DS-FL) classifies the
target labels only, the others (FedMD, FedGEMS) every label, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from flaudit.core.tables import bounded, from_mapping
from flaudit.scenarios.datasets import DataOptions, DatasetSplits, ImageDataset, load_dataset
from flaudit.core.errors import ConfigError
from flaudit.scenarios.partition import partition_indices
from flaudit.scenarios.scenario import ClientData, FLWorld, ScenarioConfig, derive_seed, resolve_device
from flaudit.scenarios.views import PublicSet

PROTOCOL_STREAM = 20  # derive_seed(seed, PROTOCOL_STREAM, ...) draws the protocol's splits


@dataclass(frozen=True)
class LogitOptions:
    """``scenario.logit_options`` shared by every logit-sharing kind."""

    target_fraction: float = bounded(
        0.5, min=0.0, max=1.0, exclusive_min=True, doc="share of the labels that are private targets (L)"
    )
    blur_kernel: int = bounded(3, min=1, doc="box kernel blurring the target labels' public copies (D_a)")
    distill_epochs: int = bounded(1, min=1, doc="epochs of distillation on the public set per round")
    distill_batch_size: int = bounded(64, min=1, doc="batch size on the public set")


def parse_options(cls: type, config: ScenarioConfig):
    return from_mapping(cls, config.logit_options, f"scenario.logit_options ({config.kind})")


def box_blur(images: torch.Tensor, kernel: int) -> torch.Tensor:
    """Mean over a ``kernel`` x ``kernel`` box, borders replicated (the paper's FaceScrub blur)."""
    if kernel <= 1:
        return images.clone()
    left, right = (kernel - 1) // 2, kernel // 2
    padded = F.pad(images, (left, right, left, right), mode="replicate")
    return F.avg_pool2d(padded, kernel, stride=1)


@dataclass(frozen=True, eq=False)
class LogitWorld(FLWorld):
    """``data.train`` is the private data (clients index into it), ``data.test`` the target
    labels' clean test images; both in the task's class space. ``public_truth`` is the public
    set with its true dataset labels, for scoring only (the view shows ``public``)."""

    public: PublicSet
    public_truth: ImageDataset
    target_labels: tuple[int, ...]  # task class space


def _task_space(dataset: ImageDataset, keep: torch.Tensor, classes: torch.Tensor | None) -> ImageDataset:
    """``dataset[keep]`` relabelled to the task's classes (``classes``: dataset label of each task
    class; None keeps the dataset's labels)."""
    part = dataset.subset(keep)
    if classes is None:
        return part
    relabel = torch.full((dataset.num_classes,), -1, dtype=torch.long)
    relabel[classes] = torch.arange(len(classes))
    names = tuple(dataset.classes[int(c)] for c in classes)
    return ImageDataset(part.name, part.images, relabel[part.labels], names)


def _check_config(config: ScenarioConfig) -> None:
    unsupported = {
        "auxiliary_samples": (config.auxiliary_samples, 0, "the attacker's data is the public set"),
        "sample_fraction": (config.sample_fraction, 1.0, "every client shares logits every round"),
        "client_test_fraction": (config.client_test_fraction, 0.0, "clients are tested on the shared test set"),
    }
    for key, (value, only, why) in unsupported.items():
        if value != only:
            raise ConfigError(f"scenario.{key}={value!r}: kind={config.kind!r} takes only {only!r} ({why})")


def _halve_targets(labels: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(private, auxiliary) train indices: a random half of each target label's samples each."""
    private, auxiliary = [], []
    for label in targets.tolist():
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.as_tensor(rng.permutation(len(members)))]
        auxiliary.append(members[: len(members) // 2])
        private.append(members[len(members) // 2 :])
    return torch.cat(private).sort().values, torch.cat(auxiliary).sort().values


def _public_set(train: ImageDataset, targets: torch.Tensor, auxiliary: torch.Tensor, kernel: int) -> tuple[ImageDataset, torch.Tensor]:
    """D_0 (every non-target sample) then D_a (the ``auxiliary`` samples, blurred), with true
    labels, and the D_a mask."""
    index = torch.cat([torch.nonzero(~torch.isin(train.labels, targets)).flatten(), auxiliary])
    domain = torch.arange(len(index)) >= len(index) - len(auxiliary)
    images = train.images[index].clone()
    images[domain] = box_blur(images[domain], kernel)
    return ImageDataset(train.name, images, train.labels[index], train.classes), domain


def _test_index(test: ImageDataset, targets: torch.Tensor, config: ScenarioConfig) -> torch.Tensor:
    index = torch.nonzero(torch.isin(test.labels, targets)).flatten()
    if config.test_samples is None:
        return index
    index = index[torch.randperm(len(index), generator=torch.Generator().manual_seed(config.seed))]
    return index[: config.test_samples].sort().values


def build_logit_world(config: ScenarioConfig, options: LogitOptions, labelled_public: bool) -> LogitWorld:
    _check_config(config)
    resolve_device(config.device)
    data = load_dataset(config.dataset, DataOptions(config.data_root, config.image_size, config.max_samples, config.seed))
    train, n_classes = data.train, data.train.num_classes
    n_targets = min(n_classes - 1, max(1, round(options.target_fraction * n_classes)))
    rng = np.random.default_rng(derive_seed(config.seed, PROTOCOL_STREAM))
    targets = torch.as_tensor(np.sort(rng.permutation(n_classes)[:n_targets]))
    private_index, auxiliary_index = _halve_targets(train.labels, targets, rng)
    public_truth, domain = _public_set(train, targets, auxiliary_index, options.blur_kernel)
    task_classes = None if labelled_public else targets
    private = _task_space(train, private_index, task_classes)
    test = _task_space(data.test, _test_index(data.test, targets, config), task_classes)
    shards = partition_indices(config.partition, private.labels, config.clients, config.seed, **config.partition_options())
    clients = tuple(ClientData(k, torch.as_tensor(shard, dtype=torch.long), torch.empty(0, dtype=torch.long))
                    for k, shard in enumerate(shards))
    public = PublicSet(public_truth.images, public_truth.labels if labelled_public else None, domain)
    target_labels = tuple(range(n_targets)) if task_classes is not None else tuple(targets.tolist())
    return LogitWorld(config, DatasetSplits(private, test), clients, torch.empty(0, dtype=torch.long),
                      public, public_truth, target_labels)
