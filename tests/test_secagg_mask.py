"""secagg_mask / secagg_unmask: kernels (every CPU path, CUDA) bit-identical to the numpy +
OpenSSL reference, quantization as specified, clipping counted, masks cancelling, masked
vectors indistinguishable from uniform, and clear errors."""

from __future__ import annotations

import os
import struct
from unittest import mock

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from scipy import stats

from flaudit.defenses.secagg import (
    FixedPoint,
    mask_update,
    quantize_and_mask,
    secagg_mask_reference,
    secagg_unmask_reference,
    unmask_sum,
)
from flaudit.defenses.secagg import masking
from flaudit.defenses.secagg.masking import seeds_tensor
from flaudit.core import native
from flaudit.core.errors import InvalidUpdateError

needs_kernels = pytest.mark.skipif(not native.extension_available(), reason="flaudit._C not built")
needs_cuda_kernels = pytest.mark.skipif(
    not (torch.cuda.is_available() and native.has_cuda_kernels()),
    reason="needs a CUDA device and flaudit._C built with its CUDA kernels",
)


def random_seeds(count: int) -> list[bytes]:
    return [os.urandom(32) for _ in range(count)]


def keystream(seed: bytes, n: int) -> np.ndarray:
    """PRG(seed) by cryptography directly: zero nonce, counter 0, little-endian words."""
    cipher = Cipher(algorithms.ChaCha20(seed, struct.pack("<I", 0) + bytes(12)), mode=None)
    return np.frombuffer(cipher.encryptor().update(bytes(4 * n)), dtype="<u4").astype(np.int64)


def expected_quantized(update: torch.Tensor, fixed_point: FixedPoint, weight: int) -> np.ndarray:
    """The specification: round half to even of weight * clip(x) / step, in double precision."""
    x = update.double().numpy()
    return np.rint(np.clip(x, -fixed_point.clip_range, fixed_point.clip_range) * (weight * fixed_point.levels / fixed_point.clip_range)).astype(np.int64)


