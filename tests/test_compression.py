"""Compression defenses: exact semantics of each scheme, error feedback, ratios, utility."""

import math

import pytest
import torch
from torch import nn

from flaudit.defenses.base import compose
from flaudit.defenses.compression import QuantizeCompression, TopKCompression, index_bits
from flaudit.defenses.registry import DEFENSES
from flaudit.core.errors import ConfigError, InvalidUpdateError
from flaudit.scenarios.fedavg import FedAvgSimulation
from flaudit.scenarios.scenario import ScenarioConfig, build_world
from flaudit.scenarios.updates import ParamLayout

@pytest.fixture(scope="module")
def layout():
    torch.manual_seed(0)
    return ParamLayout.of(nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 5)))


def transform_of(defense_name, table, world):
    defense = DEFENSES.get(defense_name).from_table(table)
    return defense, compose([defense], world).update_transforms[0]


def random_update(layout, seed=0):
    return torch.randn(layout.numel, generator=torch.Generator().manual_seed(seed))


def test_every_compression_is_registered():
    assert {"topk", "randk", "quantize", "sign"} <= set(DEFENSES.names())


def test_global_topk_keeps_exactly_the_k_largest_magnitudes(small_world, layout):
    defense, transform = transform_of("topk", {"ratio": 0.05, "scope": "global"}, small_world)
    update = random_update(layout)
    sent = transform.transform(0, 0, update, layout)
    k = math.ceil(0.05 * layout.numel)
    kept = sent.nonzero().squeeze(1)
    assert len(kept) == k
    assert torch.equal(sent[kept], update[kept])
    assert torch.equal(update[kept].abs().sort().values, update.abs().topk(k).values.sort().values)
    ratio = defense.figures()["compression_ratio"]
    assert ratio == pytest.approx(32 * layout.numel / (k * 32 + index_bits(k, layout.numel)))


def test_layer_topk_keeps_k_per_tensor(small_world, layout):
    _, transform = transform_of("topk", {"ratio": 0.1, "scope": "layer"}, small_world)
    update = random_update(layout, 1)
    sent = layout.unflatten(transform.transform(0, 0, update, layout))
    original = layout.unflatten(update)
    for name, shape in zip(layout.names, layout.shapes):
        k = max(1, math.ceil(0.1 * shape.numel()))
        part, full = sent[name].reshape(-1), original[name].reshape(-1)
        assert int((part != 0).sum()) == k, name
        assert torch.equal(part[part != 0].abs().sort().values, full.abs().topk(k).values.sort().values)


def test_randk_keeps_k_rescaled_and_is_unbiased(small_world, layout):
    _, transform = transform_of("randk", {"ratio": 0.2, "scope": "layer"}, small_world)
    update = random_update(layout, 2)
    draws = torch.stack([transform.transform(0, r, update, layout) for r in range(3000)])
    first = layout.unflatten(draws[0])
    for name, shape in zip(layout.names, layout.shapes):
        n, k = shape.numel(), max(1, math.ceil(0.2 * shape.numel()))
        part = first[name].reshape(-1)
        kept = part != 0
        assert int(kept.sum()) == k
        torch.testing.assert_close(part[kept], layout.unflatten(update)[name].reshape(-1)[kept] * n / k)
    # E[C(x)] = x: each entry's mean over draws is within 5 standard errors of x.
    spread = update.abs() * math.sqrt(1 / 0.2 - 1)  # per-draw std of an entry when n/k = 1/0.2
    error = (draws.mean(0) - update).abs()
    assert bool((error <= 5 * spread / math.sqrt(len(draws)) + 1e-6).all())
    assert not torch.equal(draws[0], draws[1])  # fresh indices every round


def test_randk_without_rescale_keeps_values(small_world, layout):
    _, transform = transform_of("randk", {"ratio": 0.3, "rescale": False, "scope": "global"}, small_world)
    update = random_update(layout, 3)
    sent = transform.transform(1, 0, update, layout)
    kept = sent != 0
    assert int(kept.sum()) == math.ceil(0.3 * layout.numel)
    assert torch.equal(sent[kept], update[kept])


def buckets(layout, vector, size):
    """(tensor name, bucket) pairs: each tensor cut into runs of ``size`` entries."""
    return [
        (name, bucket)
        for name, part in layout.unflatten(vector).items()
        for bucket in part.reshape(-1).split(size or part.numel())
    ]


