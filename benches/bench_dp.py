"""One client's local training under DP-SGD (Opacus: per-sample gradients, clipping, noise,
Poisson batches, the accountant) against the plain local training of the same client, as
``FedAvgSimulation`` runs them (``train_client`` with and without the ``dp`` defense's
training wrapper): the study's CNN on 3x32x32 photo patches, 128 samples, batches of 16, one
epoch. The floor is the plain step; benches/conftest.py prints "dp / plain" (DP-SGD's cost).

    .venv/bin/python -m pytest benches/bench_dp.py
"""

from __future__ import annotations

import pytest

from flaudit.defenses.base import compose
from flaudit.defenses.dp import DPSGD
from flaudit.scenarios.client import make_loader, train_client
from flaudit.scenarios.scenario import ScenarioConfig, build_world

CLIENTS, PER_CLIENT, BATCH = 4, 128, 16
# Opacus' per-sample-gradient hooks and the plain step run the same convolutions; the ratio
# moves with how well the machine's BLAS handles the per-sample einsums, little with load.
TOLERANCE = 0.4


@pytest.fixture(scope="module")
def world():
    return build_world(ScenarioConfig(
        dataset="photo_patches", model="cnn", clients=CLIENTS, partition="iid", batch_size=BATCH,
        max_samples=CLIENTS * PER_CLIENT, rounds=1, seed=0,
    ))


@pytest.mark.parametrize("training", ["dp", "plain"])
def test_local_training(benchmark, world, training):
    defenses = [DPSGD()] if training == "dp" else []
    hooks = compose(defenses, world)
    model = world.new_model()
    for prepare in hooks.model_preparers:
        model = prepare(model)
    indices = world.clients[0].train_indices
    train = world.data.train
    rounds = iter(range(1000))

    def local_training():
        loader = make_loader(train.images[indices], train.labels[indices], indices, BATCH, seed=0)
        return train_client(0, next(rounds), model, loader, world.config.training, hooks.training_wrappers)

    benchmark.group = f"local training cnn 3x32x32, {len(indices)} samples, batch {BATCH}, cpu"
    benchmark.extra_info.update(role="candidate" if training == "dp" else "floor", label=training, tolerance=TOLERANCE)
    _, trace = benchmark.pedantic(local_training, rounds=3, warmup_rounds=1, iterations=1)
    assert len(trace.batches) >= 4  # a real epoch (Poisson batches vary in number)
