"""Scoring a round of 512 reconstructions against 512 targets (3x32x32), as every attack's cell
is scored (flaudit.auditor.metrics.measures):

* ``match psnr``: ``match_reconstructions`` (pairwise MSE of all 512 x 512 pairs, Hungarian
  assignment, PSNR/SSIM/MSE of the matched pairs) against its floor: the same assignment from a
  cost matrix built by one matmul (``torch.cdist``), the least this matching can cost;
* ``ssim``: the batched SSIM of 512 pairs against skimage's ``structural_similarity`` (the
  definition it reproduces), pair by pair;
* ``match ssim`` (slow): the assignment maximising summed SSIM, which needs the SSIM of all
  262,144 pairs; against the PSNR matching of the same images.

    .venv/bin/python -m pytest benches/bench_metrics.py
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from skimage.metrics import structural_similarity

from flaudit.auditor.metrics.measures import match_reconstructions, ssim

N, SHAPE = 512, (3, 32, 32)
# Both sides are single-threaded float64 numpy/torch work, but memory-heavy (the batched SSIM
# pools 5 image-sized buffers): three runs on a loaded 2-core machine gave ssim / skimage 0.61,
# 0.74 and 1.24.
TOLERANCE = 1.0


@pytest.fixture(scope="module")
def pairs():
    """Targets and shuffled, noisy reconstructions of them (an attack's output order is arbitrary)."""
    g = torch.Generator().manual_seed(0)
    targets = torch.rand(N, *SHAPE, generator=g)
    recon = (targets[torch.randperm(N, generator=g)] + 0.05 * torch.randn(N, *SHAPE, generator=g)).clamp(0, 1)
    return recon, targets


def cdist_assignment(recon, targets):
    cost = torch.cdist(targets.flatten(1).double(), recon.flatten(1).double()).square()
    return linear_sum_assignment(cost.numpy())


def skimage_ssim(recon, targets):
    a, b = recon.double().numpy(), targets.double().numpy()
    return np.array([structural_similarity(x, y, data_range=1.0, channel_axis=0) for x, y in zip(a, b)])


CASES = {
    "match psnr": [("match_reconstructions", "candidate", match_reconstructions), ("cdist_assignment", "floor", cdist_assignment)],
    "ssim": [("ssim", "candidate", ssim), ("skimage", "reference", skimage_ssim)],
    "match ssim": [("match_ssim", "candidate", lambda r, t: match_reconstructions(r, t, "ssim")),
                   ("match_psnr", "floor", match_reconstructions)],
}


def _run(benchmark, pairs, workload, label, role, fn, rounds):
    benchmark.group = f"metrics {workload} {N}x{N} {'x'.join(map(str, SHAPE))} cpu"
    benchmark.extra_info.update(role=role, label=label, tolerance=TOLERANCE)
    benchmark.pedantic(fn, args=pairs, rounds=rounds, warmup_rounds=1, iterations=1)


@pytest.mark.quick
@pytest.mark.parametrize("label,role,fn", CASES["ssim"], ids=[c[0] for c in CASES["ssim"]])
def test_ssim(benchmark, pairs, label, role, fn):
    _run(benchmark, pairs, "ssim", label, role, fn, rounds=5)


@pytest.mark.parametrize("label,role,fn", CASES["match psnr"], ids=[c[0] for c in CASES["match psnr"]])
def test_match_psnr(benchmark, pairs, label, role, fn):
    _run(benchmark, pairs, "match psnr", label, role, fn, rounds=3)


@pytest.mark.slow
@pytest.mark.parametrize("label,role,fn", CASES["match ssim"], ids=[c[0] for c in CASES["match ssim"]])
def test_match_ssim(benchmark, pairs, label, role, fn):
    _run(benchmark, pairs, "match ssim", label, role, fn, rounds=3)