@pytest.mark.parametrize("bits, bucket_size", [(1, None), (3, None), (8, None), (3, 64)])
def test_uniform_quantization_lands_on_the_grid_within_its_bound(small_world, layout, bits, bucket_size):
    defense, transform = transform_of(
        "quantize", {"mode": "uniform", "bits": bits, "bucket_size": bucket_size}, small_world
    )
    update = random_update(layout, 4)
    sent = transform.transform(0, 0, update, layout)
    for (name, part), (_, decoded) in zip(buckets(layout, update, bucket_size),
                                          buckets(layout, sent, bucket_size)):
        low, high = float(part.min()), float(part.max())
        spacing = (high - low) / (2**bits - 1)
        levels = (decoded - low) / spacing
        torch.testing.assert_close(levels, levels.round(), atol=1e-3, rtol=0)
        assert decoded.unique().numel() <= 2**bits
        assert float((decoded - part).abs().max()) <= spacing / 2 * (1 + 1e-4)
    figures = defense.figures()
    assert figures["quantization_error_max"] <= figures["quantization_error_bound"] * (1 + 1e-4)
    size = bucket_size or max(s.numel() for s in layout.shapes)
    expected_bits = sum(s.numel() * bits + 64 * math.ceil(s.numel() / min(size, s.numel()))
                        for s in layout.shapes)
    assert figures["compression_ratio"] == pytest.approx(32 * layout.numel / expected_bits)


def test_stochastic_quantization_is_qsgd_and_unbiased(small_world, layout):
    defense, transform = transform_of(
        "quantize", {"mode": "stochastic", "bits": 3, "bucket_size": 64}, small_world
    )
    update = random_update(layout, 5)
    levels = 2 ** (3 - 1) - 1
    draws = torch.stack([transform.transform(0, r, update, layout) for r in range(4000)])
    spacing = []
    for (name, part), (_, decoded) in zip(buckets(layout, update, 64), buckets(layout, draws[0], 64)):
        norm = float(part.norm())
        steps = decoded.abs() / norm * levels
        torch.testing.assert_close(steps, steps.round(), atol=1e-4, rtol=0)
        assert bool((torch.sign(decoded) * torch.sign(part) >= 0).all())
        assert float((decoded - part).abs().max()) < norm / levels * (1 + 1e-5)
        spacing.append(torch.full((part.numel(),), norm / levels))
    # Unbiased: per entry, the mean of 4000 draws is within 5 standard errors (std <= spacing/2).
    bound = 5 * torch.cat(spacing) / 2 / math.sqrt(len(draws))
    assert bool(((draws.mean(0) - update).abs() <= bound).all())
    figures = defense.figures()
    assert 0 < figures["quantization_error_max"] <= figures["quantization_error_bound"]
    assert figures["variance_bound"] == pytest.approx(min(64 / levels**2, 8 / levels))


def test_sign_sends_sign_times_mean_magnitude(small_world, layout):
    defense, transform = transform_of("sign", {"scope": "layer"}, small_world)
    update = random_update(layout, 6)
    sent = layout.unflatten(transform.transform(0, 0, update, layout))
    for name, part in layout.unflatten(update).items():
        expected = torch.where(part >= 0, 1.0, -1.0) * part.abs().mean()
        torch.testing.assert_close(sent[name], expected)
    expected_bits = sum(s.numel() + 32 for s in layout.shapes)
    assert defense.figures()["compression_ratio"] == pytest.approx(32 * layout.numel / expected_bits)


@pytest.mark.parametrize(
    "name, table",
    [
        ("topk", {"ratio": 0.05}),
        ("randk", {"ratio": 0.1, "rescale": False}),
        ("quantize", {"bits": 2, "mode": "stochastic"}),
        ("sign", {"scope": "global"}),
    ],
)
def test_error_feedback_loses_nothing(small_world, layout, name, table):
    """sum of uploads + residual == sum of updates, per client, for any number of rounds.

    In float64, so that the check is of the bookkeeping, not of float32 rounding.
    """
    defense, transform = transform_of(name, {**table, "error_feedback": True}, small_world)
    updates = {c: [random_update(layout, 10 * c + r).double() for r in range(6)] for c in (0, 1)}
    uploads = {0: [], 1: []}
    for r in range(6):
        for c in (0, 1):
            if c == 1 and r % 2:  # client 1 skips every other round: its residual waits for it
                continue
            uploads[c].append(transform.transform(c, r, updates[c][r], layout))
    for c, taken in ((0, range(6)), (1, range(0, 6, 2))):
        total = torch.stack([updates[c][r] for r in taken]).sum(0)
        sent = torch.stack(uploads[c]).sum(0)
        torch.testing.assert_close(sent + transform.residuals[c], total, atol=1e-9, rtol=1e-9)
        assert float(transform.residuals[c].norm()) > 0
    assert defense.figures()["residual_norm_max"] > 0


