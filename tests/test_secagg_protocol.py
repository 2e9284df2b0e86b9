"""The secure-aggregation protocol (Bonawitz et al. 2017 and SecAgg+) and the `secagg` /
`secagg_plus` defenses: exact sums under any survivable dropouts, aborts with no result
otherwise, what the server learns, and weighted FedAvg through the simulation."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from flaudit.defenses.base import compose
from flaudit.defenses.registry import DEFENSES
from flaudit.defenses.secagg import (
    AggregationAborted,
    ClientInput,
    FixedPoint,
    ProtocolConfig,
    SecAgg,
    SecAggPlus,
    run_secure_aggregation,
    shamir,
)
from flaudit.defenses.secagg.dropouts import DropoutPlan, Stage
from flaudit.defenses.secagg.graph import NeighbourGraph
from flaudit.defenses.secagg.keys import ChannelError, KeyPair, channel_key, open_sealed, pairwise_mask_seed, seal
from flaudit.defenses.secagg.protocol import SecAggClient
from flaudit.core.errors import ConfigError
from flaudit.scenarios.fedavg import FedAvgSimulation
from flaudit.scenarios.scenario import ScenarioConfig, build_world


def quantized(update: torch.Tensor, fixed_point: FixedPoint, weight: int) -> np.ndarray:
    x = np.clip(update.double().numpy(), -fixed_point.clip_range, fixed_point.clip_range)
    return np.rint(x * (weight * fixed_point.levels / fixed_point.clip_range)).astype(np.int64)


def check_result(result, inputs, fixed_point) -> None:
    """The unmasked sum is exactly the survivors' quantized sum; the mean is within the bound."""
    survivors = [i for i in inputs if i.client_id in result.survivors]
    expected = sum(quantized(i.update, fixed_point, i.weight) for i in survivors)
    assert np.array_equal(result.sum.numpy().astype(np.int64) % 2**32, expected % 2**32)
    total_weight = sum(i.weight for i in survivors)
    assert result.total_weight == total_weight
    exact = sum(i.weight * i.update.double().clamp(-fixed_point.clip_range, fixed_point.clip_range) for i in survivors)
    error = (result.mean.double() - exact / total_weight).abs().max().item()
    assert error <= result.error_bound == fixed_point.error_bound(len(survivors), total_weight)


@st.composite
def rounds(draw, sparse: bool):
    """Clients with random updates and weights, a threshold, a graph and a dropout plan."""
    n = draw(st.integers(3 if sparse else 2, 20))
    ids = sorted(draw(st.lists(st.integers(0, 200), min_size=n, max_size=n, unique=True)))
    length = draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    inputs = [
        ClientInput(c, int(rng.integers(1, 60)), torch.from_numpy(rng.normal(0, 0.5, length).astype(np.float32)))
        for c in ids
    ]
    if sparse:
        degree = draw(st.sampled_from([2, 4, 6]))
        graph = NeighbourGraph.harary(ids, degree, draw(st.integers(0, 1000)))
    else:
        graph = NeighbourGraph.complete(ids)
    threshold = draw(st.integers(1, graph.degree + 1))
    dropped = draw(st.lists(st.sampled_from(ids), unique=True, max_size=n))
    plan = DropoutPlan({c: draw(st.sampled_from(list(Stage))) for c in dropped})
    fixed_point = FixedPoint(draw(st.sampled_from([0.5, 1.0, 3.0])), draw(st.integers(4, 20)))
    return inputs, ProtocolConfig(fixed_point, threshold, graph, session=draw(st.integers(0, 99))), plan


@settings(max_examples=40, deadline=None)
@given(case=rounds(sparse=False))
def test_bonawitz_sum_is_exact_iff_at_least_t_clients_survive(case):
    inputs, config, plan = case
    survivors = len(inputs) - len(plan.stage_of)
    if survivors >= config.threshold:
        check_result(run_secure_aggregation(inputs, config, plan), inputs, config.fixed_point)
    else:
        with pytest.raises(AggregationAborted, match=f"the threshold is {config.threshold}"):
            run_secure_aggregation(inputs, config, plan)


def secagg_plus_survives(inputs, config, plan) -> bool:
    """SecAgg+ finishes iff >= t clients answer every stage and every client that shared its keys
    has >= t share holders (neighbours or itself) answering the unmasking stage."""
    ids = [i.client_id for i in inputs]
    last = [c for c in ids if plan.answers(c, Stage.UNMASKING)]
    shared = [c for c in ids if plan.answers(c, Stage.SHARE_KEYS)]
    holders_ok = all(len(config.graph.holders(c) & set(last)) >= config.threshold for c in shared)
    return len(last) >= config.threshold and holders_ok


