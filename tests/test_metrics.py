"""Reconstruction and label metrics: hand values, skimage parity, matching, aggregates, errors."""

import functools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import color, data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from flaudit.auditor.metrics import measures as metrics
from flaudit.auditor.metrics.measures import (
    PSNR_CEILING,
    Matching,
    MetricInputError,
    label_accuracy,
    label_count_accuracy,
    match_reconstructions,
    mse,
    psnr,
    recovery_rate,
    ssim,
    ssim_window,
    summarize,
)
from flaudit.core.errors import ConfigError, FlauditError


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def noisy(x, scale, seed=1):
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    return (x + scale * noise).clamp(0, 1)


def sk_ssim(a, b, **kw):
    """skimage SSIM of each image pair of [N, C, H, W] batches, colour via channel_axis."""
    out = []
    for x, y in zip(a.double().numpy(), b.double().numpy()):
        if x.shape[0] == 1:
            out.append(structural_similarity(x[0], y[0], data_range=1.0, **kw))
        else:
            out.append(structural_similarity(x, y, data_range=1.0, channel_axis=0, **kw))
    return torch.tensor(out, dtype=torch.float64)


@functools.cache
def astronaut_rgb():
    return data.astronaut() / 255.0


def astronaut(size, grey, corners=((100, 180), (20, 300), (300, 60))):
    img = astronaut_rgb()
    if grey:
        img = color.rgb2gray(img)[..., None]
    crops = [img[r : r + size, c : c + size] for r, c in corners]
    return torch.tensor(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


# --- MSE / PSNR ------------------------------------------------------------------------------


def test_mse_psnr_hand_values():
    a = torch.zeros(2, 1, 2, 2)
    b = a.clone()
    b[0] = 0.5  # every pixel off by 0.5 -> mse 0.25
    b[1, 0, 0, 0] = 1.0  # one pixel of four off by 1 -> mse 0.25 too
    b[1, 0, 1, 1] = 1.0  # ... two pixels -> 0.5
    assert mse(a, b).tolist() == [0.25, 0.5]
    expected = [10 * math.log10(1 / 0.25), 10 * math.log10(1 / 0.5)]
    assert psnr(a, b).tolist() == pytest.approx(expected, abs=1e-12)
    assert psnr(a * 255, b * 255, data_range=255.0).tolist() == pytest.approx(expected, abs=1e-12)
    assert mse(a, b).dtype == torch.float64


@pytest.mark.parametrize("data_range", [1.0, 255.0])
def test_psnr_matches_skimage(data_range):
    a = rand(4, 3, 16, 16) * data_range
    b = noisy(a / data_range, 0.05) * data_range
    ref = [peak_signal_noise_ratio(x, y, data_range=data_range) for x, y in zip(a.numpy(), b.numpy())]
    assert psnr(a, b, data_range=data_range).tolist() == pytest.approx(ref, abs=1e-10)


def test_identical_images_have_infinite_psnr_zero_mse_unit_ssim():
    a = rand(3, 3, 12, 12)
    assert torch.isinf(psnr(a, a.clone())).all() and (psnr(a, a) > 0).all()
    assert (mse(a, a) == 0).all()
    assert torch.allclose(ssim(a, a), torch.ones(3, dtype=torch.float64))


# --- SSIM ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 1, 32, 32), (3, 3, 32, 32), (2, 1, 64, 64), (2, 3, 64, 48), (3, 3, 8, 8)])
def test_ssim_matches_skimage_on_random_images(shape):
    a = rand(*shape)
    b = noisy(a, 0.1)
    assert torch.allclose(ssim(a, b), sk_ssim(a, b), atol=1e-5)


@pytest.mark.parametrize("size", [8, 32, 64])
@pytest.mark.parametrize("grey", [True, False])
def test_ssim_matches_skimage_on_astronaut_crops(size, grey):
    a = astronaut(size, grey)
    for b in (noisy(a, 0.05), a.flip(0), a.flip(-1)):
        assert torch.allclose(ssim(a, b), sk_ssim(a, b), atol=1e-5)


def test_ssim_float32_input_and_data_range():
    a = astronaut(32, grey=False)
    b = noisy(a, 0.05)
    assert torch.allclose(ssim(a.float(), b.float()), sk_ssim(a, b), atol=1e-5)
    ref = [structural_similarity(x, y, data_range=255.0, channel_axis=0) for x, y in zip(255 * a.numpy(), 255 * b.numpy())]
    assert torch.allclose(ssim(255 * a, 255 * b, data_range=255.0), torch.tensor(ref, dtype=torch.float64), atol=1e-5)


def test_ssim_window_rule():
    assert [ssim_window(s, s) for s in (3, 4, 5, 6, 7, 8, 64)] == [3, 3, 5, 5, 7, 7, 7]
    assert ssim_window(32, 6) == 5
    with pytest.raises(MetricInputError, match="at least 3x3"):
        ssim_window(2, 32)


@pytest.mark.parametrize("hw", [(3, 3), (5, 5), (6, 6), (6, 9), (4, 20)])
def test_ssim_small_images_equal_skimage_with_shrunk_window(hw):
    a = rand(2, 3, *hw)
    b = noisy(a, 0.1)
    win = ssim_window(*hw)
    assert torch.allclose(ssim(a, b), sk_ssim(a, b, win_size=win), atol=1e-5)
    with pytest.raises(ValueError):  # skimage itself refuses these without win_size
        sk_ssim(a, b)


def test_ssim_too_small_image_raises():
    a = rand(1, 1, 2, 8)
    with pytest.raises(MetricInputError, match="at least 3x3"):
        ssim(a, a)


# --- matching --------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["psnr", "mse", "ssim"])
def test_matching_recovers_known_permutation_with_noise(metric):
    targets = rand(6, 3, 16, 16)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    recon = noisy(targets[perm], 0.02)  # recon[j] is a noisy targets[perm[j]]
    m = match_reconstructions(recon, targets, metric=metric)
    assert m.target_idx.tolist() == list(range(6))
    assert m.recon_idx.tolist() == torch.argsort(perm).tolist()
    assert torch.allclose(m.mse, mse(recon[m.recon_idx], targets))
    assert torch.allclose(m.psnr, psnr(recon[m.recon_idx], targets))
    assert torch.allclose(m.ssim, ssim(recon[m.recon_idx], targets))
    assert (m.psnr > 30).all()


def test_matching_more_reconstructions_than_targets_drops_decoys():
    targets = rand(3, 1, 12, 12)
    decoys = rand(4, 1, 12, 12, seed=7)
    recon = torch.cat([decoys[:2], noisy(targets[2:3], 0.01), decoys[2:], noisy(targets[:2], 0.01)])
    m = match_reconstructions(recon, targets)
    assert m.target_idx.tolist() == [0, 1, 2]
    assert m.recon_idx.tolist() == [5, 6, 2]


def test_matching_fewer_reconstructions_than_targets_leaves_targets_unmatched():
    targets = rand(5, 3, 10, 10)
    recon = noisy(targets[[4, 1]], 0.01)
    m = match_reconstructions(recon, targets, metric="ssim")
    assert m.target_idx.tolist() == [1, 4]
    assert m.recon_idx.tolist() == [1, 0]
    assert len(m.psnr) == len(m.ssim) == len(m.mse) == 2


def test_matching_chunks_agree_with_one_chunk(monkeypatch):
    targets = rand(5, 3, 9, 9)
    recon = noisy(rand(7, 3, 9, 9, seed=3), 0.3)
    whole = {k: match_reconstructions(recon, targets, metric=k) for k in ("psnr", "ssim")}
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 1)  # one reconstruction per chunk
    for k, m in whole.items():
        chunked = match_reconstructions(recon, targets, metric=k)
        assert torch.equal(chunked.recon_idx, m.recon_idx) and torch.allclose(chunked.ssim, m.ssim)


