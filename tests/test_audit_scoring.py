"""Scoring one attack output, risk levels and intervals over seeds."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats as scipy_stats

from flaudit.auditor.attacks.base import AttackOutput
from flaudit.auditor.results.risk import risk_level
from flaudit.auditor.metrics.scoring import AttackOutputError, score
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


def _stat(mean: float) -> dict:
    return {"mean": mean}


@pytest.mark.parametrize(
    "metrics, level",
    [
        ({"recovery_rate": _stat(0.0)}, "none"),
        ({"recovery_rate": _stat(0.01)}, "low"),
        ({"recovery_rate": _stat(0.05)}, "medium"),
        ({"recovery_rate": _stat(0.25)}, "high"),
        ({"recovery_rate": None, "label_accuracy": _stat(0.96)}, "high"),
        ({"recovery_rate": _stat(0.0), "label_accuracy": _stat(0.85)}, "medium"),  # the worse of both
        ({"label_accuracy": _stat(0.3)}, "none"),
        (None, "unknown"),
    ],
)
def test_risk_levels_follow_the_documented_cutoffs(metrics, level):
    assert risk_level(metrics) == level


def test_interval_is_student_t_over_seeds_clipped_to_the_range():
    values = [0.5, 0.7, 0.9]
    stat = interval(values)
    half = scipy_stats.t.ppf(0.975, 2) * scipy_stats.tstd(values) / math.sqrt(3)
    assert stat["mean"] == pytest.approx(0.7) and stat["ci95"] == pytest.approx([0.7 - half, 0.7 + half])
    assert interval(values, 0.0, 1.0)["ci95"] == pytest.approx([0.7 - half, 1.0])
    assert interval([0.3, None])["ci95"] is None and interval([0.3, None])["n"] == 1
    assert interval([None]) is None
