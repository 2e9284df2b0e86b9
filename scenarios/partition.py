"""How a training set is spread over FL clients: IID, Dirichlet label skew, or label shards.

Realistic audits need non-IID clients (the Dirichlet scheme is the study's default); every
scheme is deterministic given the seed and returns disjoint index sets that cover all samples.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Callable

import numpy as np
import torch

from flaudit.core.errors import ConfigError
from flaudit.core.registry import Registry, check_options

Scheme = Callable[..., list[np.ndarray]]  # (labels, num_clients, rng, **params) -> index arrays
PARTITIONS: Registry[Scheme] = Registry("partition scheme")
MAX_DIRICHLET_TRIES = 100


def partition_indices(
    scheme: str, labels: torch.Tensor, num_clients: int, seed: int, **params: object
) -> list[torch.Tensor]:
    """Sorted int64 index tensors, one per client, disjoint and covering ``range(len(labels))``."""
    split = PARTITIONS.get(scheme)
    check_options("partition", scheme, split, params, positional=3)
    label_array = torch.as_tensor(labels).cpu().numpy().reshape(-1)
    _check_int("num_clients", num_clients, 1, len(label_array))
    parts = split(label_array, num_clients, np.random.default_rng(seed), **params)
    return [torch.from_numpy(np.sort(part).astype(np.int64)) for part in parts]


def split_train_test(indices: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A client's local (train, test) indices. With ``test_fraction > 0`` and at least two
    samples, the test part holds at least one and the train part keeps at least one."""
    if not isinstance(test_fraction, Real) or not 0 <= test_fraction < 1:
        raise ConfigError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    index = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
    n = len(index)
    n_test = min(n - 1, max(1, round(test_fraction * n))) if test_fraction > 0 and n > 1 else 0
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    return index[order[n_test:]].sort().values, index[order[:n_test]].sort().values


def _check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"{name} must be an integer {bounds}, got {value!r}")


@PARTITIONS.register("iid", "shuffle, then near-equal shares (sizes differ by at most one)")
def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    return np.array_split(rng.permutation(len(labels)), num_clients)


@PARTITIONS.register("dirichlet", "per-class Dirichlet(alpha) shares over clients; smaller alpha, more label skew")
def dirichlet(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, alpha: float = 0.5, min_samples: int = 2
) -> list[np.ndarray]:
    """Redraws the whole partition until every client holds ``min_samples``, a bounded number of times."""
    if not isinstance(alpha, Real) or isinstance(alpha, bool) or not (alpha > 0 and math.isfinite(alpha)):
        raise ConfigError(f"dirichlet parameter alpha must be a finite number > 0, got {alpha!r}")
    _check_int("min_samples", min_samples, 1)
    if min_samples * num_clients > len(labels):
        raise ConfigError(
            f"dirichlet: {num_clients} clients x min_samples={min_samples} exceeds the {len(labels)} samples"
        )
    classes = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(MAX_DIRICHLET_TRIES):
        pieces: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for members in classes:
            shares = rng.dirichlet(np.full(num_clients, float(alpha)))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
            for client, piece in zip(pieces, np.split(rng.permutation(members), cuts)):
                client.append(piece)
        parts = [np.concatenate(client) for client in pieces]
        if min(len(part) for part in parts) >= min_samples:
            return parts
    raise ConfigError(
        f"dirichlet: no draw in {MAX_DIRICHLET_TRIES} tries gave each of {num_clients} clients at least "
        f"min_samples={min_samples} samples with alpha={alpha}; raise alpha or lower num_clients or min_samples"
    )


@PARTITIONS.register("shards", "sort by label, cut into num_clients*shards_per_client shards, deal them out")
def shards(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, shards_per_client: int = 2
) -> list[np.ndarray]:
    """The FedAvg paper's pathological non-IID split: each client sees few labels."""
    _check_int("shards_per_client", shards_per_client, 1)
    num_shards = num_clients * shards_per_client
    if num_shards > len(labels):
        raise ConfigError(
            f"shards: num_clients x shards_per_client = {num_shards} exceeds the {len(labels)} samples; "
            "lower shards_per_client"
        )
    shuffled = rng.permutation(len(labels))  # so shards of one label are random samples of it
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    pieces = np.array_split(by_label, num_shards)
    dealt = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.concatenate([pieces[s] for s in hand]) for hand in dealt]