@settings(max_examples=25, deadline=None)
@given(perm=st.integers(1, 8).flatmap(lambda n: st.permutations(range(n))), seed=st.integers(0, 2**16))
def test_matching_permuted_copy_gives_inverse_permutation(perm, seed):
    targets = rand(len(perm), 2, 6, 6, seed=seed)
    m = match_reconstructions(targets[list(perm)], targets)
    assert m.recon_idx.tolist() == np.argsort(perm).tolist()
    assert torch.isinf(m.psnr).all()
    assert summarize(m, len(perm)).psnr_mean == PSNR_CEILING


# --- recovery rate, summary ------------------------------------------------------------------


def test_recovery_rate_edge_cases():
    assert recovery_rate(torch.tensor([25.0, 19.9, 20.0]), 20.0, 3) == pytest.approx(2 / 3)  # >= is inclusive
    assert recovery_rate([math.inf, 30.0], 20.0, 4) == 0.5  # two targets unmatched
    assert recovery_rate([], 20.0, 3) == 0.0
    assert recovery_rate([0.1, 0.2], 0.5, 2) == 0.0
    assert recovery_rate([0.9, 0.6], 0.5, 2) == 1.0  # SSIM criterion works the same way
    with pytest.raises(ConfigError):
        recovery_rate([1.0], 0.5, 0)
    with pytest.raises(ConfigError, match="only 1 targets"):
        recovery_rate([1.0, 2.0], 0.5, 1)
    with pytest.raises(MetricInputError, match="NaN"):
        recovery_rate([math.nan], 0.5, 1)


