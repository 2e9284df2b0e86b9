import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flaudit.core.errors import ConfigError, UnknownNameError
from flaudit.scenarios.partition import PARTITIONS, partition_indices, split_train_test

LABELS = torch.arange(10).repeat_interleave(100)  # 10 classes x 100 samples


def assert_partition(parts: list[torch.Tensor], n: int) -> None:
    assert all(p.dtype == torch.int64 and len(p) > 0 for p in parts)
    everything = torch.cat(parts)
    assert len(everything) == n and torch.equal(everything.sort().values, torch.arange(n))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_disjoint_covering_deterministic(scheme):
    parts = partition_indices(scheme, LABELS, 10, seed=1)
    assert len(parts) == 10
    assert_partition(parts, len(LABELS))
    again = partition_indices(scheme, LABELS, 10, seed=1)
    other = partition_indices(scheme, LABELS, 10, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))
    assert not all(torch.equal(a, b) for a, b in zip(parts, other))


def test_iid_sizes():
    sizes = [len(p) for p in partition_indices("iid", LABELS, 7, seed=0)]
    assert max(sizes) - min(sizes) <= 1


def test_shards_give_few_labels():
    parts = partition_indices("shards", LABELS, 10, seed=0, shards_per_client=2)
    assert all(len(p) == 100 for p in parts)
    assert all(len(LABELS[p].unique()) <= 2 for p in parts)


def label_skew(alpha: float) -> float:
    """Mean total-variation distance between each client's label mix and the global one."""
    distances = []
    for seed in range(5):
        for part in partition_indices("dirichlet", LABELS, 10, seed=seed, alpha=alpha):
            mix = torch.bincount(LABELS[part], minlength=10).double() / len(part)
            distances.append(0.5 * (mix - 0.1).abs().sum().item())
    return float(np.mean(distances))


def test_dirichlet_skew_falls_with_alpha():
    skews = [label_skew(alpha) for alpha in (0.1, 1.0, 100.0)]
    assert skews[0] > skews[1] > skews[2]
    assert skews[0] > 0.5 and skews[2] < 0.15


def test_dirichlet_min_samples():
    parts = partition_indices("dirichlet", LABELS, 10, seed=0, alpha=0.1, min_samples=20)
    assert min(len(p) for p in parts) >= 20


@pytest.mark.parametrize(
    "scheme, clients, params, word",
    [
        ("dirichlet", 10, {"alpha": 0}, "alpha"),
        ("dirichlet", 10, {"alpha": -1.0}, "alpha"),
        ("dirichlet", 10, {"min_samples": 0}, "min_samples"),
        ("dirichlet", 10, {"min_samples": 200}, "min_samples"),
        ("dirichlet", 100, {"alpha": 0.001, "min_samples": 9}, "min_samples"),  # possible, never drawn
        ("shards", 10, {"shards_per_client": 0}, "shards_per_client"),
        ("shards", 10, {"shards_per_client": 101}, "shards_per_client"),
        ("iid", 0, {}, "num_clients"),
        ("iid", 1001, {}, "num_clients"),
        ("iid", 2.5, {}, "num_clients"),
        ("iid", 10, {"alpha": 1.0}, "alpha"),
        ("dirichlet", 10, {"beta": 1.0}, "beta"),
    ],
)
def test_bad_parameters(scheme, clients, params, word):
    with pytest.raises(ConfigError, match=word):
        partition_indices(scheme, LABELS, clients, seed=0, **params)


def test_unknown_scheme():
    with pytest.raises(UnknownNameError, match="dirichlet"):
        partition_indices("dirichlett", LABELS, 2, seed=0)
    assert PARTITIONS.names() == ["dirichlet", "iid", "shards"]


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=2, max_size=120),
    data=st.data(),
    seed=st.integers(0, 2**32 - 1),
)
def test_partition_property(labels, data, seed):
    n = len(labels)
    scheme = data.draw(st.sampled_from(["iid", "dirichlet", "shards"]))
    if scheme == "dirichlet":
        clients = data.draw(st.integers(1, n // 2))
        params = {"alpha": data.draw(st.floats(0.05, 100.0)), "min_samples": 2}
    elif scheme == "shards":
        params = {"shards_per_client": data.draw(st.integers(1, min(3, n)))}
        clients = data.draw(st.integers(1, n // params["shards_per_client"]))
    else:
        clients, params = data.draw(st.integers(1, n)), {}
    try:
        parts = partition_indices(scheme, torch.tensor(labels), clients, seed, **params)
    except ConfigError as error:  # only an unlucky skewed draw may fail, and it says why
        assert scheme == "dirichlet" and "min_samples" in str(error)
        return
    assert len(parts) == clients
    assert_partition(parts, n)


def test_split_train_test():
    indices = torch.arange(100, 120)
    train, test = split_train_test(indices, 0.25, seed=0)
    assert (len(train), len(test)) == (15, 5)
    assert torch.equal(torch.cat([train, test]).sort().values, indices)
    again = split_train_test(indices, 0.25, seed=0)
    assert torch.equal(train, again[0]) and torch.equal(test, again[1])
    assert [len(p) for p in split_train_test(torch.tensor([3, 7]), 0.01, seed=0)] == [1, 1]
    assert [len(p) for p in split_train_test(torch.tensor([3]), 0.5, seed=0)] == [1, 0]
    assert [len(p) for p in split_train_test(indices, 0.0, seed=0)] == [20, 0]
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="test_fraction"):
            split_train_test(indices, bad, seed=0)