def test_without_error_feedback_nothing_is_carried(small_world, layout):
    _, transform = transform_of("topk", {"ratio": 0.1}, small_world)
    update = random_update(layout, 7)
    first = transform.transform(0, 0, update, layout)
    assert torch.equal(transform.transform(0, 1, update, layout), first)
    assert transform.residuals == {}


@pytest.mark.parametrize(
    "name, table, match",
    [
        ("topk", {"ratio": 0.0}, r"defense.topk.ratio: must be > 0"),
        ("randk", {"ratio": 1.5}, r"defense.randk.ratio: must be <= 1"),
        ("quantize", {"bits": 1, "mode": "stochastic"}, r"bits=1: stochastic quantization needs"),
        ("quantize", {"bits": 32}, r"defense.quantize.bits: must be <= 16"),
        ("sign", {"scope": "bucket"}, r"defense.sign.scope: must be one of"),
        ("topk", {"k": 3}, r"unknown key 'k'"),
    ],
)
def test_bad_parameters_are_named(name, table, match):
    with pytest.raises(ConfigError, match=match):
        DEFENSES.get(name).from_table(table)


def test_compressed_fedavg_still_learns_digits(small_world):
    """Utility: top-k 10% with error feedback, and 4-bit QSGD, stay close to plain FedAvg."""
    plain = FedAvgSimulation(small_world).run(progress=False).final_test_accuracy
    topk = TopKCompression.from_table({"ratio": 0.1, "error_feedback": True})
    qsgd = QuantizeCompression.from_table({"mode": "stochastic", "bits": 4})
    accuracy = {}
    for defense in (topk, qsgd):
        result = FedAvgSimulation(small_world, compose([defense], small_world)).run(progress=False)
        accuracy[defense.name] = result.final_test_accuracy
    assert plain >= 0.9
    assert accuracy["topk"] >= plain - 0.1 and accuracy["quantize"] >= plain - 0.1, accuracy
    assert topk.figures()["compression_ratio"] > 4


@pytest.fixture(scope="module")
def default_world():
    """The default scenario: digits, cnn, 10 Dirichlet(0.5) clients, 20 rounds, E=1, B=16."""
    return build_world(ScenarioConfig())


@pytest.fixture(scope="module")
def plain_accuracy(default_world):
    accuracy = FedAvgSimulation(default_world).run(progress=False).final_test_accuracy
    print(f"\n| none | {accuracy:.3f} | |")
    return accuracy


def utility(world, name, table):
    """Final test accuracy with one defense; prints a row of the utility table."""
    defense = DEFENSES.get(name).from_table(table)
    accuracy = FedAvgSimulation(world, compose([defense], world)).run(progress=False).final_test_accuracy
    shown = {k: round(v, 4) for k, v in defense.figures().items()}
    print(f"| {name} {table} | {accuracy:.3f} | {shown} |")
    return accuracy


@pytest.mark.slow
def test_topk_utility_and_error_feedback(default_world, plain_accuracy):
    mild = utility(default_world, "topk", {"ratio": 0.1})
    harsh = utility(default_world, "topk", {"ratio": 0.01})
    harsh_ef = utility(default_world, "topk", {"ratio": 0.01, "error_feedback": True})
    assert plain_accuracy >= 0.9 and mild >= plain_accuracy - 0.03
    assert harsh <= plain_accuracy - 0.1
    assert harsh_ef >= harsh + 0.1  # error feedback recovers most of what top-1% loses


@pytest.mark.slow
def test_randk_utility(default_world, plain_accuracy):
    assert utility(default_world, "randk", {"ratio": 0.1}) >= plain_accuracy - 0.03
    # Unbiased random-1% multiplies the update's variance by ~99: FedAvg diverges.
    with pytest.raises(InvalidUpdateError, match="non-finite"):
        utility(default_world, "randk", {"ratio": 0.01})
    # Unscaled, the update shrinks 100x: 20 rounds leave the model at chance.
    assert utility(default_world, "randk", {"ratio": 0.01, "rescale": False}) < 0.2


@pytest.mark.slow
def test_quantize_utility(default_world, plain_accuracy):
    for table in ({"bits": 8}, {"bits": 2}, {"mode": "stochastic", "bits": 4},
                  {"mode": "stochastic", "bits": 2}):
        assert utility(default_world, "quantize", table) >= plain_accuracy - 0.03, table


@pytest.mark.slow
def test_sign_utility(default_world, plain_accuracy):
    plain_sign = utility(default_world, "sign", {})
    with_ef = utility(default_world, "sign", {"error_feedback": True})
    assert plain_sign >= plain_accuracy - 0.06 and with_ef >= plain_sign