@settings(max_examples=40, deadline=None)
@given(case=rounds(sparse=True))
def test_secagg_plus_sum_is_exact_whenever_every_secret_is_recoverable(case):
    inputs, config, plan = case
    if secagg_plus_survives(inputs, config, plan):
        check_result(run_secure_aggregation(inputs, config, plan), inputs, config.fixed_point)
    else:
        with pytest.raises(AggregationAborted, match="threshold is|needs"):
            run_secure_aggregation(inputs, config, plan)


def make_inputs(n: int, length: int = 64, seed: int = 0) -> list[ClientInput]:
    g = torch.Generator().manual_seed(seed)
    return [ClientInput(c, 10 + 3 * c, torch.randn(length, generator=g) * 0.3) for c in range(n)]


@pytest.mark.parametrize("stage", list(Stage))
def test_dropouts_at_each_stage_up_to_n_minus_t(stage):
    inputs = make_inputs(8)
    config = ProtocolConfig(FixedPoint(1.0, 16), 5, NeighbourGraph.complete(range(8)))
    result = run_secure_aggregation(inputs, config, DropoutPlan({1: stage, 4: stage, 6: stage}))
    check_result(result, inputs, config.fixed_point)
    assert result.dropouts[stage.label] == (1, 4, 6) and result.dropout_count == 3
    in_sum = {1, 4, 6} if stage == Stage.UNMASKING else set()  # their inputs arrived
    assert set(result.survivors) == set(range(8)) - {1, 4, 6} | in_sum
    with pytest.raises(AggregationAborted, match=f"stage {stage.label}: 4 clients answered, the threshold is 5"):
        run_secure_aggregation(inputs, config, DropoutPlan({c: stage for c in (0, 1, 4, 6)}))


def test_server_never_receives_both_secrets_of_a_client(monkeypatch):
    """Honest clients reveal b_v for clients in the sum and s_v for clients lost after sharing,
    never both: the server can unmask the sum and nothing else."""
    revealed = []
    unmask = SecAggClient.unmask
    monkeypatch.setattr(SecAggClient, "unmask", lambda self, survivors: revealed.append(unmask(self, survivors)) or revealed[-1])
    inputs = make_inputs(7)
    config = ProtocolConfig(FixedPoint(1.0, 16), 4, NeighbourGraph.complete(range(7)))
    plan = DropoutPlan({0: Stage.MASKED_INPUT, 2: Stage.MASKED_INPUT, 5: Stage.UNMASKING})
    result = run_secure_aggregation(inputs, config, plan)
    seeds_of = set().union(*(r.self_mask_shares for r in revealed))
    keys_of = set().union(*(r.key_shares for r in revealed))
    assert seeds_of == set(result.survivors) == {1, 3, 4, 5, 6}
    assert keys_of == {0, 2} and not seeds_of & keys_of


def test_transcript_is_the_servers_view_only():
    inputs = make_inputs(5, length=4096)
    config = ProtocolConfig(FixedPoint(1.0, 16), 3, NeighbourGraph.complete(range(5)))
    result = run_secure_aggregation(inputs, config, DropoutPlan({3: Stage.MASKED_INPUT}))
    transcript = result.transcript()
    assert set(transcript) == {
        "masked_vectors", "sum", "survivors", "dropouts", "total_weight", "threshold", "neighbours", "quantization",
    }
    assert sorted(transcript["masked_vectors"]) == [0, 1, 2, 4]
    for c, masked in transcript["masked_vectors"].items():
        plain = torch.from_numpy(quantized(inputs[c].update, config.fixed_point, inputs[c].weight).astype(np.int32))
        assert (masked == plain).float().mean() < 0.01  # masked, not the plaintext
        words = masked.numpy().view(np.uint32)
        for shift in (0, 24):  # the low and the high byte of every word are uniform
            assert stats.chisquare(np.bincount((words >> shift) & 0xFF, minlength=256)).pvalue > 1e-6
    assert transcript["dropouts"]["masked_input"] == (3,)


def test_secagg_plus_masks_only_along_the_graph():
    ids = list(range(12))
    graph = NeighbourGraph.harary(ids, 4, seed=3)
    assert all(len(graph.of(c)) == 4 and c not in graph.of(c) for c in ids)
    assert all(c in graph.of(v) for c in ids for v in graph.of(c))  # undirected
    assert NeighbourGraph.harary(ids, 4, seed=3) == graph and NeighbourGraph.harary(ids, 4, seed=4) != graph
    inputs = make_inputs(12)
    config = ProtocolConfig(FixedPoint(1.0, 16), 3, graph)
    result = run_secure_aggregation(inputs, config, DropoutPlan({5: Stage.MASKED_INPUT}))
    check_result(result, inputs, config.fixed_point)
    with pytest.raises(ConfigError, match="even number"):
        NeighbourGraph.harary(ids, 3, seed=0)


