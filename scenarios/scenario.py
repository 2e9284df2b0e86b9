"""A scenario: the FL world a config describes (data, partition, model, local training).

``ScenarioConfig`` is the ``[scenario]`` table of a config file. ``build_world`` turns it into
an ``FLWorld``: the loaded data split into per-client train/test shards, plus the attacker's
auxiliary set carved off beforehand (disjoint from every client).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flaudit.core.tables import bounded
from flaudit.scenarios.datasets import DataOptions, DatasetSplits, ImageDataset, load_dataset
from flaudit.core.errors import ConfigError
from flaudit.scenarios.models import build_model
from flaudit.scenarios.partition import partition_indices, split_train_test
from flaudit.scenarios.views import TrainingSpec


@dataclass(frozen=True)
class ScenarioConfig:
    """The simulated federation. Defaults: the study's CNN on embedded digits, non-IID."""

    kind: str = "fedavg"  # the protocol (scenarios.kinds.SCENARIO_KINDS): fedavg, fedmd, dsfl, fedgems, recorded
    recording: Path | None = None  # kind = "recorded": the folder a Flower RecordingStrategy wrote
    logit_options: dict[str, Any] = bounded({})  # the logit-sharing kinds' options, checked by the kind
    dataset: str = "digits"
    data_root: Path | None = None
    image_size: int | None = bounded(None, min=4, max=1024, doc="pixels per side; larger would need GBs per batch")
    max_samples: int | None = bounded(None, min=1)
    model: str = "cnn"
    model_options: dict[str, Any] = bounded({})
    extra_classes: int = bounded(
        0, min=0, max=100_000, doc="output classes beyond the data's (DMGAN's 'fake' class); no sample carries them"
    )
    clients: int = bounded(10, min=1, max=100_000)
    sample_fraction: float = bounded(1.0, min=0.0, max=1.0, exclusive_min=True)
    rounds: int = bounded(20, min=1, max=100_000)
    local_epochs: int = bounded(1, min=1, max=10_000)
    batch_size: int = bounded(16, min=1, max=65_536)
    lr: float = bounded(0.05, min=0.0, max=100.0, exclusive_min=True)
    momentum: float = bounded(0.9, min=0.0, max=1.0)
    weight_decay: float = bounded(0.0, min=0.0, max=100.0)
    partition: str = "dirichlet"
    alpha: float | None = bounded(None, min=0.0, max=1e6, exclusive_min=True)
    shards_per_client: int | None = bounded(None, min=1)
    client_test_fraction: float = bounded(0.0, min=0.0, max=0.9)
    auxiliary_samples: int = bounded(0, min=0)
    test_samples: int | None = bounded(None, min=1)
    seed: int = bounded(0, min=0)
    device: str = "cpu"

    @property
    def training(self) -> TrainingSpec:
        return TrainingSpec(
            self.local_epochs, self.batch_size, self.lr, self.momentum, self.weight_decay
        )

    def partition_options(self) -> dict[str, Any]:
        """The partition parameters the user set (each scheme rejects the ones it lacks)."""
        options = {"alpha": self.alpha, "shards_per_client": self.shards_per_client}
        return {k: v for k, v in options.items() if v is not None}

    def replace(self, **changes: Any) -> "ScenarioConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ClientData:
    client_id: int
    train_indices: torch.Tensor  # into FLWorld.data.train
    test_indices: torch.Tensor


@dataclass(frozen=True)
class FLWorld:
    config: ScenarioConfig
    data: DatasetSplits
    clients: tuple[ClientData, ...]
    auxiliary_indices: torch.Tensor

    @property
    def auxiliary(self) -> ImageDataset:
        """The attacker's auxiliary data: same distribution, no client's sample."""
        return self.data.train.subset(self.auxiliary_indices)

    @property
    def test_set(self) -> ImageDataset:
        return self.data.test

    def new_model(self) -> nn.Module:
        """The global model at initialisation, seeded by the scenario seed."""
        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = build_model(
                cfg.model, self.data.train.image_shape, self.data.train.num_classes + cfg.extra_classes,
                **cfg.model_options,
            )
        return model.to(resolve_device(cfg.device))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"scenario.device={name!r}: expected cpu, cuda, cuda:N or auto") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"scenario.device={name!r}: expected cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"scenario.device={name!r} but CUDA is not available on this machine")
    return device


def derive_seed(*parts: int) -> int:
    """A 32-bit seed for one (seed, round, client, ...) tuple, independent across tuples."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def build_world(config: ScenarioConfig) -> FLWorld:
    """The FedAvg world; other kinds build theirs through ``scenarios.kinds``."""
    if config.kind != "fedavg":
        raise ConfigError(f"scenario.kind={config.kind!r} is not FedAvg: run it with `flaudit run` (scenarios.kinds)")
    resolve_device(config.device)
    data = load_dataset(
        config.dataset,
        DataOptions(config.data_root, config.image_size, config.max_samples, config.seed),
    )
    if config.test_samples is not None and config.test_samples < len(data.test):
        keep = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(config.seed))
        data = DatasetSplits(data.train, data.test.subset(keep[: config.test_samples].sort().values))
    n_train = len(data.train)
    if config.auxiliary_samples >= n_train:
        raise ConfigError(
            f"scenario.auxiliary_samples={config.auxiliary_samples} leaves no training data "
            f"(the train split has {n_train} samples)"
        )
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(derive_seed(config.seed, 1)))
    auxiliary = order[: config.auxiliary_samples].sort().values
    pool = order[config.auxiliary_samples :].sort().values
    shards = partition_indices(
        config.partition, data.train.labels[pool], config.clients, config.seed,
        **config.partition_options(),
    )
    clients = []
    for client_id, shard in enumerate(shards):
        train, test = split_train_test(
            pool[shard], config.client_test_fraction, derive_seed(config.seed, 2, client_id)
        )
        clients.append(ClientData(client_id, train, test))
    return FLWorld(config, data, tuple(clients), auxiliary)