def test_summarize_caps_infinite_psnr_in_aggregates_only():
    m = Matching(
        target_idx=torch.tensor([0, 2, 3]),
        recon_idx=torch.tensor([1, 0, 2]),
        psnr=torch.tensor([math.inf, 10.0, 30.0], dtype=torch.float64),
        ssim=torch.tensor([1.0, 0.2, 0.9], dtype=torch.float64),
        mse=torch.tensor([0.0, 0.1, 0.001], dtype=torch.float64),
    )
    s = summarize(m, n_targets=4)
    assert s.psnr_mean == pytest.approx((PSNR_CEILING + 10 + 30) / 3)
    assert s.psnr_median == 30.0
    assert s.ssim_mean == pytest.approx(0.7) and s.mse_mean == pytest.approx(0.101 / 3)
    assert (s.n_targets, s.n_recovered, s.recovery_rate) == (4, 2, 0.5)
    assert math.isinf(m.psnr[0])  # the matching itself is untouched
    assert summarize(m, 4, psnr_threshold=200.0).n_recovered == 1  # inf clears any threshold


def test_summarize_even_count_median_is_midpoint():
    m = match_reconstructions(noisy(rand(4, 1, 8, 8), 0.1), rand(4, 1, 8, 8))
    ordered = m.psnr.sort().values
    assert summarize(m, 4).psnr_median == pytest.approx((ordered[1] + ordered[2]).item() / 2)


# --- labels ----------------------------------------------------------------------------------


def test_label_accuracy_exact_order():
    assert label_accuracy([1, 2, 3, 4], torch.tensor([1, 2, 4, 3])) == 0.5
    assert label_accuracy(torch.tensor([7]), [7]) == 1.0
    with pytest.raises(MetricInputError, match="3 predicted labels for 2"):
        label_accuracy([1, 2, 3], [1, 2])


def test_label_count_accuracy_ignores_order():
    assert label_count_accuracy([3, 1, 2, 2], [2, 1, 2, 3], num_classes=4) == 1.0
    # counts pred {0:2, 1:1, 2:1} vs true {0:1, 1:1, 3:2}: L1 = 1 + 1 + 2 = 4, n = 4
    assert label_count_accuracy([0, 0, 1, 2], [0, 1, 3, 3], num_classes=4) == 1 - 4 / 8
    assert label_count_accuracy([0, 0], [1, 1], num_classes=2) == 0.0
    # wrong batch size: pred {0:3}, true {0:1}: L1 = 2 over 3 + 1 labels; one label shared
    assert label_count_accuracy([0, 0, 0], [0], num_classes=1) == 0.5
    with pytest.raises(MetricInputError, match=r"\[0, 4\)"):
        label_count_accuracy([0, 4], [0, 1], num_classes=4)
    with pytest.raises(MetricInputError, match="integer"):
        label_count_accuracy(torch.tensor([0.0]), [0], num_classes=2)
    with pytest.raises(MetricInputError, match="empty"):
        label_count_accuracy([], [0], num_classes=2)


# --- input validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b, match",
    [
        (torch.rand(3, 8, 8), torch.rand(3, 8, 8), r"\[N, C, H, W\]"),
        (torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8), "differ"),
        (torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 9), "differ"),
        (torch.rand(2, 3, 8, 8), torch.rand(3, 3, 8, 8), "differ"),
        (torch.rand(0, 3, 8, 8), torch.rand(0, 3, 8, 8), "empty"),
        (torch.full((1, 1, 8, 8), math.nan), torch.rand(1, 1, 8, 8), "NaN or inf"),
        (torch.rand(1, 1, 8, 8), torch.full((1, 1, 8, 8), math.inf), "NaN or inf"),
        (torch.zeros(1, 1, 8, 8, dtype=torch.uint8), torch.rand(1, 1, 8, 8), "float"),
        (np.zeros((1, 1, 8, 8)), torch.rand(1, 1, 8, 8), "torch.Tensor"),
    ],
)
@pytest.mark.parametrize("fn", [mse, psnr, ssim])
def test_bad_images_raise(fn, a, b, match):
    with pytest.raises(MetricInputError, match=match) as info:
        fn(a, b)
    assert isinstance(info.value, FlauditError) and isinstance(info.value, ValueError)


def test_matching_input_errors():
    a = torch.rand(2, 3, 8, 8)
    match_reconstructions(torch.rand(5, 3, 8, 8), a)  # batch sizes may differ
    with pytest.raises(MetricInputError, match="image shapes"):
        match_reconstructions(torch.rand(2, 1, 8, 8), a)
    with pytest.raises(MetricInputError, match="empty"):
        match_reconstructions(torch.rand(0, 3, 8, 8), a)
    with pytest.raises(ConfigError, match="metric"):
        match_reconstructions(a, a, metric="lpips")
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ConfigError, match="data_range"):
            psnr(a, a, data_range=bad)