def test_shamir_needs_exactly_t_shares():
    secret = os.urandom(32)
    shares = shamir.split(secret, range(1, 8), 4)
    subsets = [[1, 2, 3, 4], [7, 5, 3, 1], [2, 4, 6, 7, 1]]
    assert all(shamir.combine([shares[x] for x in s], 4) == secret for s in subsets)
    with pytest.raises(shamir.SecretSharingError, match="3 distinct shares"):
        shamir.combine([shares[1], shares[2], shares[3]], 4)
    forged = shamir.Share(4, int.from_bytes(os.urandom(65), "big"))  # the secret becomes a random field element
    with pytest.raises(shamir.SecretSharingError, match="inconsistent"):
        shamir.combine([shares[1], shares[2], shares[3], forged], 4)


def test_key_agreement_and_channel():
    a, b = KeyPair.generate(), KeyPair.generate()
    assert pairwise_mask_seed(a.private, b.public, 1, 3, 9) == pairwise_mask_seed(b.private, a.public, 1, 9, 3)
    assert pairwise_mask_seed(a.private, b.public, 1, 3, 9) != pairwise_mask_seed(a.private, b.public, 2, 3, 9)
    assert pairwise_mask_seed(a.private, b.public, 1, 3, 9) != channel_key(a.private, b.public, 1, 3, 9)
    key = channel_key(a.private, b.public, 0, 3, 9)
    sealed = seal(key, 0, 3, 9, b"shares")
    assert open_sealed(channel_key(b.private, a.public, 0, 9, 3), 0, 3, 9, sealed) == b"shares"
    with pytest.raises(ChannelError, match="failed authentication"):
        open_sealed(key, 0, 3, 8, sealed)  # addressed to someone else
    with pytest.raises(ChannelError):
        open_sealed(key, 0, 3, 9, sealed[:-1] + bytes([sealed[-1] ^ 1]))


def test_fixed_point_limits():
    assert FixedPoint.widest(1.0, 1).quant_bits == 32
    fp = FixedPoint.widest(1.0, 1437)
    assert fp.max_total_weight >= 1437 and FixedPoint(1.0, fp.quant_bits + 1).max_total_weight < 1437
    with pytest.raises(ConfigError, match="use quant_bits <= 21"):
        FixedPoint(1.0, 24).check_total_weight(1437)


# ---- the defenses in the FedAvg simulation ---------------------------------------------------

SMALL = ScenarioConfig(clients=5, rounds=2, partition="iid", batch_size=64, max_samples=600, seed=1)


@pytest.fixture(scope="module")
def world():
    return build_world(SMALL)


def run(world, defenses):
    records = []
    result = FedAvgSimulation(world, compose(defenses, world)).run([records.append], progress=False)
    return records, result


def test_registered_with_params():
    assert DEFENSES.get("secagg") is SecAgg and DEFENSES.get("secagg_plus") is SecAggPlus
    assert SecAgg.hides_individual_updates and SecAggPlus.hides_individual_updates
    plus = SecAggPlus.from_table({"neighbours": 4, "dropout_rate": 0.2, "dropout_stage": "masked_input"})
    assert plus.params.neighbours == 4 and plus.params.dropout_stage == "masked_input"
    with pytest.raises(ConfigError, match="neighbours must be even"):
        SecAggPlus.from_table({"neighbours": 5})
    with pytest.raises(ConfigError, match="dropout_stage"):
        SecAgg.from_table({"dropout_stage": "sometime"})


def test_secagg_round_gives_the_weighted_mean_and_hides_updates(world):
    records, _ = run(world, [SecAgg(SecAgg.Params(clip_range=2.0))])
    for record in records:
        view = record.server_view
        assert view.uploads is None and not view.sees_individual_updates
        weights = torch.tensor(view.num_samples, dtype=torch.float64)
        plain = torch.stack([record.client_updates[c].double() for c in view.participants])
        expected = (weights[:, None] * plain.clamp(-2, 2)).sum(0) / weights.sum()
        bound = view.transcript["quantization"]["error_bound"]
        assert (view.aggregate.double() - expected).abs().max() <= bound
        assert sorted(view.transcript["masked_vectors"]) == list(view.participants)
        change = view.layout.flatten(record.model_after) - view.layout.flatten(view.model)
        torch.testing.assert_close(change, view.aggregate, atol=1e-6, rtol=1e-5)


