"""Scoring one attack output, risk levels and intervals over seeds."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats as scipy_stats

from flaudit.auditor.attacks.base import AttackOutput
from flaudit.auditor.results.risk import Evidence, newcombe_lower, risk_level
from flaudit.auditor.metrics.measures import psnr
from flaudit.auditor.metrics.scoring import AttackOutputError, Criterion, score
from flaudit.auditor.metrics.stats import interval
from flaudit.scenarios.datasets import ImageDataset
from flaudit.scenarios.views import ClientTrace


@pytest.fixture
def train():
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return ImageDataset("toy", images, torch.tensor([0, 1, 2, 0, 1, 2]), ("a", "b", "c"))


TRUTH = {0: ClientTrace(0, torch.tensor([0, 1, 2]), ()), 1: ClientTrace(1, torch.tensor([3, 4, 5]), ())}


def test_exact_copies_in_any_order_are_recovered_and_clamped(train):
    recon = train.images[[2, 0]] * 1.5 - 0.25  # out of [0, 1]: clamped before scoring
    scored = score(AttackOutput(train.images[[2, 0]].flip(0), (0,)), train, TRUTH, 20.0)
    assert scored.metrics["recovery_rate"] == pytest.approx(2 / 3) and scored.metrics["n_recovered"] == 2
    assert scored.metrics["n_targets"] == 3 and scored.metrics["psnr_mean"] == 100.0
    clamped = score(AttackOutput(recon, (0,)), train, TRUTH, 20.0)
    assert clamped.reconstructions.min() >= 0 and clamped.reconstructions.max() <= 1


def test_nothing_returned_is_nothing_recovered_and_labels_alone_are_label_inference(train):
    empty = score(AttackOutput(torch.empty(0, 1, 8, 8), (0, 1)), train, TRUTH, 20.0).metrics
    assert empty == {"n_targets": 6, "n_reconstructed": 0, "recovery_rate": 0.0, "n_recovered": 0}
    labels = score(AttackOutput(torch.empty(0, 1, 8, 8), (1,), labels=torch.tensor([2, 1, 1])), train, TRUTH, 20.0).metrics
    assert "recovery_rate" not in labels and labels["label_accuracy"] == pytest.approx(2 / 3)  # {0,1,2} vs {1,1,2}


@pytest.mark.parametrize(
    "output, message",
    [
        (AttackOutput(torch.rand(2, 3, 8, 8), (0,)), "expected [N, 1, 8, 8]"),
        (AttackOutput(torch.full((1, 1, 8, 8), math.nan), (0,)), "NaN or infinite"),
        (AttackOutput(torch.rand(1, 1, 8, 8), (7,)), "targeted client 7, which did not take part"),
        (AttackOutput(torch.rand(1, 1, 8, 8), ()), "named no target_clients"),
    ],
)
def test_unscorable_outputs_are_clear_errors(train, output, message):
    with pytest.raises(AttackOutputError) as info:
        score(output, train, TRUTH, 20.0)
    assert message in str(info.value)


def _one_seed(hits: int, null_hits: int, trials: int = 64) -> Evidence:
    return Evidence(((hits - null_hits) / trials,), hits, null_hits, trials)


@pytest.mark.parametrize(
    "images, labels, level",
    [
        (_one_seed(0, 0), None, "none"),
        (_one_seed(5, 5), None, "none"),  # matched by the null: no leakage however many are recovered
        (_one_seed(12, 12), None, "none"),
        (_one_seed(2, 0), None, "none"),  # 2/64 is within chance of the null's 0/64 (Newcombe)
        (_one_seed(6, 0), None, "low"),
        (_one_seed(10, 0), None, "medium"),
        (_one_seed(30, 0), None, "high"),
        (_one_seed(60, 40), None, "medium"),
        (Evidence((0.3, 0.32, 0.31), 90, 0, 300), None, "high"),  # seeds: Student-t lower end
        (Evidence((0.3, -0.2, 0.4), 50, 0, 300), None, "none"),  # the spread over seeds reaches zero
        (None, _one_seed(64, 36), "high"),  # label leakage 0.44: high on its own scale
        (_one_seed(0, 0), _one_seed(50, 36), "low"),  # the worse of both (label lower end 0.06)
        (None, _one_seed(36, 36), "none"),  # the label-blind guess itself
        (None, None, "unknown"),
    ],
)
def test_risk_levels_read_the_lower_end_of_the_leakage(images, labels, level):
    assert risk_level(images, labels) == level


def test_newcombe_lower_end_is_below_the_difference_and_tightens_with_counts():
    assert newcombe_lower(10, 0, 64) < 10 / 64
    assert newcombe_lower(100, 0, 640) > newcombe_lower(10, 0, 64)
    assert newcombe_lower(64, 0, 64) > 0.9


def test_interval_is_student_t_over_seeds_clipped_to_the_range():
    values = [0.5, 0.7, 0.9]
    stat = interval(values)
    half = scipy_stats.t.ppf(0.975, 2) * scipy_stats.tstd(values) / math.sqrt(3)
    assert stat["mean"] == pytest.approx(0.7) and stat["ci95"] == pytest.approx([0.7 - half, 0.7 + half])
    assert interval(values, 0.0, 1.0)["ci95"] == pytest.approx([0.7 - half, 1.0])
    assert interval([0.3, None])["ci95"] is None and interval([0.3, None])["n"] == 1
    assert interval([None]) is None


def test_a_match_counts_only_when_it_identifies_its_target_among_non_members(train):
    """An exact copy is recovered; an image as close to a non-member of the pool as to its
    target (a smooth, typical image) clears the PSNR threshold but identifies nobody."""
    target = train.images[0]
    near = (target + 0.02).clamp(0, 1)  # ~34 dB from its target
    pool = torch.stack([near, torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(1))])
    criterion = Criterion(20.0, reference=pool, margin_db=1.0)
    exact = score(AttackOutput(target[None], (0,)), train, TRUTH, criterion).scores
    assert exact.n_recovered == 1 and exact.n_psnr_recovered == 1 and exact.psnr_recovered_mean == 100.0
    typical = score(AttackOutput(((target + near) / 2)[None], (0,)), train, TRUTH, criterion).scores
    assert typical.n_psnr_recovered == 1 and typical.n_recovered == 0 and typical.psnr_recovered_mean is None


def test_aggregates_count_every_target_and_partial_label_batches_are_not_scored(train):
    """Two of three targets left unmatched are scored against the fill image in the means; two
    labels for a three-sample batch get no label accuracy."""
    fill = torch.zeros(1, 8, 8)
    output = AttackOutput(train.images[:1], (0,), labels=torch.tensor([0, 1]))
    scores = score(output, train, TRUTH, Criterion(20.0, fill=fill)).scores
    against_fill = psnr(fill[None].expand(2, -1, -1, -1), train.images[1:3])
    assert scores.psnr_mean == pytest.approx((100.0 + float(against_fill.sum())) / 3)
    assert scores.psnr_recovered_mean == 100.0 and scores.label_accuracy is None and scores.n_labels == 2


def test_a_label_count_a_little_off_the_batch_is_scored(train):
    """A count estimated from a Poisson-sampled (DP) batch may miss by a few labels: 7 labels for
    6 targets are scored (order-free), 4 for 6 are a partial batch and are not."""
    truth = {0: ClientTrace(0, torch.arange(6), ())}
    near = score(AttackOutput(torch.empty(0, 1, 8, 8), (0,), labels=torch.cat([train.labels, train.labels[:1]])), train, truth, 20.0)
    assert near.scores.label_accuracy == pytest.approx(1 - 1 / 13)
    partial = score(AttackOutput(torch.empty(0, 1, 8, 8), (0,), labels=train.labels[:4]), train, truth, 20.0)
    assert partial.scores.label_accuracy is None and partial.scores.n_labels == 4