def make_update(n: int, seed: int = 0) -> torch.Tensor:
    """Gaussian values with some beyond the clip range (+-1), exact zeros and negative zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * 0.4
    if n > 8:
        x[::7] *= 10.0
        x[1] = 0.0
        x[2] = -0.0
    return x


SIZES = [0, 1, 15, 16, 17, 255, 256, 257, 4099, 65_537]


@needs_kernels
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("masks", [0, 1, 9])
def test_cpu_mask_kernel_matches_reference_and_spec(isa, n, masks):
    update = make_update(n, seed=n)
    seeds = random_seeds(masks)
    signs = [1 if i % 3 else -1 for i in range(masks)]
    fixed_point, weight = FixedPoint(1.0, 16), 37
    scale = fixed_point.scale(weight)
    masked, counts = torch.ops.flaudit.secagg_mask(update, seeds_tensor(seeds), signs, 1.0, scale)
    ref_masked, ref_counts = secagg_mask_reference(update, seeds_tensor(seeds), signs, 1.0, scale)
    assert masked.dtype == torch.int32 and masked.shape == (n,)
    assert torch.equal(masked, ref_masked) and torch.equal(counts, ref_counts)
    expected = expected_quantized(update, fixed_point, weight)
    for seed, sign in zip(seeds, signs):
        expected = expected + sign * keystream(seed, n)
    assert np.array_equal(masked.numpy().astype(np.int64) % 2**32, expected % 2**32)
    assert int(counts[0]) == int((update.abs() > 1.0).sum()) and int(counts[1]) == 0


@needs_kernels
def test_rounding_ties_go_to_even_on_every_path(isa):
    """With scale 1024, x = (k + 1/2) / 1024 lands exactly halfway between two grid points."""
    fixed_point = FixedPoint(32767 / 1024, 16)
    assert fixed_point.scale(1) == 1024.0
    k = torch.arange(-50, 50, dtype=torch.float64)
    update = ((k + 0.5) / 1024).float()
    masked, _ = torch.ops.flaudit.secagg_mask(update, seeds_tensor([]), [], fixed_point.clip_range, 1024.0)
    assert torch.equal(masked.long(), torch.from_numpy(np.rint(k.numpy() + 0.5)).long())
    assert torch.equal(masked, secagg_mask_reference(update, seeds_tensor([]), [], fixed_point.clip_range, 1024.0)[0])


@needs_kernels
def test_non_finite_values_are_counted_and_rejected(isa):
    update = make_update(100)
    update[[3, 50]] = float("nan")
    update[60] = float("inf")
    masked, counts = torch.ops.flaudit.secagg_mask(update, seeds_tensor([]), [], 1.0, 100.0)
    ref_masked, ref_counts = secagg_mask_reference(update, seeds_tensor([]), [], 1.0, 100.0)
    assert torch.equal(masked, ref_masked) and counts.tolist() == ref_counts.tolist()
    assert counts[1] == 3 and masked[3] == 0 and masked[60] == 0
    with pytest.raises(InvalidUpdateError, match="3 non-finite values"):
        mask_update(update, random_seeds(2), [1, -1], clip_range=1.0, quant_bits=12)


@needs_kernels
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("n", [0, 17, 4099])
def test_cpu_unmask_kernel_matches_reference(isa, rows, n):
    g = torch.Generator().manual_seed(n)
    masked = torch.randint(-(2**31), 2**31 - 1, (rows, n), dtype=torch.int32, generator=g)
    seeds, signs = random_seeds(4), [-1, 1, -1, -1]
    total, value = torch.ops.flaudit.secagg_unmask(masked, seeds_tensor(seeds), signs, 1e-5)
    ref_total, ref_value = secagg_unmask_reference(masked, seeds_tensor(seeds), signs, 1e-5)
    assert torch.equal(total, ref_total) and torch.equal(value, ref_value)
    expected = masked.long().sum(0).numpy()
    for seed, sign in zip(seeds, signs):
        expected = expected + sign * keystream(seed, n)
    assert np.array_equal(total.numpy().astype(np.int64) % 2**32, expected % 2**32)
    assert torch.equal(value, (total.double() * 1e-5).float())


def test_opposite_masks_cancel_and_the_weighted_mean_is_within_the_bound():
    """Three clients with pairwise masks (+ for the lower id): the unmasked sum is the exact sum of
    the quantized plaintexts, and the decoded mean is within FixedPoint.error_bound."""
    fixed_point, weights = FixedPoint(1.0, 20), [3, 11, 7]
    updates = [make_update(5000, seed=i) for i in range(3)]
    pair = {(0, 1): os.urandom(32), (0, 2): os.urandom(32), (1, 2): os.urandom(32)}
    rows, clipped = [], 0
    for u in range(3):
        seeds = [pair[tuple(sorted((u, v)))] for v in range(3) if v != u]
        signs = [1 if u < v else -1 for v in range(3) if v != u]
        result = quantize_and_mask(updates[u], seeds, signs, fixed_point=fixed_point, weight=weights[u])
        rows.append(result.masked)
        clipped += result.clipped
    total_weight = sum(weights)
    total, mean = unmask_sum(torch.stack(rows), [], [], fixed_point.mean_scale(total_weight))
    quantized = sum(expected_quantized(x, fixed_point, w) for x, w in zip(updates, weights))
    assert np.array_equal(total.numpy().astype(np.int64), quantized)  # no wrap: |sum| < 2**31
    exact = sum(w * x.double().clamp(-1, 1) for x, w in zip(updates, weights)) / total_weight
    assert (mean.double() - exact).abs().max() <= fixed_point.error_bound(3, total_weight)
    assert clipped == sum(int((x.abs() > 1).sum()) for x in updates) > 0


def test_masked_vectors_are_indistinguishable_from_uniform():
    """Masked vectors of zeros (the worst case) and of a real-looking update: every byte position
    is uniform (chi-square), the words are uniform (Kolmogorov-Smirnov) and uncorrelated with
    the plaintext. The unmasked vector fails the same test, so the test has power."""
    n = 1 << 16

    def uniformity_pvalue(words: np.ndarray) -> float:
        pvalues = [stats.chisquare(np.bincount((words >> s) & 0xFF, minlength=256)).pvalue for s in (0, 8, 16, 24)]
        return min(pvalues + [stats.kstest(words / 2.0**32, "uniform").pvalue])

    update = make_update(n)
    for plaintext in (torch.zeros(n), update):
        masked = mask_update(plaintext, random_seeds(1), [1], clip_range=1.0, quant_bits=16)
        assert uniformity_pvalue(masked.numpy().view(np.uint32)) > 1e-6
    words = mask_update(update, random_seeds(2), [1, -1], clip_range=1.0, quant_bits=16).numpy().view(np.uint32)
    assert abs(np.corrcoef(words.astype(np.float64), update.double().numpy())[0, 1]) < 0.03
    plain = mask_update(update, [], [], clip_range=1.0, quant_bits=16).numpy().view(np.uint32)
    assert uniformity_pvalue(plain) < 1e-6


def test_mask_update_validates_its_arguments():
    x = torch.zeros(10)
    with pytest.raises(ValueError, match=r"seeds\[1\] must be 32 bytes"):
        mask_update(x, [os.urandom(32), b"short"], [1, 1], clip_range=1.0, quant_bits=8)
    with pytest.raises(TypeError, match="single bytes object"):
        mask_update(x, os.urandom(32), [1], clip_range=1.0, quant_bits=8)
    with pytest.raises(ValueError, match=r"signs\[0\] must be \+1 or -1"):
        mask_update(x, [os.urandom(32)], [2], clip_range=1.0, quant_bits=8)
    with pytest.raises(ValueError, match="quant_bits must be an integer in"):
        mask_update(x, [], [], clip_range=1.0, quant_bits=33)
    with pytest.raises(ValueError, match="clip_range must be a positive"):
        mask_update(x, [], [], clip_range=0.0, quant_bits=8)
    with pytest.raises(ValueError, match="weight 300 is outside"):
        mask_update(x, [], [], clip_range=1.0, quant_bits=25, weight=300)


OP_ERRORS = [
    # (update, seeds, signs, clip, scale, exception, message)
    (torch.zeros(4, dtype=torch.float64), torch.zeros(0, 32, dtype=torch.uint8), [], 1.0, 1.0, TypeError, "update must be float32"),
    (torch.zeros(2, 2), torch.zeros(0, 32, dtype=torch.uint8), [], 1.0, 1.0, ValueError, "update must be a 1-D tensor"),
    (torch.zeros(4), torch.zeros(1, 16, dtype=torch.uint8), [1], 1.0, 1.0, ValueError, r"seeds must have shape \[M, 32\]"),
    (torch.zeros(4), torch.zeros(1, 32, dtype=torch.int8), [1], 1.0, 1.0, TypeError, "seeds must be uint8"),
    (torch.zeros(4), torch.zeros(2, 32, dtype=torch.uint8), [1], 1.0, 1.0, ValueError, "one entry per seed"),
    (torch.zeros(4), torch.zeros(1, 32, dtype=torch.uint8), [0], 1.0, 1.0, ValueError, "signs must be"),
    (torch.zeros(4), torch.zeros(0, 32, dtype=torch.uint8), [], -1.0, 1.0, ValueError, "clip_range must be a positive"),
    (torch.zeros(4), torch.zeros(0, 32, dtype=torch.uint8), [], 1.0, -1.0, ValueError, "scale must be a finite number"),
    (torch.zeros(4), torch.zeros(0, 32, dtype=torch.uint8), [], 2.0, 2.0**31, ValueError, "fits in int32"),
]


@pytest.mark.parametrize("update,seeds,signs,clip,scale,exc,message", OP_ERRORS)
def test_op_errors_are_the_same_on_every_path(update, seeds, signs, clip, scale, exc, message):
    with pytest.raises(exc, match=message):
        secagg_mask_reference(update, seeds, signs, clip, scale)
    if native.extension_available():
        with pytest.raises(exc, match=message):
            torch.ops.flaudit.secagg_mask(update, seeds, signs, clip, scale)


def test_unmask_op_errors_are_the_same_on_every_path():
    cases = [
        (torch.zeros(2, 3), TypeError, "masked must be int32"),
        (torch.zeros(3, dtype=torch.int32), ValueError, r"2-D tensor \[K, N\]"),
    ]
    for masked, exc, message in cases:
        with pytest.raises(exc, match=message):
            secagg_unmask_reference(masked, torch.zeros(0, 32, dtype=torch.uint8), [], 1.0)
        if native.extension_available():
            with pytest.raises(exc, match=message):
                torch.ops.flaudit.secagg_unmask(masked, torch.zeros(0, 32, dtype=torch.uint8), [], 1.0)


def test_fallback_without_extension_gives_the_same_integers():
    update, seeds = make_update(3000), random_seeds(3)
    args = dict(clip_range=0.5, quant_bits=18, weight=5)
    with mock.patch.object(masking, "extension_available", return_value=False):
        fallback = mask_update(update, seeds, [1, -1, 1], **args)
    assert torch.equal(fallback, mask_update(update, seeds, [1, -1, 1], **args))


@needs_cuda_kernels
@pytest.mark.parametrize("n", [1, 17, 4099, 1_000_003])
def test_cuda_kernels_match_cpu(n):
    update, seeds, signs = make_update(n), random_seeds(5), [1, -1, 1, 1, -1]
    scale = FixedPoint(1.0, 16).scale(13)
    cpu = secagg_mask_reference(update, seeds_tensor(seeds), signs, 1.0, scale)
    gpu = torch.ops.flaudit.secagg_mask(update.cuda(), seeds_tensor(seeds).cuda(), signs, 1.0, scale)
    assert torch.equal(gpu[0].cpu(), cpu[0]) and torch.equal(gpu[1].cpu(), cpu[1])
    offset = update.cuda()[1:]  # contiguous but not 16-byte aligned: the scalar load path
    cpu = secagg_mask_reference(update[1:], seeds_tensor(seeds), signs, 1.0, scale)
    gpu = torch.ops.flaudit.secagg_mask(offset, seeds_tensor(seeds), signs, 1.0, scale)
    assert torch.equal(gpu[0].cpu(), cpu[0])
    rows = torch.stack([cpu[0], cpu[0]])
    ref = secagg_unmask_reference(rows, seeds_tensor(seeds), signs, 1e-3)
    out = torch.ops.flaudit.secagg_unmask(rows.cuda(), seeds_tensor(seeds).cuda(), signs, 1e-3)
    assert torch.equal(out[0].cpu(), ref[0]) and torch.equal(out[1].cpu(), ref[1])