def test_dropouts_are_survived_and_counted(world):
    """Seeded dropouts: round 0 survives two (at advertise_keys and share_keys); in round 1 a
    client loses every share holder but itself on the sparse graph, so the round aborts."""
    defense = SecAggPlus(SecAggPlus.Params(neighbours=2, threshold_fraction=0.6, dropout_rate=0.3, seed=0))
    with pytest.warns(RuntimeWarning, match="round 1: secure aggregation aborted: client 1's self-mask seed needs 2"):
        records, _ = run(world, [defense])
    figures = defense.figures()
    assert figures["dropouts_survived"] == 2 and figures["rounds_aggregated"] == 1 and figures["rounds_aborted"] == 1
    for record in records:
        transcript = record.server_view.transcript
        if "aborted" in transcript:
            assert torch.all(record.server_view.aggregate == 0)
            continue
        survivors = transcript["survivors"]
        weights = {c: n for c, n in zip(record.server_view.participants, record.server_view.num_samples)}
        total = sum(weights[c] for c in survivors)
        expected = sum(weights[c] * record.client_updates[c].double().clamp(-1, 1) for c in survivors) / total
        assert (record.server_view.aggregate.double() - expected).abs().max() <= transcript["quantization"]["error_bound"]
    assert figures["quant_bits"] == FixedPoint.widest(1.0, sum(len(c.train_indices) for c in world.clients)).quant_bits


def test_too_many_dropouts_abort_the_round_and_leave_the_model(world):
    defense = SecAgg(SecAgg.Params(dropout_rate=1.0, dropout_stage="unmasking"))
    with pytest.warns(RuntimeWarning, match="aborted at stage unmasking"):
        records, _ = run(world, [defense])
    for record in records:
        assert "aborted" in record.server_view.transcript and "masked_vectors" not in record.server_view.transcript
        model = record.server_view.layout
        assert torch.equal(model.flatten(record.model_after), model.flatten(record.server_view.model))
    assert defense.figures()["rounds_aborted"] == 2 and defense.figures()["rounds_aggregated"] == 0


def test_quant_bits_are_checked_against_the_clients_total_samples(world):
    with pytest.raises(ConfigError, match=r"defense\.secagg\.quant_bits=28 is too many"):
        SecAgg(SecAgg.Params(quant_bits=28)).aggregator(world)


def test_figures_report_clipping_and_the_error_bound(world):
    defense = SecAgg(SecAgg.Params(clip_range=0.01, quant_bits=12))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(world, [defense])
    figures = defense.figures()
    assert figures["rounds_aggregated"] == 2 and figures["dropouts_survived"] == 0
    assert figures["clipped_values"] > 0
    total = sum(len(c.train_indices) for c in world.clients)
    assert figures["quantization_error_bound"] == pytest.approx(FixedPoint(0.01, 12).error_bound(5, total))


def test_composes_after_an_update_transform(world):
    """`topk` then `secagg`: the server gets the weighted mean of the compressed uploads."""
    topk = DEFENSES.get("topk").from_table({})
    records, _ = run(world, [topk, SecAgg()])
    view = records[0].server_view
    assert view.uploads is None and "masked_vectors" in view.transcript
    kept = (view.aggregate != 0).float().mean()
    assert 0 < kept < 1  # the mean of sparse uploads is sparse


UTILITY = ScenarioConfig(rounds=15, seed=0)  # digits, cnn, 10 non-IID clients


@pytest.fixture(scope="module")
def undefended():
    """The utility world and its global test accuracy without any defense."""
    world = build_world(UTILITY)
    return world, FedAvgSimulation(world).run(progress=False).final_test_accuracy


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,table,max_drop",
    [
        ("secagg", {}, 0.005),  # ~21 bits, clip 1: the sum is the plain sum to ~1e-7
        ("secagg", {"quant_bits": 8, "clip_range": 0.02}, 0.15),  # coarse grid, heavy clipping
        ("secagg_plus", {"neighbours": 4, "dropout_rate": 0.1, "dropout_stage": "masked_input"}, 0.05),
    ],
)
def test_utility_on_digits_cnn(undefended, name, table, max_drop):
    """Global test accuracy with the defense against without it (prints both for the report)."""
    world, plain = undefended
    defense = DEFENSES.get(name).from_table(table)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # aborted rounds are counted in figures
        defended = FedAvgSimulation(world, compose([defense], world)).run(progress=False).final_test_accuracy
    print(f"\nutility {name} {table}: plain {plain:.4f} defended {defended:.4f} figures {defense.figures()}")
    assert defended >= plain - max_drop
